"""skinseg.data: what a training run is made of, with no TensorFlow: image/mask pairing and splits by stem,
synthetic dermoscopy-like images with exact masks, and the typed ``train_eval_infer.config`` schema.

Layer 1 of 5 (runtime ← data ← exporters ← training ← CLI): imports only :mod:`skinseg.runtime`.
"""
