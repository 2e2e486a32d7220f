"""skinseg: skin-lesion segmentation at the edge (train, export, infer, evaluate)."""

__version__ = "0.1.0"
