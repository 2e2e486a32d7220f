"""The UNet of the Tensorflow-Image-Segmentation-API project, in the Keras 3 Functional API.

Structure (``TensorflowUNet.create`` in the seed project): the input (``image``, float32 pixels 0–255) is
rescaled to [0, 1]; encoder level ``i`` has two ``base_filters·2^i``-filter convolutions with a Dropout of
``dropout_rate·i`` between them and a 2×2 max-pool after every level but the deepest; decoder level ``f``
(deepest−1 down to 0) upsamples with a stride-2 transposed convolution, concatenates the encoder's skip
and applies the same block as encoder level ``f``. Kernel sizes shrink by 2 per level from
``base_kernels`` (never below 3) and dilation rates by 1 from ``dilation`` (never below 1). A 1×1 sigmoid
convolution gives the ``mask`` output.

Unlike the seed, input scaling is a ``Rescaling`` layer instead of a ``Lambda``, so the model saves,
reloads and exports to ONNX without pickled Python code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

from skinseg.data.config import BLOCKS
from skinseg.runtime.atomic import atomic_path
from skinseg.runtime.errors import ConfigError, ModelError
from skinseg.training.losses import custom_objects, unknown_name_message

__all__ = [
    "ACTIVATIONS",
    "build_unet",
    "check_input_size",
    "copy_weights",
    "count_flops",
    "dilation_rates",
    "kernel_sizes",
    "load_model",
    "mish",
    "save_model_atomic",
]

ACTIVATIONS = ("relu", "elu", "gelu", "mish")
"""Activation names accepted by :func:`build_unet`."""


Pair = tuple[int, int]


@keras.saving.register_keras_serializable(package="skinseg")
def mish(x: Any) -> Any:
    """Mish, ``x·tanh(softplus(x))``: used only when ``keras.activations`` has no ``mish``."""
    return x * ops.tanh(ops.softplus(x))


BN_MOMENTUM = 0.9  # see _conv_block


# --- validation ----------------------------------------------------------------------------------------


def check_input_size(height: int, width: int, num_layers: int) -> None:
    """Raise ConfigError unless both sides divide by ``2^(num_layers-1)`` (one halving per max-pool)."""
    _check_positive("num_layers", num_layers)
    step = 2 ** (num_layers - 1)
    for name, size in (("image_height", height), ("image_width", width)):
        _check_positive(name, size)
        if size % step:
            below, above = size // step * step, (size // step + 1) * step
            fix = f"use {below} or {above}" if below else f"use {above}"
            raise ConfigError(
                f"{name} {size} is not divisible by 2^({num_layers}-1)={step} (num_layers {num_layers}); {fix}"
            )


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} {value!r} must be an integer >= 1")


def _check_pair(name: str, value: Pair, *, odd: bool) -> Pair:
    """``value`` as a pair of positive (and, if ``odd``, odd) integers; ConfigError otherwise."""
    pair = tuple(value)
    ok = len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)
    if not ok or (odd and not all(v % 2 for v in pair)):
        rule = "two odd integers >= 1, e.g. (5, 5)" if odd else "two integers >= 1, e.g. (2, 2)"
        raise ConfigError(f"{name} {value!r} must be {rule}")
    return (pair[0], pair[1])


def _check_dropout(dropout_rate: float, num_layers: int) -> None:
    if not 0.0 <= dropout_rate < 1.0:
        raise ConfigError(f"dropout_rate {dropout_rate} must be in [0, 1), e.g. 0.08")
    deepest = dropout_rate * (num_layers - 1)
    if deepest >= 1.0:
        raise ConfigError(
            f"dropout_rate {dropout_rate} gives the deepest level (×{num_layers - 1}) a rate of {deepest:g}, "
            f"which must be < 1; use dropout_rate < {1 / (num_layers - 1):.4g} or fewer num_layers"
        )


def _resolve_activation(name: str) -> str | Callable[[Any], Any]:
    """The Keras activation for ``name`` (case-insensitive); ConfigError with suggestions if unknown."""
    key = str(name).strip().lower()
    if key not in ACTIVATIONS:
        raise ConfigError(unknown_name_message("activation", str(name), ACTIVATIONS))
    if key == "mish" and not hasattr(keras.activations, "mish"):
        return mish
    return key


# --- architecture --------------------------------------------------------------------------------------


def kernel_sizes(base_kernels: Pair, num_layers: int) -> list[Pair]:
    """Kernel size per level: ``base``, ``base-2``, ``base-4``... never below 3 (nor above ``base``)."""
    (kh, kw) = base_kernels
    return [(max(min(kh, 3), kh - 2 * i), max(min(kw, 3), kw - 2 * i)) for i in range(num_layers)]


def dilation_rates(dilation: Pair, num_layers: int) -> list[Pair]:
    """Dilation rate per level: ``d``, ``d-1``, ``d-2``... never below 1."""
    (dh, dw) = dilation
    return [(max(1, dh - i), max(1, dw - i)) for i in range(num_layers)]


def _conv_block(
    x: Any,
    filters: int,
    kernel: Pair,
    dilation: Pair,
    *,
    rate: float,
    activation: str | Callable[[Any], Any],
    batch_norm: bool,
    seed: int | None,
    name: str,
    separable: bool = False,
) -> Any:
    """conv → [BN] → Dropout → conv → [BN], as in every seed UNet level.

    ``separable``: each convolution is depthwise-separable (a per-channel spatial filter, then a 1×1 mix), about
    ``1/k² + 1/filters`` of the multiply-adds of a full ``k×k`` convolution.
    """
    for n in (1, 2):
        conv = layers.SeparableConv2D if separable else layers.Conv2D
        init = {"depthwise_initializer": "he_normal", "pointwise_initializer": "he_normal"} if separable else {}
        x = conv(
            filters,
            kernel,
            dilation_rate=dilation,
            padding="same",
            activation=activation,
            name=f"{name}_conv{n}",
            **(init or {"kernel_initializer": "he_normal"}),
        )(x)
        if batch_norm:
            # momentum 0.9, not Keras' 0.99: on datasets of a few hundred images (tens of steps per epoch) the
            # moving statistics otherwise still carry their initial values after several epochs, and the
            # inference-mode model (what is validated and exported) predicts nonsense.
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{n}")(x)
        if n == 1:
            x = layers.Dropout(rate, seed=seed, name=f"{name}_drop")(x)
    return x


def build_unet(
    *,
    image_height: int,
    image_width: int,
    image_channels: int = 3,
    num_classes: int = 1,
    base_filters: int = 16,
    num_layers: int = 7,
    base_kernels: Pair = (5, 5),
    dilation: Pair = (2, 2),
    dropout_rate: float = 0.08,
    batch_norm: bool = False,
    activation: str = "relu",
    block: str = "standard",
    seed: int | None = None,
) -> keras.Model:
    """Build the seed project's UNet: input ``image`` (H, W, C) pixels 0–255 → output ``mask`` in [0, 1].

    Raises ConfigError for an invalid parameter, e.g. a size not divisible by ``2^(num_layers-1)``.
    With ``seed``, every Dropout layer gets its own seed derived from it, so training is reproducible.
    ``block`` ``"separable"`` makes every convolution depthwise-separable except the first level's, which sees
    only three colour channels (see :func:`_conv_block`).
    """
    if block not in BLOCKS:
        raise ConfigError(unknown_name_message("block", str(block), BLOCKS))
    for name, value in (
        ("image_channels", image_channels),
        ("num_classes", num_classes),
        ("base_filters", base_filters),
    ):
        _check_positive(name, value)
    check_input_size(image_height, image_width, num_layers)
    kernels = kernel_sizes(_check_pair("base_kernels", base_kernels, odd=True), num_layers)
    dilations = dilation_rates(_check_pair("dilation", dilation, odd=False), num_layers)
    _check_dropout(dropout_rate, num_layers)
    common = {"activation": _resolve_activation(activation), "batch_norm": batch_norm}

    def level_seed(offset: int) -> int | None:
        return None if seed is None else seed + offset

    inputs = keras.Input((image_height, image_width, image_channels), dtype="float32", name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    skips = []
    for i in range(num_layers):
        x = _conv_block(
            x,
            base_filters * 2**i,
            kernels[i],
            dilations[i],
            rate=dropout_rate * i,
            seed=level_seed(i),
            name=f"enc{i}",
            separable=block == "separable" and i > 0,
            **common,
        )
        skips.append(x)
        if i < num_layers - 1:
            x = layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)
    for f in range(num_layers - 2, -1, -1):
        filters = base_filters * 2**f
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{f}_up")(x)
        x = layers.Concatenate(name=f"dec{f}_concat")([x, skips[f]])
        x = _conv_block(
            x,
            filters,
            kernels[f],
            dilations[f],
            rate=dropout_rate * f,
            seed=level_seed(num_layers + f),
            name=f"dec{f}",
            separable=block == "separable",
            **common,
        )
    # float32 even under a mixed-precision policy: the probabilities and the loss keep full precision.
    outputs = layers.Conv2D(num_classes, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name="skinseg_unet")


def count_flops(model: keras.Model) -> int:
    """FLOPs (2 × multiply-adds) of the model's convolutions for one input image; biases not counted."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.SeparableConv2D):
            kernels = math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
            total += 2 * math.prod(layer.output.shape[1:3]) * kernels
            continue
        if isinstance(layer, layers.DepthwiseConv2D):  # one k×k filter (× multiplier) per input channel
            total += 2 * math.prod(layer.output.shape[1:3]) * math.prod(layer.kernel.shape)
            continue
        if isinstance(layer, layers.Conv2DTranspose):
            spatial = layer.input.shape[1:3]  # each input pixel scatters one full kernel
        elif isinstance(layer, layers.Conv2D):
            spatial = layer.output.shape[1:3]  # each output pixel gathers one full kernel
        else:
            continue
        if None in spatial:
            raise ValueError(f"count_flops needs a fixed input size; layer {layer.name} has {spatial}")
        total += 2 * spatial[0] * spatial[1] * math.prod(layer.kernel.shape)
    return total


# --- files ---------------------------------------------------------------------------------------------


def load_model(path: str | os.PathLike[str], *, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` model with skinseg's custom losses and metrics; ModelError if it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found; check the path, or train a model to create it")
    if path.suffix != ".keras":
        raise ModelError(f"model file {path} is not a .keras file; pass a model saved by skinseg training")
    try:
        model = keras.saving.load_model(path, custom_objects=custom_objects(), compile=compile)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"model file {path} cannot be loaded ({reason}); it is corrupt or incompatible, retrain it or "
            "restore it from a backup"
        ) from exc
    if not isinstance(model, keras.Model):
        raise ModelError(f"model file {path} holds a {type(model).__name__}, not a Keras model")
    return model


def copy_weights(source: keras.Model, target: keras.Model, *, source_name: str | os.PathLike[str] = "") -> None:
    """Copy every layer's weights from ``source`` into ``target`` (fine-tuning), matched by layer name.

    Raises ConfigError naming the first layer that is missing or has other weight shapes, so a config whose
    ``[model]`` differs from the trained model's is refused before any training step.
    """
    name = str(source_name) or source.name
    fix = "use the same [model] settings (image size aside) as the model was trained with"
    donors = {layer.name: layer for layer in source.layers}
    pending = []
    for layer in target.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        donor = donors.get(layer.name)
        if donor is None:
            raise ConfigError(f"init weights {name}: it has no layer {layer.name!r}; {fix}")
        given = donor.get_weights()
        shapes = [tuple(w.shape) for w in weights]
        if [tuple(w.shape) for w in given] != shapes:
            raise ConfigError(
                f"init weights {name}: layer {layer.name!r} has weights {[tuple(w.shape) for w in given]}, "
                f"this config builds {shapes}; {fix}"
            )
        pending.append((layer, given))
    extra = sorted(set(donors) - {layer.name for layer in target.layers} - {"image"})
    if extra:
        raise ConfigError(f"init weights {name}: layer {extra[0]!r} is not in the model this config builds; {fix}")
    for layer, given in pending:
        layer.set_weights(given)


def save_model_atomic(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """Save ``model`` to ``path`` (``.keras``) so that an interrupted save leaves any previous file intact
    (the runtime's one atomic writer; the temporary name keeps the ``.keras`` suffix Keras requires)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelError(f"cannot save a model to {path}: the file name must end in .keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".keras", fsync=True) as tmp:
        model.save(tmp)
