"""Default settings of the runtime, in a module without heavy imports (the CLI reads them to show its help).

Each was chosen by measurement; the figures are in docs/strategies.md and docs/performance.md.
"""

# Post-processing, measured on the held-out split with the reference model: keeping only the largest component
# lost a true lesion part or picked the wrong blob more often than it removed noise (mean Jaccard 0.858 without,
# 0.851 with); hole filling never hurt.
DEFAULT_KEEP_LARGEST = False
DEFAULT_FILL_HOLES = True
# Test-time flips cost 4× the model's work; a model's metadata may recommend them (see MODEL_CARD.md).
DEFAULT_TTA = False

# px: a larger tile is a typo (its Gaussian weights alone would take gigabytes); runtime.tiling.parse_tile
# refuses it.
MAX_TILE = 4096

# Tiles per model call. On a 2-core CPU, batches of 2 or 4 tiles are no faster per tile than single tiles, and
# batch 4 costs about 700 MB more memory with the 31 M-parameter seed model. On a GPU, raise it with --batch-size.
DEFAULT_BATCH_SIZE = 1
DEFAULT_OVERLAP = 0.25  # fraction of a tile shared with its neighbours
# Probability cut-off of a mask where neither the caller nor the model's metadata gives one.
DEFAULT_THRESHOLD = 0.5

# Colour-constancy methods a model can be trained with (skinseg.runtime.preprocess); the model's metadata says which.
COLOR_CONSTANCY_METHODS = ("none", "shades_of_gray")


# OpenCV's decoders check the pixel count they find against OPENCV_IO_MAX_IMAGE_PIXELS before allocating, reading
# the variable once, when the cv2 module loads. The command line sets it (set_decoder_limit) to the largest image it
# will accept, so a file whose header lies to skinseg's own check (a TIFF that libtiff reads another way) is refused
# by the decoder too. Importing skinseg changes no environment variable: an application that embeds it decides.
DEFAULT_MAX_PIXELS = 250_000_000
DECODER_LIMIT_VARIABLE = "OPENCV_IO_MAX_IMAGE_PIXELS"


def set_decoder_limit(max_pixels: int = DEFAULT_MAX_PIXELS, *, keep_existing: bool = False) -> bool:
    """Make OpenCV's decoders in this process refuse images of more than ``max_pixels`` (at least
    :data:`DEFAULT_MAX_PIXELS`) before they allocate them: an explicit configuration call, which sets the
    environment variable :data:`DECODER_LIMIT_VARIABLE` of this process (``import skinseg`` sets nothing).

    OpenCV reads the variable once, when ``cv2`` is first imported, so call this before anything imports ``cv2``
    (``skinseg.runtime.imageio``, ``Segmenter``, the batch): afterwards it changes nothing and returns False. True
    when set. ``keep_existing``: leave a value the environment already has (the user's) and return False. The
    command line calls it as it starts (and ``skinseg infer`` again with its ``--max-pixels``); skinseg's own
    header check (``max_pixels`` of the readers) refuses large images either way, this is the decoder's second
    line for a header that lies.
    """
    import os
    import sys

    if "cv2" in sys.modules or (keep_existing and DECODER_LIMIT_VARIABLE in os.environ):
        return False
    os.environ[DECODER_LIMIT_VARIABLE] = str(max(int(max_pixels), DEFAULT_MAX_PIXELS))
    return True


# Images worked on at once by `skinseg infer`, and the memory they may take together. On a 2-core CPU two images in
# flight keep both cores busy (one decodes or writes while the other is segmented); each 29 MP photograph needs
# about 200 MB at the default settings (see runtime.job.estimate_memory and docs/performance.md).
DEFAULT_MAX_IN_FLIGHT = 2

# The overlay is for looking: its long side is capped at this many pixels (--overlay-size; "full" keeps the photo's
# size). The mask, the data product, always has the photo's full size.
DEFAULT_OVERLAY_SIZE = 2048
# Its lesion fill and outline (--overlay-color, --overlay-opacity): green, 40% of the colour over the photo.
DEFAULT_OVERLAY_COLOR = (0, 255, 0)
DEFAULT_OVERLAY_OPACITY = 0.4


def default_memory_limit() -> int:
    """Bytes the images in flight may take together: a quarter of the machine's memory, from 256 MiB to 1 GiB."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        total = 4 << 30
    return int(min(max(total // 4, 256 << 20), 1 << 30))
