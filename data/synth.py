"""Synthetic dermoscopy images with exact lesion masks.

Each image is skin with low-frequency colour variation and fine grain, an irregular pigmented lesion
(a smooth star-shaped blob with colour zones, pigment network, globules and an optional soft rim), hairs,
and sometimes a ruler, air bubbles, specular highlights and the dark circular vignette of a dermatoscope.
The mask is the very array that decides where the lesion is painted, so it is exact.

Smooth fields and lesion textures are computed on a small working grid (longest side ``_WORK_SIDE``) and
upsampled with :func:`cv2.resize`; only the lesion outline and line art are drawn at full resolution. Hair, the
ruler and the vignette are drawn by :mod:`skinseg.data.artefacts`, the drawer of the training augmentation.
Everything random comes from the ``numpy`` generator passed in, so one seed gives byte-identical files.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from skinseg.data import artefacts
from skinseg.runtime.atomic import write_bytes_atomic
from skinseg.runtime.errors import UsageError, param

__all__ = ["JPEG_QUALITY", "MAX_SIZE", "MIN_SIZE", "parse_size", "synthesize", "write_dataset"]

MIN_SIZE = 32
MAX_SIZE = 20000
JPEG_QUALITY = 95

_WORK_SIDE = 2048  # longest side of the grid on which smooth fields and textures are computed
_OUTLINE_POINTS = 720  # vertices of the lesion outline polygon
_SHIFT = 4  # fractional bits of cv2 drawing coordinates
_SIZE_RE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")

# Dermoscopic skin tones (RGB), light to dark; a tone is interpolated between neighbours.
_SKIN_TONES = np.array(
    [(242, 208, 196), (230, 182, 160), (208, 152, 122), (170, 116, 84), (118, 78, 56), (82, 54, 40)],
    dtype=np.float32,
)
# Lesion pigments (RGB): tan, brown, dark brown, black-brown, blue-grey, red-brown.
_PIGMENTS = np.array(
    [(178, 122, 82), (132, 82, 52), (86, 50, 32), (48, 32, 30), (96, 102, 128), (160, 92, 84)],
    dtype=np.float32,
)
_PIGMENT_ODDS = np.array([0.27, 0.31, 0.2, 0.1, 0.06, 0.06])
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class _Grid:
    """The full image size, and full-resolution coordinates of the working grid's pixel centres."""

    width: int
    height: int
    xs: np.ndarray  # (1, w) float32
    ys: np.ndarray  # (h, 1) float32

    @classmethod
    def for_size(cls, width: int, height: int) -> _Grid:
        scale = min(1.0, _WORK_SIDE / max(width, height))
        w, h = max(2, round(width * scale)), max(2, round(height * scale))
        xs = ((np.arange(w, dtype=np.float32) + 0.5) * (width / w) - 0.5)[None, :]
        ys = ((np.arange(h, dtype=np.float32) + 0.5) * (height / h) - 0.5)[:, None]
        return cls(width, height, xs, ys)

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the working grid."""
        return self.ys.shape[0], self.xs.shape[1]

    @property
    def scale(self) -> float:
        """Working-grid pixels per full-resolution pixel."""
        return self.xs.shape[1] / self.width

    @property
    def diag(self) -> float:
        """Full-resolution diagonal in pixels."""
        return float(np.hypot(self.width, self.height))


@dataclass(frozen=True)
class _Lesion:
    """A star-shaped blob: ``radius(theta)`` tabulated at ``_OUTLINE_POINTS`` angles around ``center``."""

    center: tuple[float, float]
    angles: np.ndarray
    radii: np.ndarray

    def outline(self) -> np.ndarray:
        """Polygon vertices (N, 2) in full-resolution pixels."""
        cx, cy = self.center
        return np.stack([cx + self.radii * np.cos(self.angles), cy + self.radii * np.sin(self.angles)], axis=1)

    def rho(self, grid: _Grid) -> np.ndarray:
        """Normalised radius on the working grid: 0 at the centre, 1 on the outline."""
        dx, dy = grid.xs - self.center[0], grid.ys - self.center[1]
        theta = np.arctan2(dy, dx)
        edge = np.interp(theta, self.angles, self.radii, period=2 * np.pi).astype(np.float32)
        return np.hypot(dx, dy) / edge


# --------------------------------------------------------------------------------------------- public API


def synthesize(width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return one synthetic dermoscopy image and its exact lesion mask.

    The image is ``(height, width, 3)`` uint8 RGB; the mask is ``(height, width)`` uint8 with 0 for
    background and 255 for lesion. All randomness is drawn from ``rng``.
    """
    if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
        raise ValueError(f"image size {width}x{height} is outside {MIN_SIZE}..{MAX_SIZE} pixels per side")
    grid = _Grid.for_size(width, height)
    skin = _skin_layer(grid, rng)
    lesion = _random_lesion(grid, rng)
    inside = _lesion_layer(grid, lesion, skin, rng)
    cast = _colour_cast(rng)
    mask = _lesion_mask(lesion, width, height)
    image = _upsample(_to_u8(skin * cast), width, height)
    cv2.copyTo(_upsample(_to_u8(inside * cast), width, height), mask, image)
    # hair, ruler and vignette: the training augmentation's drawer (skinseg.data.artefacts)
    if rng.random() >= 0.25:
        image = artefacts.hair(image, mask, rng)
    if rng.random() < 0.25:
        image = artefacts.ruler(image, mask, rng)
    if rng.random() < 0.3:
        _draw_bubbles(image, grid, rng)
    if rng.random() < 0.3:
        _draw_highlights(image, grid, rng)
    if rng.random() < 0.5:
        image = artefacts.vignette(image, mask, rng)
    _add_grain(image, rng)
    return image, mask


def write_dataset(
    out_dir: Path,
    *,
    count: int,
    size: tuple[int, int],
    seed: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[tuple[Path, Path]]:
    """Write ``count`` pairs: ``out_dir/images/<stem>.jpg`` and ``out_dir/masks/<stem>_mask.png``.

    Stems are ``synth_00000``, ``synth_00001``, ... Image ``i`` depends only on ``seed`` and ``i``, so a
    larger ``count`` extends a dataset without changing the first images. Each file is written atomically.
    ``on_progress(done, count)`` is called after every pair. Returns the ``(image_path, mask_path)`` pairs.
    """
    if count < 1:
        raise UsageError(f"invalid count {count}: {param('count')} must be at least 1")
    if seed < 0:
        raise UsageError(f"invalid seed {seed}: {param('seed')} must be a non-negative integer")
    width, height = _check_size(size, f"{size[0]}x{size[1]}")
    image_dir, mask_dir = Path(out_dir) / "images", Path(out_dir) / "masks"
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    pairs: list[tuple[Path, Path]] = []
    for index in range(count):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        image, mask = synthesize(width, height, rng)
        stem = f"synth_{index:05d}"
        image_path, mask_path = image_dir / f"{stem}.jpg", mask_dir / f"{stem}_mask.png"
        # Mask first: a run killed in between leaves an orphan mask, never an image without its mask.
        write_bytes_atomic(mask_path, _encode(".png", mask))
        write_bytes_atomic(image_path, _encode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)))
        pairs.append((image_path, mask_path))
        if on_progress is not None:
            on_progress(index + 1, count)
    return pairs


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``'640x480'`` into ``(640, 480)``; raise :class:`UsageError` for anything else."""
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise UsageError(f"invalid size {text!r}: expected the form WxH with whole numbers of pixels, e.g. 640x480")
    return _check_size((int(match[1]), int(match[2])), text)


# ----------------------------------------------------------------------------------------------- helpers


def _check_size(size: tuple[int, int], text: str) -> tuple[int, int]:
    width, height = size
    if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
        raise UsageError(
            f"invalid size {text!r}: width and height must each be {MIN_SIZE}..{MAX_SIZE} pixels "
            f"(form WxH, e.g. 640x480)"
        )
    return width, height


def _encode(ext: str, array: np.ndarray) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == ".jpg" else []
    ok, buffer = cv2.imencode(ext, array, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {array.shape} array as {ext}")
    return buffer.tobytes()


def _to_u8(array: np.ndarray) -> np.ndarray:
    return np.clip(array + 0.5, 0, 255).astype(np.uint8)


def _upsample(array: np.ndarray, width: int, height: int) -> np.ndarray:
    if array.shape[1] == width and array.shape[0] == height:
        return array
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_CUBIC)


def _noise(shape: tuple[int, int], cell: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth zero-mean, unit-variance noise whose features are about ``cell`` pixels across."""
    h, w = shape
    cell = max(cell, 1.0)
    coarse = rng.standard_normal((max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)), dtype=np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    if cell < 3:
        field = cv2.GaussianBlur(field, (0, 0), cell / 2)
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _luma(colour: np.ndarray) -> np.ndarray:
    return colour @ _LUMA


def _colour_cast(rng: np.random.Generator) -> np.ndarray:
    """Per-image white balance and exposure, as RGB gains."""
    return (rng.uniform(0.92, 1.06) * (1 + rng.normal(0, 0.03, 3))).astype(np.float32)


# ----------------------------------------------------------------------------------------------- layers


def _skin_layer(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Skin on the working grid: a random tone, shading, redness patches and fine texture (float RGB)."""
    shape = grid.shape
    t = rng.beta(1.3, 2.2) * (len(_SKIN_TONES) - 1)
    low = int(min(t, len(_SKIN_TONES) - 2))
    tone = _SKIN_TONES[low] + (t - low) * (_SKIN_TONES[low + 1] - _SKIN_TONES[low])
    big = max(shape) / rng.uniform(1.5, 4.0)
    shading = 1 + rng.uniform(0.03, 0.09) * _noise(shape, big, rng)
    redness = _sigmoid(2.5 * _noise(shape, big / 2, rng) - rng.uniform(0.5, 3.0)) * rng.uniform(0, 0.12)
    cell = max(1.0, 0.004 * grid.diag * grid.scale)
    texture = 1 + rng.uniform(0.01, 0.035) * _noise(shape, cell, rng)
    skin = tone * (shading * texture)[..., None]
    skin *= 1 + redness[..., None] * np.array([0.25, -0.25, -0.2], dtype=np.float32)
    return skin


def _random_lesion(grid: _Grid, rng: np.random.Generator) -> _Lesion:
    """A smooth irregular blob covering 10-60% of the image area, mostly near the centre."""
    angles = np.linspace(-np.pi, np.pi, _OUTLINE_POINTS, endpoint=False)
    orders = np.arange(2, 17)
    amplitudes = rng.standard_normal(orders.size) / orders ** rng.uniform(1.4, 2.4)
    phases = rng.uniform(0, 2 * np.pi, orders.size)
    wobble = (amplitudes[:, None] * np.cos(orders[:, None] * angles + phases[:, None])).sum(axis=0)
    wobble *= rng.uniform(0.05, 0.25) / max(float(wobble.std()), 1e-6)
    shape = np.maximum(1 + wobble, 0.35)
    unit_area = 0.5 * float(np.mean(shape**2)) * 2 * np.pi
    target = rng.uniform(0.10, 0.60) * grid.width * grid.height
    radii = shape * np.sqrt(target / unit_area)
    cx = grid.width * np.clip(rng.normal(0.5, 0.08), 0.25, 0.75)
    cy = grid.height * np.clip(rng.normal(0.5, 0.08), 0.25, 0.75)
    return _Lesion(center=(float(cx), float(cy)), angles=angles, radii=radii)


def _lesion_mask(lesion: _Lesion, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    points = np.round(lesion.outline() * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [points], 255, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask


def _lesion_layer(grid: _Grid, lesion: _Lesion, skin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour of every working-grid pixel as if it were inside the lesion (float RGB)."""
    shape = grid.shape
    rho = lesion.rho(grid)
    pigment = _pigment_zones(shape, rng)
    pigment *= 1 - rng.uniform(0.0, 0.35) * (1 - _smoothstep(0.0, 1.0, rho))[..., None]
    _add_network(pigment, grid, rng)
    _add_globules(pigment, grid, lesion, rng)
    if rng.random() < 0.2:
        veil = _sigmoid(3 * _noise(shape, max(shape) / 6, rng) - 2) * rng.uniform(0.3, 0.7)
        pigment += veil[..., None] * (np.array([150, 160, 190], np.float32) - pigment)
    # Lesion luminance is a fraction of the surrounding skin's, so lesions stay darker on any skin tone.
    ratio = rng.uniform(0.4, 0.8) * float(_luma(skin).mean()) / max(float(_luma(pigment).mean()), 1.0)
    pigment *= ratio
    edge = rng.uniform(0.3, 0.9) if rng.random() < 0.6 else 1.0
    width = rng.uniform(0.1, 0.4)
    alpha = edge + (1 - edge) * (1 - _smoothstep(1 - width, 1.0, rho))
    return skin + alpha[..., None] * (pigment - skin)


def _pigment_zones(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Two to four pigments blended by smooth random zones."""
    picks = rng.choice(len(_PIGMENTS), size=int(rng.integers(2, 5)), replace=False, p=_PIGMENT_ODDS)
    pigment = np.broadcast_to(_PIGMENTS[picks[0]], (*shape, 3)).copy()
    cell = max(shape) / rng.uniform(3, 8)
    for index in picks[1:]:
        weight = _sigmoid(rng.uniform(2, 6) * _noise(shape, cell, rng) - rng.uniform(0, 1.5))
        pigment += weight[..., None] * (_PIGMENTS[index] - pigment)
    grey = _luma(pigment)[..., None]
    pigment += rng.uniform(0.15, 0.5) * (grey - pigment)
    return pigment * (1 + 0.06 * _noise(shape, max(1.0, cell / 12), rng))[..., None]


def _add_network(pigment: np.ndarray, grid: _Grid, rng: np.random.Generator) -> None:
    """Darken a reticular pattern (zero crossings of band-limited noise) in random patches."""
    if rng.random() < 0.3:
        return
    shape = grid.shape
    period = max(3.0, rng.uniform(0.008, 0.02) * grid.diag * grid.scale)
    lines = np.exp(-((_noise(shape, period, rng) / rng.uniform(0.2, 0.4)) ** 2))
    patches = _smoothstep(-0.5, 0.8, _noise(shape, max(shape) / 4, rng))
    pigment *= (1 - rng.uniform(0.2, 0.5) * lines * patches)[..., None]


def _add_globules(pigment: np.ndarray, grid: _Grid, lesion: _Lesion, rng: np.random.Generator) -> None:
    """Blend round dots of one dark pigment, scattered inside the lesion, into the working-grid colour."""
    if rng.random() < 0.4:
        return
    count = int(rng.integers(5, 60))
    scale = grid.scale
    theta = rng.uniform(-np.pi, np.pi, count)
    edge = np.interp(theta, lesion.angles, lesion.radii, period=2 * np.pi)
    reach = edge * np.sqrt(rng.uniform(0, 0.8, count))
    xs = (lesion.center[0] + reach * np.cos(theta)) * scale
    ys = (lesion.center[1] + reach * np.sin(theta)) * scale
    radii = np.maximum(0.8, rng.uniform(0.002, 0.008, count) * grid.diag * scale)
    strengths = rng.uniform(100, 255, count)
    dots = np.zeros(grid.shape, np.uint8)  # 8-bit so that cv2 can antialias the circles
    for x, y, r, strength in zip(xs, ys, radii, strengths, strict=True):
        _circle(dots, x, y, r, (float(strength),), -1)
    colour = _PIGMENTS[int(rng.integers(2, 5))] * rng.uniform(0.5, 0.9)
    pigment += (dots.astype(np.float32) / 255)[..., None] * (colour - pigment)


# ------------------------------------------------------------------------------------------- line art


def _circle(image: np.ndarray, x: float, y: float, r: float, colour: tuple, thickness: int) -> None:
    one = 1 << _SHIFT
    centre = (round(x * one), round(y * one))
    cv2.circle(image, centre, max(1, round(r * one)), colour, thickness, cv2.LINE_AA, _SHIFT)


def _roi(image: np.ndarray, box: tuple[float, float, float, float]) -> tuple[np.ndarray, int, int] | None:
    """The view of ``image`` inside box ``(x0, y0, x1, y1)`` clipped to the image, and its origin."""
    height, width = image.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(width, int(np.ceil(box[2])) + 1), min(height, int(np.ceil(box[3])) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return image[y0:y1, x0:x1], x0, y0


def _blend(roi: np.ndarray, overlay: np.ndarray, alpha: float) -> None:
    cv2.addWeighted(overlay, alpha, roi, 1 - alpha, 0, dst=roi)


def _draw_bubbles(image: np.ndarray, grid: _Grid, rng: np.random.Generator) -> None:
    """Air bubbles in the immersion fluid: a dark rim, a bright inner ring and a glint."""
    for _ in range(int(rng.integers(1, 7))):
        r = rng.uniform(0.005, 0.04) * grid.diag
        x, y = rng.uniform(0.1, 0.9) * grid.width, rng.uniform(0.1, 0.9) * grid.height
        rim = max(1, round(r * 0.08))
        alpha = float(rng.uniform(0.4, 0.8))
        found = _roi(image, (x - r - rim, y - r - rim, x + r + rim, y + r + rim))
        if found is None:
            continue
        roi, ox, oy = found
        overlay = roi.copy()
        _circle(overlay, x - ox, y - oy, r, (70, 60, 60), rim)
        _circle(overlay, x - ox, y - oy, r * 0.85, (250, 250, 250), max(1, rim // 2))
        _circle(overlay, x - ox - 0.4 * r, y - oy - 0.4 * r, max(1.0, 0.12 * r), (255, 255, 255), -1)
        _blend(roi, overlay, alpha)


def _draw_highlights(image: np.ndarray, grid: _Grid, rng: np.random.Generator) -> None:
    """Small specular reflections: bright translucent spots."""
    for _ in range(int(rng.integers(2, 15))):
        r = max(1.0, rng.uniform(0.001, 0.006) * grid.diag)
        x, y = rng.uniform(0, grid.width), rng.uniform(0, grid.height)
        alpha = float(rng.uniform(0.3, 0.9))
        found = _roi(image, (x - r - 1, y - r - 1, x + r + 1, y + r + 1))
        if found is None:
            continue
        roi, ox, oy = found
        overlay = roi.copy()
        _circle(overlay, x - ox, y - oy, r, (255, 255, 255), -1)
        _blend(roi, overlay, alpha)


# ------------------------------------------------------------------------------------------ full image


def _add_grain(image: np.ndarray, rng: np.random.Generator) -> None:
    """Pixel-level sensor noise, identical in the three channels."""
    amplitude = int(rng.integers(2, 5))
    noise = rng.integers(0, 2 * amplitude + 1, size=image.shape[:2], dtype=np.uint8)
    cv2.add(image, cv2.merge([noise] * 3), dst=image)
    cv2.subtract(image, (amplitude, amplitude, amplitude, 0), dst=image)
