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

# Tiles per model call. On a 2-core CPU, batches of 2 or 4 tiles are no faster per tile than single tiles, and
# batch 4 costs about 700 MB more memory with the 31 M-parameter seed model. On a GPU, raise it with --batch-size.
DEFAULT_BATCH_SIZE = 1

# Colour-constancy methods a model can be trained with (skinseg.runtime.preprocess); the model's metadata says which.
COLOR_CONSTANCY_METHODS = ("none", "shades_of_gray")
