"""Peak memory of `skinseg export` on the seed toolkit's 31 M-parameter network, and what the export writes.

The network: the seed configuration's UNet (``build_unet`` at 512×512 with the seed's defaults: 16 filters,
7 levels, 5×5 kernels, dilation 2; 31,127,153 parameters, a 125 MB ``.keras`` file) with fixed random weights.
Its biases are set to small random values: an untrained network's zero biases are dropped by grappler's
folding, a trained network's are not, and the graph should be a trained one's.

Each conversion runs in a fresh process, measured like ``/usr/bin/time -v`` (the child's ``ru_maxrss`` from
``wait4``): the whole ``skinseg export MODEL -o OUT`` as users run it, with

- ``now``: the code as it is (``python -m skinseg export``);
- ``previous``: the previous round's conversion, only tf2onnx's optimizers made lean (``_lean_freezing`` off);
- ``stock``: tf2onnx as shipped (``--stock``; about 11 GB, a minute or more).

Then, in this process, each ONNX file against Keras on real photographs (``isic-raw``, resized whole to
512×512; max abs difference of the probabilities) and each file's graph against the first one's (the same
nodes, attributes and initializer values; max abs difference of the outputs).

    python benchmarks/bench_export_memory.py                      # now and previous (about 2 minutes)
    python benchmarks/bench_export_memory.py --stock --markdown docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isic-raw" / "images"
TILE = 512
BEGIN, END = "<!-- bench_export_memory:begin -->", "<!-- bench_export_memory:end -->"

# The child's code before `skinseg export` runs: how each mode converts.
PATCHES = {
    "now": "",
    "previous": "import contextlib; from skinseg.exporters import keras_to_onnx as k; "
    "k._lean_freezing = contextlib.nullcontext",
    "stock": "import functools; from skinseg.exporters import keras_to_onnx as k; "
    "k.convert = functools.partial(k.convert, lean=False)",
}
DESCRIPTIONS = {
    "now": "`skinseg export` (lean freezing and grappler without the weights, lean optimizers)",
    "previous": "previous round (lean optimizers only)",
    "stock": "tf2onnx as shipped",
}


def build_seed_model(path: Path) -> int:
    """Save the seed configuration's network (fixed random weights, small random biases); its parameter count."""
    import keras

    from skinseg.training.model import build_unet

    keras.utils.set_random_seed(0)
    model = build_unet(image_height=TILE, image_width=TILE, seed=0)
    rng = np.random.default_rng(1)
    for weight in model.weights:
        if weight.path.endswith("bias"):
            weight.assign(rng.normal(0.0, 0.05, weight.shape).astype("float32"))
    model.save(path)
    return int(model.count_params())


def export_child(mode: str, model: Path, out: Path) -> dict[str, Any]:
    """Run one export in a fresh process: wall seconds, peak RSS (MB) and the command's own output."""
    code = f"{PATCHES[mode]}\nimport sys\nfrom skinseg.cli import main\nsys.argv[0] = 'skinseg'\nmain()"
    args = [sys.executable, "-c", code, "export", str(model), "--output", str(out)]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:  # pipes could block
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        printed, errors = stdout.read(), stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode}: skinseg export failed:\n{errors[-3000:]}")
    return {"mode": mode, "seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "printed": printed.strip()}


def load_photos(folder: Path, count: int) -> np.ndarray:
    """Up to ``count`` photographs resized whole to TILE×TILE, NHWC float32 RGB 0–255."""
    import cv2

    from skinseg.runtime.imageio import read_image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    if not files:
        raise SystemExit(f"{folder}: no photographs; give a folder with --images")
    return np.stack([cv2.resize(read_image(p), (TILE, TILE), interpolation=cv2.INTER_AREA) for p in files]).astype(
        np.float32
    )


def graph_key(path: Path) -> tuple[list[Any], list[Any]]:
    """What makes two graphs the same whatever their names and node order: ops with attributes, initializers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)

    def value(attribute: Any) -> str:
        v = onnx.helper.get_attribute_value(attribute)
        return repr(numpy_helper.to_array(v).tolist() if isinstance(v, onnx.TensorProto) else v)

    nodes = sorted((n.op_type, sorted((a.name, value(a)) for a in n.attribute)) for n in model.graph.node)
    inits = sorted((tuple(i.dims), numpy_helper.to_array(i).tobytes()) for i in model.graph.initializer)
    return nodes, inits


def parity(model_path: Path, runs: list[dict[str, Any]], photos: np.ndarray) -> None:
    """Fill each run with its max |Keras − ONNX| on ``photos`` and its agreement with the first run's file."""
    import keras
    import onnxruntime as ort

    model = keras.saving.load_model(model_path, compile=False)
    reference = np.concatenate([np.asarray(model(photos[i : i + 2], training=False)) for i in range(0, len(photos), 2)])
    del model
    first_key, first_out = None, None
    for run in runs:
        session = ort.InferenceSession(run["onnx"], providers=["CPUExecutionProvider"])
        out = np.concatenate([session.run(None, {"image": photos[i : i + 2]})[0] for i in range(0, len(photos), 2)])
        run["keras_max_abs_diff"] = float(np.max(np.abs(out.astype(np.float64) - reference)))
        key = graph_key(Path(run["onnx"]))
        if first_key is None:
            first_key, first_out = key, out
        run["same_graph_as_first"] = key == first_key
        run["max_abs_diff_to_first"] = float(np.max(np.abs(out - first_out)))


def table(report: dict[str, Any]) -> str:
    first = report["runs"][0]["mode"]
    lines = [
        f"Machine: {report['machine']}; seed network {report['params']:,} parameters ({report['model_mb']:.0f} MB "
        f".keras), `{report['command']}`; parity on {report['photos']} `isic-raw` photographs at "
        f"{TILE}×{TILE}; one run.",
        "",
        f"| conversion | peak RSS MB | seconds | max abs diff to Keras | same graph as `{first}` |",
        "|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        same = "yes" if run["same_graph_as_first"] else "no"
        lines.append(
            f"| {DESCRIPTIONS[run['mode']]} | {run['peak_rss_mb']:.0f} | {run['seconds']:.1f} | "
            f"{run['keras_max_abs_diff']:.2e} | {same} (outputs differ by {run['max_abs_diff_to_first']:.1e}) |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, block: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    generated = f"{BEGIN}\n{block}{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + generated + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + f"\n\n{generated}\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stock", action="store_true", help="also tf2onnx as shipped (about 11 GB of memory)")
    ap.add_argument("--images", type=Path, default=DATA, help="photographs for the parity check (isic-raw)")
    ap.add_argument("--count", type=int, default=8, help="how many photographs (default 8)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "skinseg-bench-export")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--markdown", type=Path, help="replace the bench_export_memory block of this file")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    model_path = args.work / "seed.keras"
    params_file = args.work / "seed.params"
    if not model_path.is_file() or not params_file.is_file():  # built in a child: this process stays small
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench_export_memory as b; "
            f"open({str(params_file)!r}, 'w').write(str(b.build_seed_model(b.Path({str(model_path)!r}))))"
        )
        subprocess.run([sys.executable, "-c", code], check=True, stderr=subprocess.DEVNULL)
    photos = load_photos(args.images, args.count)

    modes = ["now", "previous"] + (["stock"] if args.stock else [])
    runs = []
    for mode in modes:
        run = export_child(mode, model_path, args.work / f"seed_{mode}.onnx")
        run["onnx"] = str(args.work / f"seed_{mode}.onnx")
        print(f"{mode}: {run['peak_rss_mb']:.0f} MB peak RSS, {run['seconds']:.1f} s; {run['printed']}", flush=True)
        runs.append(run)
    parity(model_path, runs, photos)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "params": int(params_file.read_text()),
        "model_mb": model_path.stat().st_size / 1e6,
        "command": f"skinseg export {model_path.name} --output seed.onnx",
        "photos": len(photos),
        "runs": runs,
    }
    block = table(report)
    print(block)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    if args.markdown:
        write_markdown(args.markdown, block)


if __name__ == "__main__":
    main()
