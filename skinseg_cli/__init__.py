"""skinseg: skin-lesion segmentation at the edge (train, export, infer, evaluate).

One import name over five layers, each importing only the ones below it (``tests/test_layers.py`` checks), and
this root package (layer 0: ``__version__``, ``DISTRIBUTION`` and ``install_hint``, which every layer may import,
and the lazy embedding API below):

1. :mod:`skinseg.runtime` (folder ``runtime/``): onnxruntime inference: reading images, tiling, blending,
   pre- and post-processing, batch runs, reports. numpy, OpenCV and onnxruntime only; never TensorFlow.
2. :mod:`skinseg.data` (``data/``): pairing images with masks, synthetic images, the config schema.
3. :mod:`skinseg.exporters` (``exporters/``): Keras to ONNX, graph clean-up, quantization, checks.
4. :mod:`skinseg.training` (``training/``): augmentation, the UNet, losses, the trainer.
5. the CLI: :mod:`skinseg.cli`, :mod:`skinseg.app`, :mod:`skinseg.commands` (a thin shell over the layers).

The embedding API is here, imported lazily so that ``import skinseg`` stays cheap::

    from skinseg import Segmenter, segment_folder

    seg = Segmenter("model.onnx")
    result = seg.segment_file("photo.jpg")

    run = segment_folder("photos/", "masks/")  # a batch, as `skinseg infer photos/ -o masks/`
    for row in run:  # each image's ImageRow as it completes
        print(row.path, row.status, row.area_fraction)
    run.summary.ok
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skinseg.runtime.lazy import exports

__version__ = "0.1.0"
# The name on the package index: `skinseg` there is an unrelated project, so skinseg is published as `skinseg-edge`
# (`pip install 'skinseg-edge[cpu]'`); the command and the import name stay `skinseg`.
DISTRIBUTION = "skinseg-edge"


def install_hint(extras: str) -> str:
    """How to install skinseg with ``extras`` (such as ``"train"`` or ``"cpu,train"``): from the package index, and
    from a checkout of the repository."""
    return f"pip install '{DISTRIBUTION}[{extras}]' (from a checkout: pip install -e '.[{extras}]')"


if TYPE_CHECKING:
    from skinseg.runtime.batch import BatchRun, iter_batch, segment_folder
    from skinseg.runtime.errors import ImageError, ModelError, SkinsegError, UsageError
    from skinseg.runtime.imageio import read_image, read_mask
    from skinseg.runtime.options import InferOptions, SegmentOptions
    from skinseg.runtime.records import ImageRow
    from skinseg.runtime.segmenter import Result, Segmenter

_LAZY = {
    "Segmenter": "skinseg.runtime.segmenter",
    "Result": "skinseg.runtime.segmenter",
    "read_image": "skinseg.runtime.imageio",
    "read_mask": "skinseg.runtime.imageio",
    "SkinsegError": "skinseg.runtime.errors",
    "ImageError": "skinseg.runtime.errors",
    "ModelError": "skinseg.runtime.errors",
    "UsageError": "skinseg.runtime.errors",
    "SegmentOptions": "skinseg.runtime.options",
    "InferOptions": "skinseg.runtime.options",
    "ImageRow": "skinseg.runtime.records",
    "BatchRun": "skinseg.runtime.batch",
    "iter_batch": "skinseg.runtime.batch",
    "segment_folder": "skinseg.runtime.batch",
}

__all__ = [
    "BatchRun",
    "ImageError",
    "ImageRow",
    "InferOptions",
    "SegmentOptions",
    "iter_batch",
    "segment_folder",
    "ModelError",
    "Result",
    "Segmenter",
    "SkinsegError",
    "DISTRIBUTION",
    "UsageError",
    "__version__",
    "install_hint",
    "read_image",
    "read_mask",
]


__getattr__, __dir__ = exports(__name__, _LAZY, globals())
