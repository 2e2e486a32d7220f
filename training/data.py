"""Training examples: decode, bring to the model's scale, augment, and stream with ``tf.data``.

Decoding and resizing happen once per image (kept as uint8 at the model's scale when that fits the memory budget,
re-decoded per step otherwise); augmentation runs online with a random generator seeded by (seed, step), so runs
are reproducible whatever the thread scheduling. Nothing is held as float32 except the batch in flight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from skinseg.data.pairing import Pair
from skinseg.runtime.imageheaders import image_size
from skinseg.runtime.imageio import read_image
from skinseg.runtime.preprocess import apply_color_constancy

CACHE_BUDGET_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class SampleSpec:
    """How one example is brought to the model.

    ``train_scale`` None: the whole image is resized to the tile (the seed's way). Otherwise the image is resized
    by that factor (≤ 8) or to that long side in pixels (> 8), keeping its aspect, and a tile is cropped from it.
    """

    tile: tuple[int, int]  # (height, width)
    train_scale: float | None = None
    mask_threshold: int = 128
    color_constancy: str = (
        "none"  # applied at the model's scale, as the runtime applies it (skinseg.runtime.preprocess)
    )
    color_constancy_p: float = 6.0


def reduce_factor(src: tuple[int, int], dst: tuple[int, int]) -> int:
    """Largest OpenCV reduced-decode factor (1, 2, 4, 8) that keeps ``src`` (w, h) at least ``dst`` (w, h)."""
    for r in (8, 4, 2):
        if src[0] // r >= dst[0] and src[1] // r >= dst[1]:
            return r
    return 1


def target_size(width: int, height: int, spec: SampleSpec) -> tuple[int, int]:
    """(w, h) the image is resized to before any crop."""
    th, tw = spec.tile
    if spec.train_scale is None:
        return tw, th
    s = spec.train_scale if spec.train_scale <= 8 else spec.train_scale / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def read_mask_gray(path, threshold: int) -> np.ndarray:
    """A mask file as HxW uint8 {0, 255}, binarized at ``threshold`` (no blur: masks keep their true extent)."""
    from skinseg.runtime.imageio import read_mask

    return read_mask(path, threshold=threshold)


def resize_mask(mask: np.ndarray, size: tuple[int, int], threshold: int = 128) -> np.ndarray:
    """Nearest-neighbour resize (pixel-centre exact, no half-pixel shift), then binarize: no dilation."""
    out = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST_EXACT)
    return np.where(out >= threshold, np.uint8(255), np.uint8(0))


def load_example(pair: Pair, spec: SampleSpec) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair at the model's scale: (HxWx3 uint8 RGB, HxW uint8 {0,255}), aligned."""
    w, h = image_size(pair.image)
    size = target_size(w, h, spec)
    image = read_image(pair.image, reduce=reduce_factor((w, h), size))
    mask = read_mask_gray(pair.mask, spec.mask_threshold)
    if mask.shape[:2] != (h, w):
        from skinseg.runtime.errors import DataError

        raise DataError(f"{pair.mask}: mask is {mask.shape[1]}×{mask.shape[0]} but its image is {w}×{h}")
    interp = cv2.INTER_AREA if size[0] < image.shape[1] else cv2.INTER_LINEAR
    image = cv2.resize(image, size, interpolation=interp) if image.shape[1::-1] != size else image
    image = apply_color_constancy(image, spec.color_constancy, spec.color_constancy_p)
    mask = resize_mask(mask, size, spec.mask_threshold) if mask.shape[::-1] != size else mask
    return image, mask


def crop_tile(
    image: np.ndarray, mask: np.ndarray, tile: tuple[int, int], rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """A tile-sized crop (random with ``rng``, centred without), reflect-padded when the image is smaller."""
    th, tw = tile
    h, w = mask.shape
    ph, pw = max(0, th - h), max(0, tw - w)
    if ph or pw:
        pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
        image = cv2.copyMakeBorder(image, *pads, cv2.BORDER_REFLECT_101)
        mask = cv2.copyMakeBorder(mask, *pads, cv2.BORDER_REFLECT_101)
        h, w = mask.shape
    y = int(rng.integers(0, h - th + 1)) if rng is not None else (h - th) // 2
    x = int(rng.integers(0, w - tw + 1)) if rng is not None else (w - tw) // 2
    return image[y : y + th, x : x + tw], mask[y : y + th, x : x + tw]


class ExampleSource:
    """Examples by index, decoded once and kept as uint8 when they fit ``cache_budget`` bytes."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        spec: SampleSpec,
        *,
        cache_budget: int = CACHE_BUDGET_BYTES,
        workers: int = 4,
        on_load: Callable[[int, int], None] | None = None,
    ):
        self.pairs = list(pairs)
        self.spec = spec
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        th, tw = spec.tile
        factor = 1 if spec.train_scale is None else 4  # crops come from images larger than the tile
        if len(self.pairs) * th * tw * 4 * factor <= cache_budget:
            self._cache = self._load_all(workers, on_load)

    def _load_all(
        self, workers: int, on_load: Callable[[int, int], None] | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        out: list[tuple[np.ndarray, np.ndarray]] = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, example in enumerate(pool.map(lambda p: load_example(p, self.spec), self.pairs)):
                out.append(example)
                if on_load:
                    on_load(i + 1, len(self.pairs))
        return out

    def __len__(self) -> int:
        return len(self.pairs)

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._cache[index] if self._cache is not None else load_example(self.pairs[index], self.spec)


def make_example_fn(source: ExampleSource, *, augmenter: Callable | None, seed: int, train: bool):
    """A numpy function (step, index) -> (image float32 HxWx3 0–255, mask float32 HxWx1 0/1)."""
    tile = source.spec.tile
    crop = source.spec.train_scale is not None

    def fn(step: np.int64, index: np.int64) -> tuple[np.ndarray, np.ndarray]:
        image, mask = source.get(int(index))
        rng = np.random.default_rng([seed, int(step)]) if train else None
        if crop:
            image, mask = crop_tile(image, mask, tile, rng if train else None)
        if train and augmenter is not None:
            image, mask = augmenter(image, mask, rng)
        return image.astype(np.float32), (mask[..., None] > 127).astype(np.float32)

    return fn


def make_dataset(
    source: ExampleSource,
    *,
    batch_size: int,
    seed: int,
    train: bool,
    augmenter=None,
    start: int = 0,
    shard: tuple[int, int] = (0, 1),
    local_batches: int = 1,
):
    """A ``tf.data`` pipeline: seeded shuffle and online augmentation for training, fixed order for validation.

    Training repeats forever (use ``steps_per_epoch``); validation makes one pass.

    Training draws from one stream of positions, each epoch of it a seeded permutation of the examples, and the
    example at position ``p`` is augmented with a generator seeded by ``(seed, p)``. ``start`` is the first
    position (a resumed run continues the stream). Under ``tf.distribute`` every worker builds the same stream
    and keeps its part of each global batch: the global batch is ``batch_size * local_batches * shard[1]``
    positions, this pipeline takes the ``shard[0]``-th run of ``batch_size * local_batches`` of them and yields
    them as ``local_batches`` batches of ``batch_size`` (one for each of its local replicas). A global step
    therefore trains on the same examples, augmented the same way, whatever the number of workers.
    """
    import tensorflow as tf

    n = len(source)
    th, tw = source.spec.tile
    fn = make_example_fn(source, augmenter=augmenter, seed=seed, train=train)
    ds = tf.data.Dataset.range(n)
    if train:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate()
    if train and start:
        ds = ds.skip(start)
    index, count = shard
    if train and count > 1:
        chunk = batch_size * local_batches
        ds = ds.filter(lambda pos, i: (pos % (chunk * count)) // chunk == index)

    def load(step, index):
        image, mask = tf.numpy_function(fn, [step, index], [tf.float32, tf.float32], stateful=False)
        image.set_shape((th, tw, 3))
        mask.set_shape((th, tw, 1))
        return image, mask

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)


def steps_for(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))
