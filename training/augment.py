"""Online image/mask augmentation for segmentation training (numpy + OpenCV only).

The ops and their parameters follow the ``[augmentor]`` family of config sections of the
Tensorflow-Image-Segmentation-API toolkit (``ImageMaskAugmentor``): flips, rotation by listed angles,
shrink, shear, elastic deformation, smooth distortion, barrel and pincushion distortion, brightening
and sharpening, plus a few common photometric extras. Differences from that toolkit:

* Ops run on the fly, each with a probability per sample, instead of writing every variant to disk.
* The image and its mask always move together. All geometric ops chosen for a sample are composed into
  one backward coordinate map (one affine matrix when only affine ops fire), and the image and the mask
  are resampled once each with that same map and the same border mode. The toolkit drew separate random
  fields for the image and the mask, so its masks disagreed with its images by several percent IoU.
* The mask is warped with linear interpolation and re-thresholded at 128, so it stays strictly {0, 255}
  with neither dilation nor erosion.
* Photometric ops touch the image only; they compute in float32 and saturate, so nothing wraps around.
* All randomness comes from the ``np.random.Generator`` passed in, so a seed reproduces a sample exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from statistics import NormalDist
from typing import Literal

import cv2
import numpy as np

from skinseg.data import artefacts

__all__ = [
    "ARTEFACT_OPS",
    "GEOMETRIC_OPS",
    "PHOTOMETRIC_OPS",
    "AugmentParams",
    "Augmenter",
    "describe_ops",
    "preview_grid",
]

Center = tuple[float, float]
BorderName = Literal["reflect", "replicate", "constant"]

#: Geometric ops in the order they are applied: affine ops first, then the non-rigid ones.
GEOMETRIC_OPS: tuple[str, ...] = (
    "shrink",
    "shear",
    "rotation",
    "hflip",
    "vflip",
    "barrel",
    "pincushion",
    "deformation",
    "distortion",
)
#: Dermoscopy artefacts (image only, placed with the mask's help), drawn after the geometry and before the
#: photometric ops, so a camera's colour and blur apply to them too. See :mod:`skinseg.data.artefacts`.
ARTEFACT_OPS: tuple[str, ...] = ("vignette", "ruler", "ink", "hair", "white_balance")
#: Photometric (image-only) ops in the order they are applied.
PHOTOMETRIC_OPS: tuple[str, ...] = (
    "brightness_contrast",
    "gamma",
    "hue_saturation",
    "sharpen",
    "blur",
    "noise",
)

_BORDERS: dict[str, int] = {
    "reflect": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
}
_MASK_THRESHOLD = 127  # cv2.THRESH_BINARY keeps values > 127, i.e. >= 128
_OUTLINE_RGB = (0, 255, 0)
# 256 equiprobable quantiles of the standard normal: random bytes index them to draw Gaussian noise.
_NORMAL_QUANTILES = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float32)


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation settings. Each op's own field is its probability per sample (0 disables it).

    Value lists (angles, shrinks, ...) are choices: one entry is drawn uniformly per sample.
    """

    hflip: float = 0.5
    vflip: float = 0.5
    rotation: float = 0.5
    angles: tuple[float, ...] = (0, 90, 180, 270)
    shrink: float = 0.0
    shrinks: tuple[float, ...] = (0.8,)
    shear: float = 0.0
    shears: tuple[float, ...] = (0.2,)
    # elastic deformation: displacement of scale ``alpha`` px, smoothed with a Gaussian of ``sigma`` px
    deformation: float = 0.0
    alpha: float = 1300.0
    sigmas: tuple[float, ...] = (8.0,)
    # smooth distortion: largest displacement is a ``distortions`` value times max(H, W) px, and the image
    # alone gets a light blur of ``distortion_sigma`` px (the toolkit computed that blur but discarded it)
    distortion: float = 0.0
    distortion_rsigma: float = 40.0
    distortion_sigma: float = 0.5
    distortions: tuple[float, ...] = (0.02,)
    # radial distortions inside a disc of ``radius * min(H, W)`` px around a centre (fractions of W, H)
    barrel: float = 0.0
    barrel_radius: float = 0.3
    barrel_amount: float = 0.3
    barrel_centers: tuple[Center, ...] = ((0.5, 0.5),)
    pincushion: float = 0.0
    pincushion_radius: float = 0.3
    pincushion_amount: float = 0.3
    pincushion_centers: tuple[Center, ...] = ((0.5, 0.5),)
    # photometric, image only; the second value of each pair is the maximum strength
    brightness_contrast: float = 0.0
    contrast_alpha: float = 1.2
    brightness_beta: float = 10.0
    sharpen: float = 0.0
    sharpen_k: float = 1.0
    gamma: float = 0.0
    gamma_max: float = 1.5
    hue_saturation: float = 0.0
    hue_shift: float = 10.0
    saturation_scale: float = 0.2
    blur: float = 0.0
    blur_sigma: float = 1.0
    noise: float = 0.0
    noise_std: float = 8.0
    # dermoscopy artefacts, image only (skinseg.data.artefacts)
    vignette: float = 0.0
    ruler: float = 0.0
    ink: float = 0.0
    hair: float = 0.0
    max_hairs: int = 30
    white_balance: float = 0.0
    white_balance_strength: float = 0.15
    border: BorderName = "reflect"

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, item.name, _as_tuple(value))
        for name in GEOMETRIC_OPS + ARTEFACT_OPS + PHOTOMETRIC_OPS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: probability must be in [0, 1], got {getattr(self, name)}")
        choices = {
            "rotation": self.angles,
            "shrink": self.shrinks,
            "shear": self.shears,
            "deformation": self.sigmas,
            "distortion": self.distortions,
            "barrel": self.barrel_centers,
            "pincushion": self.pincushion_centers,
        }
        for name, values in choices.items():
            if getattr(self, name) > 0 and not values:
                raise ValueError(f"{name} is enabled but its list of values is empty")
        if any(s <= 0 for s in self.shrinks) or any(s <= 0 for s in self.sigmas):
            raise ValueError("shrinks and sigmas must be positive")
        if self.contrast_alpha <= 0 or self.gamma_max <= 0:
            raise ValueError("contrast_alpha and gamma_max must be positive")
        if self.max_hairs < 1 or not 0.0 <= self.white_balance_strength < 1.0:
            raise ValueError("max_hairs must be >= 1 and white_balance_strength within [0, 1)")
        if self.border not in _BORDERS:
            raise ValueError(f"border must be one of {sorted(_BORDERS)}, got {self.border!r}")


def _as_tuple(value: list | tuple) -> tuple:
    """Nested lists (from a config parser) to nested tuples, so the frozen params stay hashable."""
    return tuple(_as_tuple(v) if isinstance(v, (list, tuple)) else v for v in value)


# --------------------------------------------------------------------------------------------------
# Geometric ops. Affine ops are 2x2 linear maps about the image centre (forward: source -> output);
# non-rigid ops are backward maps (output -> source coordinates) evaluated on a coarse control grid.
# --------------------------------------------------------------------------------------------------


def hflip_matrix() -> np.ndarray:
    """hflip: mirror left-right."""
    return np.array([[-1.0, 0.0], [0.0, 1.0]])


def vflip_matrix() -> np.ndarray:
    """vflip: mirror top-bottom."""
    return np.array([[1.0, 0.0], [0.0, -1.0]])


def rotation_matrix(angle: float) -> np.ndarray:
    """rotation: rotate by an angle (degrees) from ``angles`` about the centre, keeping the frame size."""
    radians = math.radians(angle)
    cos, sin = round(math.cos(radians), 12), round(math.sin(radians), 12)  # exact for right angles
    return np.array([[cos, sin], [-sin, cos]])


def shrink_matrix(scale: float) -> np.ndarray:
    """shrink: scale by a factor from ``shrinks`` about the centre; the margin is filled by the border."""
    return np.array([[scale, 0.0], [0.0, scale]])


def shear_matrix(shear: float) -> np.ndarray:
    """shear: vertical shear ``y += shear * x`` about the centre, with a factor from ``shears``."""
    return np.array([[1.0, 0.0], [shear, 1.0]])


def elastic_displacement(
    rng: np.random.Generator, grid_shape: tuple[int, int], step: int, alpha: float, sigma: float
) -> np.ndarray:
    """deformation: elastic deformation (Simard et al. 2003) with ``alpha`` and a sigma from ``sigmas``.

    Uniform noise in [-1, 1] smoothed by a Gaussian of ``sigma`` px and scaled by ``alpha``. It is drawn on
    the control grid (one node every ``step`` px) with the amplitude rescaled so that its statistics match
    the full-resolution field. Returns an ``(ny, nx, 2)`` float32 displacement in pixels.
    """
    noise = rng.random((*grid_shape, 2), dtype=np.float32) * 2.0 - 1.0
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma / step, borderType=cv2.BORDER_REFLECT_101)
    return smooth * np.float32(alpha / step)


def distortion_displacement(
    rng: np.random.Generator, grid_shape: tuple[int, int], step: int, rsigma: float, peak: float
) -> np.ndarray:
    """distortion: smooth warp along the gradient of a random potential (``gaussian_filter_rsigma``).

    Normal noise smoothed by a Gaussian of ``rsigma`` px is differentiated, and the field is scaled so
    that its largest displacement is ``peak`` px (a value of ``distortions`` times the longer side).
    Returns an ``(ny, nx, 2)`` float32 displacement in pixels.
    """
    potential = cv2.GaussianBlur(
        rng.standard_normal(grid_shape, dtype=np.float32),
        (0, 0),
        rsigma / step,
        borderType=cv2.BORDER_REFLECT,
    )
    grad_y, grad_x = np.gradient(potential)
    field = np.stack([grad_x, grad_y], axis=-1)
    largest = float(np.sqrt((field * field).sum(axis=-1)).max())
    if largest == 0.0:
        return np.zeros((*grid_shape, 2), np.float32)
    return (field * np.float32(-peak / largest)).astype(np.float32)


def radial_warp(
    xs: np.ndarray, ys: np.ndarray, center: tuple[float, float], radius: float, amount: float
) -> tuple[np.ndarray, np.ndarray]:
    """barrel / pincushion: radial distortion inside a disc (barrel for ``amount > 0``, else pincushion).

    Backward map of the toolkit's formula: an output point at distance ``d < radius`` from ``center``
    samples the source at ``center + sin(pi * d / (2 * radius)) ** amount * (point - center)``.
    """
    cx, cy = center
    dx, dy = xs - cx, ys - cy
    dist = np.sqrt(dx * dx + dy * dy)
    ratio = np.clip(dist / radius, 1e-6, 1.0)
    factor = np.sin(np.float32(np.pi / 2) * ratio) ** np.float32(amount)
    return cx + factor * dx, cy + factor * dy


def barrel_warp(
    xs: np.ndarray, ys: np.ndarray, center: tuple[float, float], radius: float, amount: float
) -> tuple[np.ndarray, np.ndarray]:
    """barrel: bulge a disc of ``barrel_radius`` around one of ``barrel_centers`` by ``barrel_amount``."""
    return radial_warp(xs, ys, center, radius, abs(amount))


def pincushion_warp(
    xs: np.ndarray, ys: np.ndarray, center: tuple[float, float], radius: float, amount: float
) -> tuple[np.ndarray, np.ndarray]:
    """pincushion: pinch a disc of ``pincushion_radius`` around a centre by ``pincushion_amount``."""
    return radial_warp(xs, ys, center, radius, -abs(amount))


def _centred_affine(linear: np.ndarray, width: int, height: int) -> np.ndarray:
    """2x3 matrix applying ``linear`` about the centre of a ``width`` x ``height`` pixel grid."""
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    return np.hstack([linear, (centre - linear @ centre)[:, None]])


@dataclass(frozen=True)
class _ControlGrid:
    """Control points every ``step`` px covering an image; a smooth map is evaluated only there.

    The nodes sit where ``cv2.resize`` by the integer factor ``step`` puts its source samples, offset by
    ``margin`` px so that the first node is at or before pixel 0 and the last at or after the last pixel:
    resizing and cropping then interpolates the map bilinearly everywhere, with no edge clamping.
    """

    height: int
    width: int
    step: int

    @property
    def margin(self) -> int:
        return self.step // 2

    @property
    def origin(self) -> float:
        """Position of the first node in output pixels (in ``(-1, 0]``)."""
        return (self.step - 1) / 2.0 - self.margin

    @property
    def shape(self) -> tuple[int, int]:
        def count(size: int) -> int:
            return max(2, math.ceil((size - 1 - self.origin) / self.step) + 1)

        return count(self.height), count(self.width)

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = self.shape
        xs = self.origin + self.step * np.arange(cols, dtype=np.float32)
        ys = self.origin + self.step * np.arange(rows, dtype=np.float32)
        return np.meshgrid(xs, ys)

    def upsample(self, coarse: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of a ``(rows, cols, 2)`` map to ``(height, width, 2)``."""
        rows, cols = self.shape
        fine = cv2.resize(coarse, (cols * self.step, rows * self.step), interpolation=cv2.INTER_LINEAR)
        top = left = self.margin
        return fine[top : top + self.height, left : left + self.width]


@dataclass(frozen=True)
class _GeometricPlan:
    """Everything a sample's geometric ops decided: at most one affine and one coarse backward map."""

    linear: np.ndarray | None  # forward 2x2 linear map about the centre
    coarse_map: np.ndarray | None  # (rows, cols, 2) source coordinates before the affine
    grid: _ControlGrid
    image_blur: float = 0.0


# --------------------------------------------------------------------------------------------------
# Photometric ops: (image, rng, params) -> image, uint8 RGB in and out, computed in float32.
# --------------------------------------------------------------------------------------------------


def _saturate(values: np.ndarray) -> np.ndarray:
    """Round and clip (small) float arrays to uint8, with no wrap-around."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _apply_lut(image: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Apply a float32 tone curve over 0..255 to every channel, saturating to uint8."""
    return cv2.LUT(image, _saturate(curve))


def _levels() -> np.ndarray:
    return np.arange(256, dtype=np.float32)


def brightness_contrast(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    """brightness_contrast: ``a * x + b`` (the toolkit's brightening) with random a and b.

    ``a`` is uniform between ``1 / contrast_alpha`` and ``contrast_alpha``; ``b`` is uniform in
    ``[-brightness_beta, brightness_beta]``.
    """
    low, high = sorted((params.contrast_alpha, 1.0 / params.contrast_alpha))
    gain = rng.uniform(low, high)
    offset = rng.uniform(-params.brightness_beta, params.brightness_beta)
    return _apply_lut(image, _levels() * np.float32(gain) + np.float32(offset))


def gamma(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    """gamma: tone curve ``255 * (x / 255) ** g`` with ``log g`` uniform in ``±log(gamma_max)``."""
    spread = abs(math.log(params.gamma_max))
    exponent = math.exp(rng.uniform(-spread, spread))
    return _apply_lut(image, 255.0 * (_levels() / 255.0) ** np.float32(exponent))


def hue_saturation(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    """hue_saturation: hue shift uniform in ``±hue_shift`` degrees, saturation scaled by ``1 ± scale``."""
    shift = rng.uniform(-params.hue_shift, params.hue_shift) / 2.0  # OpenCV stores hue / 2
    scale = rng.uniform(1.0 - params.saturation_scale, 1.0 + params.saturation_scale)
    levels = _levels()
    hue = np.where(levels < 180, np.mod(levels + np.float32(shift), 180.0), levels)
    curves = np.stack([hue, levels * np.float32(scale), levels], axis=-1)[None]  # (1, 256, 3)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    return cv2.cvtColor(cv2.LUT(hsv, _saturate(curves)), cv2.COLOR_HSV2RGB)


def sharpen(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    """sharpen: the toolkit's 3x3 kernel (``1 + 8k`` centre, ``-k`` around), k uniform in [0, sharpen_k].

    OpenCV evaluates the float32 kernel in floating point and saturates the result to uint8.
    """
    k = rng.uniform(0.0, params.sharpen_k)
    kernel = np.full((3, 3), -k, np.float32)
    kernel[1, 1] = 1.0 + 8.0 * k
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def blur(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    """blur: Gaussian blur with sigma uniform in ``[blur_sigma / 4, blur_sigma]`` px."""
    sigma = rng.uniform(params.blur_sigma / 4.0, params.blur_sigma)
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def noise(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    """noise: additive Gaussian noise per pixel and channel, std uniform in ``[0, noise_std]``.

    The normal deviates are 256-level quantiles picked by random bytes (fast and exactly reproducible).
    """
    std = rng.uniform(0.0, params.noise_std)
    picks = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
    offsets = cv2.LUT(picks, _NORMAL_QUANTILES * np.float32(std))
    return cv2.add(image, offsets, dtype=cv2.CV_8U)  # float32 sum, saturated to uint8


PhotometricOp = Callable[[np.ndarray, np.random.Generator, AugmentParams], np.ndarray]
_PHOTOMETRIC: dict[str, PhotometricOp] = {
    "brightness_contrast": brightness_contrast,
    "gamma": gamma,
    "hue_saturation": hue_saturation,
    "sharpen": sharpen,
    "blur": blur,
    "noise": noise,
}
ArtefactOp = Callable[[np.ndarray, np.ndarray, np.random.Generator, AugmentParams], np.ndarray]
_ARTEFACTS: dict[str, ArtefactOp] = {
    "vignette": lambda image, mask, rng, p: artefacts.vignette(image, mask, rng),
    "ruler": lambda image, mask, rng, p: artefacts.ruler(image, mask, rng),
    "ink": lambda image, mask, rng, p: artefacts.ink(image, mask, rng),
    "hair": lambda image, mask, rng, p: artefacts.hair(image, mask, rng, max_hairs=p.max_hairs),
    "white_balance": lambda image, mask, rng, p: artefacts.white_balance(
        image, mask, rng, strength=p.white_balance_strength
    ),
}
_GEOMETRIC_DOCS: dict[str, Callable] = {
    "shrink": shrink_matrix,
    "shear": shear_matrix,
    "rotation": rotation_matrix,
    "hflip": hflip_matrix,
    "vflip": vflip_matrix,
    "barrel": barrel_warp,
    "pincushion": pincushion_warp,
    "deformation": elastic_displacement,
    "distortion": distortion_displacement,
}


def describe_ops() -> dict[str, str]:
    """One-line description of every op, keyed by name (geometric first, in application order)."""
    docs = {**_GEOMETRIC_DOCS, **{name: getattr(artefacts, name) for name in ARTEFACT_OPS}, **_PHOTOMETRIC}
    return {
        name: (docs[name].__doc__ or "").strip().splitlines()[0].split(": ", 1)[-1]
        for name in GEOMETRIC_OPS + ARTEFACT_OPS + PHOTOMETRIC_OPS
    }


# --------------------------------------------------------------------------------------------------
# The augmenter
# --------------------------------------------------------------------------------------------------


def _fires(rng: np.random.Generator, probability: float) -> bool:
    """Bernoulli draw; probability 0 draws nothing, so disabled ops do not shift the random stream."""
    return probability > 0.0 and rng.random() < probability


def _pick(rng: np.random.Generator, values: tuple):
    return values[int(rng.integers(len(values)))]


def _binarise(mask: np.ndarray) -> np.ndarray:
    return cv2.threshold(mask, _MASK_THRESHOLD, 255, cv2.THRESH_BINARY)[1]


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 uint8, got {image.shape} {image.dtype}")
    if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be HxW uint8 matching the image, got {mask.shape} {mask.dtype}")


class Augmenter:
    """Random per-sample augmentation of an (image, mask) pair; see :class:`AugmentParams`.

    >>> augment = Augmenter(AugmentParams(rotation=1.0))
    >>> image, mask = augment(image, mask, np.random.default_rng(0))  # doctest: +SKIP
    """

    def __init__(self, params: AugmentParams) -> None:
        self.params = params
        self._border = _BORDERS[params.border]
        # Control-grid spacing: fine enough to resolve the smallest elastic smoothing scale.
        finest = min(params.sigmas) if params.deformation > 0 else 8.0
        self._step = int(min(4, max(1, finest // 2)))

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment one pair: HxWx3 uint8 RGB image and HxW uint8 {0, 255} mask, same shapes out."""
        _check_pair(image, mask)
        plan = self._plan_geometry(rng, *mask.shape)
        image, mask = self._warp(image, mask, plan)
        if plan.image_blur > 0:
            image = cv2.GaussianBlur(image, (0, 0), plan.image_blur)
        mask = _binarise(mask)
        for name in ARTEFACT_OPS:
            if _fires(rng, getattr(self.params, name)):
                image = _ARTEFACTS[name](image, mask, rng, self.params)
        for name in PHOTOMETRIC_OPS:
            if _fires(rng, getattr(self.params, name)):
                image = _PHOTOMETRIC[name](image, rng, self.params)
        return image, mask

    # ---- geometry -------------------------------------------------------------------------------

    def _plan_geometry(self, rng: np.random.Generator, height: int, width: int) -> _GeometricPlan:
        """Draw every geometric op of one sample and compose them (affine first, then non-rigid)."""
        grid = _ControlGrid(height, width, self._step)
        linear = self._sample_linear(rng)
        coarse_map, image_blur = self._sample_nonrigid(rng, grid)
        return _GeometricPlan(linear, coarse_map, grid, image_blur)

    def _sample_linear(self, rng: np.random.Generator) -> np.ndarray | None:
        p = self.params
        candidates: list[tuple[float, Callable[[], np.ndarray]]] = [
            (p.shrink, lambda: shrink_matrix(_pick(rng, p.shrinks))),
            (p.shear, lambda: shear_matrix(_pick(rng, p.shears))),
            (p.rotation, lambda: rotation_matrix(_pick(rng, p.angles))),
            (p.hflip, hflip_matrix),
            (p.vflip, vflip_matrix),
        ]
        linear = None
        for probability, make in candidates:
            if _fires(rng, probability):
                step = make()
                linear = step if linear is None else step @ linear
        return linear

    def _sample_nonrigid(self, rng: np.random.Generator, grid: _ControlGrid) -> tuple[np.ndarray | None, float]:
        """Compose the non-rigid ops into one backward map on the control grid (None if none fired).

        Forward order is barrel, pincushion, then the random displacement (elastic + distortion, summed),
        so the backward map evaluates the random fields on the grid itself and the radial warps in
        closed form at the displaced points.
        """
        p = self.params
        height, width = grid.height, grid.width
        radials = []
        for probability, warp, radius, amount, centers in (
            (p.barrel, barrel_warp, p.barrel_radius, p.barrel_amount, p.barrel_centers),
            (p.pincushion, pincushion_warp, p.pincushion_radius, p.pincushion_amount, p.pincushion_centers),
        ):
            if _fires(rng, probability):
                fx, fy = _pick(rng, centers)
                centre = (fx * (width - 1), fy * (height - 1))
                radials.append((warp, centre, radius * min(height, width), amount))
        displacement = None
        if _fires(rng, p.deformation):
            sigma = _pick(rng, p.sigmas)
            displacement = elastic_displacement(rng, grid.shape, grid.step, p.alpha, sigma)
        image_blur = 0.0
        if _fires(rng, p.distortion):
            peak = _pick(rng, p.distortions) * max(height, width)
            field = distortion_displacement(rng, grid.shape, grid.step, p.distortion_rsigma, peak)
            displacement = field if displacement is None else displacement + field
            image_blur = p.distortion_sigma
        if displacement is None and not radials:
            return None, image_blur
        xs, ys = grid.points()
        if displacement is not None:
            xs, ys = xs + displacement[..., 0], ys + displacement[..., 1]
        for warp, centre, radius, amount in reversed(radials):
            xs, ys = warp(xs, ys, centre, radius, amount)
        return np.stack([xs, ys], axis=-1).astype(np.float32), image_blur

    def _warp(self, image: np.ndarray, mask: np.ndarray, plan: _GeometricPlan) -> tuple[np.ndarray, np.ndarray]:
        """Resample image and mask once each, with the same map, interpolation and border."""
        if plan.linear is None and plan.coarse_map is None:
            return image.copy(), mask.copy()
        height, width = mask.shape
        linear = np.eye(2) if plan.linear is None else plan.linear
        backward = cv2.invertAffineTransform(_centred_affine(linear, width, height))
        if plan.coarse_map is None:
            if _is_grid_symmetry(linear, width, height):
                return _apply_grid_symmetry(image, linear), _apply_grid_symmetry(mask, linear)
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            return tuple(
                cv2.warpAffine(a, backward, (width, height), flags=flags, borderMode=self._border)
                for a in (image, mask)
            )
        coarse = cv2.transform(plan.coarse_map, backward.astype(np.float32))
        sample_at = plan.grid.upsample(coarse)  # a cropped view: cv2 handles the row stride
        return tuple(cv2.remap(a, sample_at, None, cv2.INTER_LINEAR, borderMode=self._border) for a in (image, mask))


def _is_grid_symmetry(linear: np.ndarray, width: int, height: int) -> bool:
    """Whether a centred linear map just permutes pixels (flips, and right-angle turns if square)."""
    rounded = np.round(linear)
    if not np.allclose(linear, rounded, atol=1e-9) or abs(abs(np.linalg.det(rounded)) - 1) > 1e-9:
        return False
    diagonal = rounded[0, 1] == rounded[1, 0] == 0
    return bool(diagonal or (rounded[0, 0] == rounded[1, 1] == 0 and width == height))


def _apply_grid_symmetry(array: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Apply a pixel-permuting centred linear map exactly, with cv2.transpose and cv2.flip."""
    (a, b), (c, d) = np.round(linear).astype(int)
    if b == 0:  # diagonal: output (x, y) = (a x, d y) about the centre
        flip_cols, flip_rows, source = a < 0, d < 0, array
    else:  # anti-diagonal: output x comes from source y and output y from source x
        flip_cols, flip_rows, source = b < 0, c < 0, cv2.transpose(array)
    if flip_cols and flip_rows:
        return cv2.flip(source, -1)
    if flip_cols or flip_rows:
        return cv2.flip(source, 1 if flip_cols else 0)
    return source.copy()


# --------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------


def _letterbox(image: np.ndarray, mask: np.ndarray, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit a pair into a ``cell`` x ``cell`` square, keeping the aspect ratio, padded with black."""
    height, width = mask.shape
    scale = cell / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small_image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small_mask = _binarise(cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR))
    top, left = (cell - size[1]) // 2, (cell - size[0]) // 2
    canvas = np.zeros((cell, cell, 3), np.uint8)
    canvas_mask = np.zeros((cell, cell), np.uint8)
    canvas[top : top + size[1], left : left + size[0]] = small_image
    canvas_mask[top : top + size[1], left : left + size[0]] = small_mask
    return canvas, canvas_mask


def preview_grid(pairs: list[tuple[np.ndarray, np.ndarray]], columns: int = 4, cell: int = 256) -> np.ndarray:
    """Tile augmented pairs into one RGB uint8 picture, each image with its mask outline drawn on it."""
    if not pairs:
        raise ValueError("preview_grid needs at least one (image, mask) pair")
    if columns < 1 or cell < 8:
        raise ValueError("columns must be >= 1 and cell >= 8")
    columns = min(columns, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    sheet = np.zeros((rows * cell, columns * cell, 3), np.uint8)
    thickness = max(1, cell // 128)
    for index, (image, mask) in enumerate(pairs):
        tile, tile_mask = _letterbox(image, mask, cell)
        contours, _ = cv2.findContours(tile_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(tile, contours, -1, _OUTLINE_RGB, thickness, lineType=cv2.LINE_AA)
        row, col = divmod(index, columns)
        sheet[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = tile
    return sheet
