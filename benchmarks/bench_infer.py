"""Tiled inference speed: the seed toolkit's way against skinseg's, side by side on one machine.

Usage::

    python benchmarks/bench_infer.py [--quick] [--out benchmarks/results.json] [--markdown docs/performance.md]
                                     [--threads N] [--levers] [--ov-path DIR] [--work DIR]

What runs (each configuration in a fresh subprocess, so peak RSS is its own):

- ``seed baseline``: :mod:`seed_baseline` — Keras ``model.predict`` one 512×512 tile at a time on the seed's grid
  of 512-px cells with 64-px margins (crops resized to 512), at native resolution;
- ``skinseg fp32``/``int8``/other providers on the **same grid**: ``runtime.Segmenter`` with ``scale="native"``,
  tile 512, ``overlap=0`` (stride 512 = the seed's cell size, so both run ``ceil(W/512)·ceil(H/512)`` model
  calls on 512×512 tiles: equal work), batch 1, no mask post-processing (the seed has none);
- ``skinseg default``: the runtime's own settings (NCHW model, overlap 0.25 with Gaussian blending, batch 4,
  its default mask post-processing), fp32 and int8;
- the reference model (``runtime/models/skinseg_default.onnx`` or ``runs/reference/model.onnx``), if present.

Every run decodes the file, segments it and writes the mask PNG; the figures are seconds per image, megapixels
and tiles per second, achieved GFLOPS (the model's Conv/ConvTranspose FLOPs counted from the ONNX graph, see
:func:`conv_flops`), the share of the machine's fp32 matrix-multiply peak measured in the same run, the time
per phase, peak RSS (``VmHWM``) and mask IoU against the fp32 run. ``--levers`` adds the one-lever-at-a-time
measurements (threads, layout, dilation rewrite, tile size, batch, arena, int8, OpenVINO, decode, PNG writing,
onnxruntime profile). Models are built with fixed random weights (speed does not depend on them) and cached
in ``--work``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skinseg.runtime.defaults import DEFAULT_BATCH_SIZE

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEED_ARCH: dict[str, Any] = {
    "image_height": 512,
    "image_width": 512,
    "base_filters": 16,
    "num_layers": 7,
    "base_kernels": (5, 5),
    "dilation": (2, 2),
    "dropout_rate": 0.08,
}
TINY_ARCH: dict[str, Any] = {**SEED_ARCH, "base_filters": 4, "num_layers": 4, "base_kernels": (3, 3)}
"""A small UNet for developing this script (``--tiny``); its numbers mean nothing."""
TILE = 512
SEED_MARGIN = 64
DATA = ROOT.parent / "shared" / "data"  # the default data folders; --images and --calibration choose others
SYNTH_SIZE = (6600, 4400)
REFERENCE_MODELS = (ROOT / "runtime/models/skinseg_default.onnx", ROOT / "runs/reference/model.onnx")
REFERENCE_KERAS = ROOT / "runs/reference/best_model.keras"
MARK_BEGIN, MARK_END = "<!-- bench_infer:begin -->", "<!-- bench_infer:end -->"


# ================================================================================================ helpers


def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info() -> dict[str, Any]:
    """CPU model, cores and the SIMD flags that matter for inference, plus library versions."""
    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info["model_name"] = fields.get("Model name", platform.processor())
    info["cpu_family"] = fields.get("CPU family", "")
    info["cores"] = fields.get("Core(s) per socket", "")
    info["threads_per_core"] = fields.get("Thread(s) per core", "")
    info["hypervisor"] = fields.get("Hypervisor vendor", "")
    info["l2"], info["l3"] = fields.get("L2 cache", ""), fields.get("L3 cache", "")
    flags = set(fields.get("Flags", "").split())
    notable = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16")
    info["flags"] = [f for f in notable if f in flags] + [f for f in sorted(flags) if f.startswith("amx")]
    versions = {}
    for module in ("numpy", "onnx", "onnxruntime", "cv2", "PIL"):
        with contextlib.suppress(Exception):
            versions[module] = __import__(module).__version__
    versions["tensorflow"] = _dist_version("tensorflow")
    versions["keras"] = _dist_version("keras")
    info["versions"] = versions
    return info


def _arch_text(arch: dict[str, Any]) -> str:
    return "build_unet(" + ", ".join(f"{k}={v}" for k, v in arch.items()) + ")"


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def conv_flops(onnx_path: str | os.PathLike[str], tile: tuple[int, int] = (TILE, TILE), batch: int = 1) -> int:
    """FLOPs (2 × multiply-adds) of every ``Conv`` and ``ConvTranspose`` for one ``batch`` of ``tile`` inputs.

    The input's dynamic dimensions are fixed to ``batch × tile`` and ``onnx.shape_inference`` gives every
    tensor's shape. ``Conv`` (weights ``[Cout, Cin/g, kh, kw]``): each output element gathers ``Cin/g·kh·kw``
    products. ``ConvTranspose`` (weights ``[Cin, Cout/g, kh, kw]``): each input element scatters
    ``Cout/g·kh·kw`` products. Biases, activations, pooling and concatenation are not counted. Works on QDQ
    (int8) graphs too: the weight then comes out of a ``DequantizeLinear`` with the same shape.
    """
    import onnx

    model = onnx.load(os.fspath(onnx_path))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    nchw = dims[1].dim_value == 3
    values = [batch, 3, *tile] if nchw else [batch, *tile, 3]
    for dim, value in zip(dims, values, strict=True):
        dim.Clear()
        dim.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {i.name: list(i.dims) for i in inferred.graph.initializer}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        shapes[info.name] = [d.dim_value for d in info.type.tensor_type.shape.dim]
    total = 0
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        weight = shapes.get(node.input[1])
        tensor = shapes.get(node.output[0] if node.op_type == "Conv" else node.input[0])
        if not weight or not tensor or 0 in tensor or 0 in weight:
            raise ValueError(f"{onnx_path}: shape inference left {node.op_type} {node.name} without shapes")
        total += 2 * math.prod(tensor) * math.prod(weight[1:])
    return total


def mask_iou(a: Any, b: Any, region: Any = None) -> float:
    """IoU of two 0/255 masks (the runtime's one IoU), optionally only inside the boolean ``region``."""
    from skinseg.runtime.metrics import mask_iou as iou

    return iou(a, b) if region is None else iou(a[region], b[region])


def matched_region(width: int, height: int, tile: int = TILE) -> Any:
    """Pixels where skinseg's ``overlap=0`` grid and the seed's margin-free grid give the same single tile.

    Both grids start tiles at multiples of ``tile``; skinseg moves its last row and column flush with the
    border (overlapping the one before, so those pixels are blended) where the seed lets its last cell run
    past the border (black padding). Pixels covered by exactly one skinseg tile that starts on the seed's
    grid see identical model inputs.
    """
    import numpy as np

    from skinseg.runtime.tiling import plan_tiles

    count = np.zeros((height, width), np.uint8)
    on_grid = np.zeros((height, width), bool)
    for s in plan_tiles(height, width, tile, 0.0):
        count[s.y : s.y + s.h, s.x : s.x + s.w] += 1
        if s.y % tile == 0 and s.x % tile == 0 and (s.h, s.w) == (tile, tile):
            on_grid[s.y : s.y + s.h, s.x : s.x + s.w] = True
    return on_grid & (count == 1)


# ================================================================================================ configurations


@dataclass
class RunSpec:
    """One benchmark configuration on one image."""

    name: str
    engine: str  # "seed" or "skinseg"
    model: str  # key into the prepared models
    image: str  # key into the prepared images
    group: str = "equal grid"  # "equal grid" (same tiles as the seed) or "own settings"
    overlap: float = 0.0
    batch: int = 1
    post: bool = False  # the runtime's default post-processing (else none)
    margin: int = SEED_MARGIN
    device: str = "cpu"  # "cpu" or "openvino"
    ov_precision: str = ""  # OpenVINO INFERENCE_PRECISION_HINT ("f32", "bf16"); "" = the plugin's default
    tile: int = TILE
    scale: str = "native"
    repeat: int = 1
    iou_ref: str = ""  # name of the run whose mask is the reference for IoU
    extra: dict[str, Any] = field(default_factory=dict)


def plan_runs(args: argparse.Namespace, models: dict[str, Any], images: dict[str, Any], ov: bool) -> list[RunSpec]:
    """The configurations to run, in order (references before the runs compared with them).

    The real image gets every configuration. The 6600×4400 one (not with ``--quick``) gets only skinseg's own
    settings, fp32 and int8 (plus the seed baseline with ``--big-baseline``): time and peak RSS at that size.
    """
    runs: list[RunSpec] = []
    for image in images:
        big = image.startswith("synth")
        if big and args.quick:
            continue
        r = 1 if big or args.quick else args.repeat
        fp32_ref = f"skinseg fp32 NCHW [{image}]"
        if not big or args.big_baseline:
            runs.append(RunSpec("seed baseline (Keras, margins 64)", "seed", "keras", image, repeat=r))
        if not big:
            if not args.quick:
                runs.append(RunSpec("seed, no margins (IoU check)", "seed", "keras", image, margin=0))
            runs.append(RunSpec("skinseg fp32 NCHW", "skinseg", "fp32_nchw", image, repeat=r))
            runs.append(RunSpec("skinseg fp32 NHWC", "skinseg", "fp32_nhwc", image, repeat=r, iou_ref=fp32_ref))
            runs.append(RunSpec("skinseg int8 NCHW", "skinseg", "int8_nchw", image, repeat=r, iou_ref=fp32_ref))
        if ov and not big:
            ov_runs = [("OpenVINO fp32", "fp32_nchw", "f32"), ("OpenVINO bf16", "fp32_nchw", "bf16")]
            if not args.quick:
                ov_runs.append(("OpenVINO int8", "int8_nchw", ""))
            for name, model, precision in ov_runs:
                runs.append(
                    RunSpec(f"skinseg {name}", "skinseg", model, image, device="openvino", ov_precision=precision,
                            repeat=r, iou_ref=fp32_ref)
                )  # fmt: skip
        own = {"group": "own settings", "overlap": 0.25, "batch": DEFAULT_BATCH_SIZE, "post": True, "repeat": r}
        default_ref = f"skinseg default fp32 [{image}]"
        runs.append(RunSpec("skinseg default fp32", "skinseg", "fp32_nchw", image, **own))
        runs.append(RunSpec("skinseg default int8", "skinseg", "int8_nchw", image, iou_ref=default_ref, **own))
        if not args.quick:  # the batch lever: batch 4 against the default batch (1)
            four = {**own, "batch": 4}
            runs.append(RunSpec("skinseg default fp32, batch 4", "skinseg", "fp32_nchw", image, iou_ref=default_ref,
                                **four))  # fmt: skip
            runs.append(RunSpec("skinseg default int8, batch 4", "skinseg", "int8_nchw", image, iou_ref=default_ref,
                                **four))  # fmt: skip
        if "reference" in models and not args.quick:
            ref = {**own, "scale": "", "tile": 0}
            runs.append(RunSpec("reference fp32, own settings", "skinseg", "reference", image, **ref))
            if "reference_int8" in models:
                ref_id = f"reference fp32, own settings [{image}]"
                runs.append(RunSpec("reference int8, own settings", "skinseg", "reference_int8", image, iou_ref=ref_id,
                                    **ref))  # fmt: skip
            if not big:  # more tiles for a meaningful int8 IoU: long side 1024, 256-px tiles
                ref = {**ref, "scale": "1024"}
                runs.append(RunSpec("reference fp32, scale 1024", "skinseg", "reference", image, **ref))
                if "reference_int8" in models:
                    ref_id = f"reference fp32, scale 1024 [{image}]"
                    runs.append(RunSpec("reference int8, scale 1024", "skinseg", "reference_int8", image,
                                        iou_ref=ref_id, **ref))  # fmt: skip
    return runs


# ================================================================================================ workers


def _phases(timings: dict[str, float], write: float, total: float) -> dict[str, float]:
    """The pipeline's own phase timings (``Result.timings``) in this report's phases, adding up to ``total``."""
    out = {
        "decode": timings.get("decode", 0.0),
        "resize": timings.get("resize", 0.0) + timings.get("preprocess", 0.0),
        "tiling/blend": timings.get("blend", 0.0),
        "model": timings.get("model", 0.0),
        "post": timings.get("postprocess", 0.0),
        "write": write,
    }
    out["other"] = max(0.0, total - sum(out.values()))
    return out


def _ov_session(model_path: str, threads: int, precision: str) -> Any:
    """An onnxruntime session on the OpenVINO EP (CPU device) with an optional inference precision hint.

    onnxruntime falls back to the CPU EP when the OpenVINO EP fails to start; that is an error here.
    """
    import onnxruntime as ort

    options: dict[str, str] = {"device_type": "CPU", "num_of_threads": str(threads)}
    if precision:  # the EP takes the OpenVINO properties as a JSON string
        options["load_config"] = json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": precision}})
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_path, so, providers=[("OpenVINOExecutionProvider", options)])
    if sess.get_providers()[0] != "OpenVINOExecutionProvider":
        raise RuntimeError(f"the OpenVINO EP did not start with {options} (onnxruntime fell back to the CPU EP)")
    return sess


def worker_skinseg(task: dict[str, Any]) -> dict[str, Any]:
    """Segment one image file with ``runtime.Segmenter`` ``repeat`` times; keep the fastest run."""
    import numpy as np

    from skinseg.runtime.imageio import write_png_atomic
    from skinseg.runtime.segmenter import OnnxBackend, Segmenter

    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"threads": task["threads"], "overlap": task["overlap"], "batch_size": task["batch"]}
    if not task["post"]:  # with post-processing: the runtime's own defaults
        kwargs.update(keep_largest=False, fill_holes=False)
    if task["tile"]:
        kwargs["tile"] = task["tile"]
    if task["scale"]:
        kwargs["scale"] = task["scale"]
    if task["device"] == "openvino":
        backend = OnnxBackend(task["model_path"], session=_ov_session(task["model_path"], task["threads"],
                                                                      task["ov_precision"]))  # fmt: skip
        seg = Segmenter(backend, **kwargs)
    else:
        seg = Segmenter(task["model_path"], device="cpu", **kwargs)
    provider = seg.provider
    th, tw = seg.tile
    seg.predict_tiles(np.full((seg.batch_size, th, tw, 3), 128.0, np.float32))  # warm-up (and OV compile)
    load_s = time.perf_counter() - t0
    rss_loaded = peak_rss_mb()  # model, session and one warm-up batch; the rest is the image's
    best: dict[str, Any] | None = None
    for _ in range(task["repeat"]):
        cpu0 = time.process_time()
        start = time.perf_counter()
        result = seg.segment_file(task["image_path"])
        t1 = time.perf_counter()
        write_png_atomic(task["mask_out"], result.mask, bits=1)
        write = time.perf_counter() - t1
        total = time.perf_counter() - start
        if best is None or total < best["seconds"]:
            best = {"seconds": total, "phases": _phases(result.timings, write, total), "tiles": result.tiles,
                    "cpu_util": (time.process_time() - cpu0) / total / task["threads"]}  # fmt: skip
    assert best is not None
    best.update(provider=provider, load_s=load_s, batch=seg.batch_size, tile=list(seg.tile), rss_loaded_mb=rss_loaded,
                working_size=list(result.working_size), rss_mb=peak_rss_mb())  # fmt: skip
    return best


def worker_seed(task: dict[str, Any]) -> dict[str, Any]:
    """Segment one image file the seed's way (Keras, batch 1) ``repeat`` times; keep the fastest run."""
    import cv2
    import numpy as np

    t0 = time.perf_counter()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(task["threads"])
    import keras
    from seed_baseline import keras_predict_one, seed_segment_file

    model = keras.saving.load_model(task["model_path"], compile=False)
    keras_predict_one(model, np.full((TILE, TILE, 3), 128, np.uint8))  # warm-up: builds the predict function
    load_s = time.perf_counter() - t0
    best: dict[str, Any] | None = None
    for _ in range(task["repeat"]):
        cpu0 = time.process_time()
        start = time.perf_counter()
        result = seed_segment_file(model, task["image_path"], margin=task["margin"])
        t1 = time.perf_counter()
        cv2.imwrite(task["mask_out"], result.mask)  # the seed writes an 8-bit grey image with cv2.imwrite
        total = time.perf_counter() - start
        if best is None or total < best["seconds"]:
            phases = {"decode": result.phases.get("decode", 0.0), "resize": 0.0,
                      "tiling/blend": result.phases.get("tiling", 0.0) + result.phases.get("blend", 0.0),
                      "model": result.phases.get("model", 0.0), "post": result.phases.get("post", 0.0),
                      "write": time.perf_counter() - t1}  # fmt: skip
            phases["other"] = max(0.0, total - sum(phases.values()))
            best = {"seconds": total, "phases": phases, "tiles": result.tiles,
                    "cpu_util": (time.process_time() - cpu0) / total / task["threads"]}  # fmt: skip
    assert best is not None
    best.update(provider="TensorFlow (Keras model.predict)", load_s=load_s, batch=1, tile=[TILE, TILE],
                rss_mb=peak_rss_mb())  # fmt: skip
    return best


def worker_peak(task: dict[str, Any]) -> dict[str, Any]:
    """fp32 matrix-multiply peak with ``threads`` threads: numpy (OpenBLAS) and onnxruntime (MLAS) 2048²."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n, reps = task.get("n", 2048), task.get("reps", 16)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)

    def best_gflops(fn: Callable[[], Any]) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 2.0 * n**3 / min(times) / 1e9

    out = {"numpy_gflops": best_gflops(lambda: a @ b)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "mm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = task["threads"]
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out["ort_gflops"] = best_gflops(lambda: sess.run(None, {"a": a, "b": b}))
    out["peak_gflops"] = max(out["numpy_gflops"], out["ort_gflops"])
    out["onnx"] = onnx.__version__
    return out


def worker_prepare(task: dict[str, Any]) -> dict[str, Any]:
    """Build (or reuse) the seed-configuration models and the benchmark images under ``work``."""
    import cv2
    import numpy as np

    from skinseg.runtime.imageheaders import image_size

    work = Path(task["work"])
    arch = TINY_ARCH if task.get("tiny") else SEED_ARCH
    (work / "models").mkdir(parents=True, exist_ok=True)
    (work / "images").mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"models": {}, "images": {}, "notes": []}

    # ---- images
    isic_dir = Path(task["images_dir"])
    if isic_dir.is_dir():
        files = sorted(p for p in isic_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            widest = max(files, key=lambda p: image_size(p)[0])
            w, h = image_size(widest)
            out["images"][f"isic {w}x{h}"] = {"path": str(widest), "size": [w, h], "name": widest.name}
    if "isic" not in " ".join(out["images"]):
        out["notes"].append(f"{isic_dir} is absent: the real-image runs were skipped")
    if not task["quick"]:
        w, h = SYNTH_SIZE
        path = work / "images" / f"synth_{w}x{h}.jpg"
        if not path.is_file():
            from skinseg.data.synth import synthesize

            image, _ = synthesize(w, h, np.random.default_rng(0))
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        out["images"][f"synth {w}x{h}"] = {"path": str(path), "size": [w, h], "name": path.name}

    # ---- models
    models = work / "models"
    paths = {
        "keras": models / "seed.keras",
        "fp32_nhwc": models / "seed_fp32_nhwc.onnx",
        "fp32_nchw": models / "seed_fp32_nchw.onnx",
        "int8_nchw": models / "seed_int8_nchw.onnx",
        "fp32_norewrite": models / "seed_fp32_nhwc_norewrite.onnx",
    }
    if task.get("rebuild") or not all(p.is_file() for p in paths.values()):
        _build_models(paths, work, arch)
    out["models"] = {k: str(v) for k, v in paths.items()}
    reference = next((r for r in REFERENCE_MODELS if r.is_file()), None)
    if reference is not None:
        out["models"]["reference"] = str(reference)
        int8 = reference.with_name(reference.stem + ".int8.onnx")
        if int8.is_file():
            out["models"]["reference_int8"] = str(int8)
    elif REFERENCE_KERAS.is_file():
        out["models"].update(_export_reference(models, Path(task["calibration_dir"])))
        out["notes"].append(
            f"no reference ONNX model: {REFERENCE_KERAS.relative_to(ROOT)} exported by the benchmark (NCHW, "
            "metadata tile 256, scale 'tile') and quantized to int8 (calibrated on 16 isic-256 images)"
        )
    else:
        out["notes"].append("no reference model (runtime/models/skinseg_default.onnx, runs/reference/): skipped")
    meta = json.loads((models / "build.json").read_text())
    out["keras_params"], out["keras_flops"], out["arch"] = meta["params"], meta["flops"], meta["arch"]
    return out


def _export_reference(models: Path, calibration_dir: Path) -> dict[str, str]:
    """Export the trained reference ``.keras`` (fp32 NCHW) and quantize it (int8), once, into ``models``."""
    import cv2
    import numpy as np

    from skinseg.exporters.keras_to_onnx import export_onnx
    from skinseg.exporters.quantize import quantize_int8
    from skinseg.runtime.metadata import ModelMetadata, Scale

    fp32, int8 = models / "reference_fp32_nchw.onnx", models / "reference_int8_nchw.onnx"
    stamp = str(REFERENCE_KERAS.stat().st_mtime_ns)
    stamp_file = models / "reference.stamp"
    if not (fp32.is_file() and int8.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp):
        meta = ModelMetadata(tile_size=(256, 256), train_scale=Scale("tile"))
        export_onnx(REFERENCE_KERAS, fp32, metadata=meta, layout="nchw")
        files = sorted(calibration_dir.glob("*.jpg"))[:16] if calibration_dir.is_dir() else []
        images = [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (256, 256), interpolation=cv2.INTER_AREA) for f in files]
        if not images:
            from skinseg.data.synth import synthesize

            rng = np.random.default_rng(3)
            images = [synthesize(256, 256, rng)[0] for _ in range(16)]
        quantize_int8(fp32, int8, images)
        stamp_file.write_text(stamp)
    return {"reference": str(fp32), "reference_int8": str(int8)}


def _spread_logits(model: Any, spread: float = 4.0) -> None:
    """Rescale the final 1×1 convolution so the logits on a synthetic image have median 0 and std ``spread``.

    A randomly initialised UNet outputs probabilities within a few hundredths of 0.5 everywhere, so its
    masks flip on rounding noise and mask IoU between two runtimes means nothing. Spreading the logits gives
    decisive, content-dependent masks; it changes no shape and so no speed.
    """
    import keras
    import numpy as np

    from skinseg.data.synth import synthesize

    head = model.get_layer("mask")
    features = keras.Model(model.inputs, head.input)
    image, _ = synthesize(TILE * 2, TILE, np.random.default_rng(2))
    batch = np.stack([image[:, :TILE], image[:, TILE:]]).astype(np.float32)
    kernel, bias = head.get_weights()
    logits = np.asarray(features(batch, training=False)) @ kernel.reshape(-1, kernel.shape[-1])
    scale = spread / max(float(logits.std()), 1e-12)
    head.set_weights([kernel * scale, (bias - float(np.median(logits))) * scale])


def _build_models(paths: dict[str, Path], work: Path, arch: dict[str, Any]) -> None:
    """The seed's UNet with fixed random weights: .keras, fp32 NHWC/NCHW ONNX, int8 QDQ NCHW, and an NHWC
    export without skinseg's dilated-convolution rewrite (the lever it removes)."""
    import keras
    import numpy as np

    import skinseg.exporters.graph as graph
    from skinseg.exporters.keras_to_onnx import convert, export_onnx, save_model
    from skinseg.exporters.quantize import quantize_int8
    from skinseg.runtime.metadata import ModelMetadata, Scale
    from skinseg.training.model import build_unet, count_flops

    keras.utils.set_random_seed(0)
    model = build_unet(**arch, seed=0)
    _spread_logits(model)
    model.save(paths["keras"])
    meta = ModelMetadata(tile_size=(TILE, TILE), train_scale=Scale("native"))
    for key, layout in (("fp32_nhwc", "nhwc"), ("fp32_nchw", "nchw")):
        export_onnx(model, paths[key], metadata=meta, layout=layout)
    original = graph.rewrite_dilated_convs
    graph.rewrite_dilated_convs = lambda g, ops: ops  # tf2onnx's own handling only
    try:
        proto = convert(model, opset=17, layout="nhwc")
    finally:
        graph.rewrite_dilated_convs = original
    graph.set_metadata(proto, "skinseg", meta.to_json())
    save_model(proto, paths["fp32_norewrite"])
    # Calibration: 512-px tiles of synthetic dermoscopy images (what the runtime will see).
    from skinseg.data.synth import synthesize

    rng = np.random.default_rng(1)
    tiles = []
    for _ in range(3):
        image, _ = synthesize(1024, 768, rng)
        tiles += [image[y : y + TILE, x : x + TILE] for y, x in ((0, 0), (256, 512))]
    quantize_int8(paths["fp32_nchw"], paths["int8_nchw"], tiles)
    (work / "models" / "build.json").write_text(
        json.dumps({"params": int(model.count_params()), "flops": int(count_flops(model)), "arch": _arch_text(arch)})
    )


# ------------------------------------------------------------------------------------------------ levers


def _session(
    path: str, threads: int, *, arena: bool = True, profile: str = "", level: str = "all", spin: bool = True
) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = arena
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,  # includes the NCHWc (blocked) layout transformer
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def tile_seconds(sess: Any, *, tile: int = TILE, batch: int = 1, reps: int = 3) -> float:
    """Best seconds of ``reps`` ``session.run`` calls on a random ``batch × tile²`` input (after a warm-up)."""
    import numpy as np

    inp = sess.get_inputs()[0]
    nchw = inp.shape[1] == 3
    shape = (batch, 3, tile, tile) if nchw else (batch, tile, tile, 3)
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    sess.run(None, {inp.name: x})
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, {inp.name: x})
        best = min(best, time.perf_counter() - t0)
    return best


def worker_levers(task: dict[str, Any]) -> dict[str, Any]:
    """One lever at a time, model-only timings on 512×512 tiles (unless stated) — see docs/performance.md."""
    models, threads, reps = task["models"], task["threads"], task["reps"]
    flops = task["flops_per_tile"]
    out: dict[str, Any] = {}

    def row(key: str, seconds: float, pixels: int = TILE * TILE, work: float = 1.0, **extra: Any) -> None:
        out[key] = {"ms": seconds * 1e3, "mp_s": pixels / seconds / 1e6, "gflops": flops * work / seconds / 1e9,
                    **extra}  # fmt: skip

    for key in ("fp32_nchw", "fp32_nhwc", "fp32_norewrite", "int8_nchw"):
        for n in sorted({1, threads}):
            row(f"model {key}, {n} thread(s)", tile_seconds(_session(models[key], n), reps=reps))
    sess = _session(models["fp32_nchw"], threads)
    for batch in (2, 4):
        s = tile_seconds(sess, batch=batch, reps=max(1, reps - 1))
        row(f"fp32_nchw batch {batch} (per tile)", s / batch, work=1.0)
    for tile in (256, 384, 768):
        s = tile_seconds(sess, tile=tile, reps=reps)
        row(f"fp32_nchw tile {tile}", s, pixels=tile * tile, work=(tile / TILE) ** 2)
    for level in ("extended", "off"):
        s = tile_seconds(_session(models["fp32_nchw"], threads, level=level), reps=reps)
        row(f"fp32_nchw graph optimizations {level}", s)
    row("fp32_nchw, no intra-op spinning", tile_seconds(_session(models["fp32_nchw"], threads, spin=False), reps=reps))
    out["profile"] = {k: profile_ops(models[k], threads, task["work"]) for k in ("fp32_nchw", "int8_nchw")}
    out.update(io_levers(task["images"], task["work"], task.get("masks", {})))
    return out


def profile_ops(model: str, threads: int, work: str) -> dict[str, Any]:
    """onnxruntime profiling of one 512×512 tile: share of node time per op type (top 8)."""
    prefix = str(Path(work) / f"profile_{Path(model).stem}")
    sess = _session(model, threads, profile=prefix)
    tile_seconds(sess, reps=2)
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    per_op: dict[str, float] = defaultdict(float)
    runs = 0
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e.get("args", {}).get("op_name", "?")] += e["dur"]
        elif e.get("cat") == "Session" and e.get("name") == "model_run":
            runs += 1
    total = sum(per_op.values()) or 1.0
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:8]
    Path(path).unlink(missing_ok=True)
    return {"runs": runs, "node_ms_per_run": total / 1e3 / max(runs, 1), "share": {k: v / total for k, v in top}}


def io_levers(images: dict[str, Any], work: str, masks: dict[str, str]) -> dict[str, Any]:
    """Decode (full vs libjpeg-reduced, OpenCV vs PIL) and mask writing (8-bit vs 1-bit PNG) on each image:
    a smooth ellipse (what a trained model gives) and, where ``masks`` has one, a benchmark run's own mask (the
    random-weight model's, ragged: the worst case for PNG compression)."""
    import cv2
    import numpy as np
    from PIL import Image

    from skinseg.runtime.imageio import read_image, write_png_atomic

    out: dict[str, Any] = {}
    for key, info in images.items():
        path = info["path"]
        for reduce in (1, 2, 4):
            t0 = time.perf_counter()
            image = read_image(path, reduce=reduce)
            out[f"decode {key} reduce {reduce} (OpenCV)"] = {"ms": (time.perf_counter() - t0) * 1e3}
        t0 = time.perf_counter()
        with Image.open(path) as im:
            im.convert("RGB").load()
        out[f"decode {key} (PIL, the seed's reader)"] = {"ms": (time.perf_counter() - t0) * 1e3}
        image = read_image(path)
        h, w = image.shape[:2]
        yy, xx = np.ogrid[:h, :w]
        ellipse = np.where((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2 < 1, 255, 0)
        candidates = {"ellipse mask": ellipse.astype(np.uint8)}
        if key in masks and Path(masks[key]).is_file():
            candidates["random-model mask"] = cv2.imread(masks[key], cv2.IMREAD_GRAYSCALE)
        target = Path(work) / "io_mask.png"
        for kind, mask in candidates.items():
            for label, kwargs in (("8-bit PNG, zlib 3", {"bits": 8}), ("1-bit PNG, zlib 9", {"bits": 1}),
                                  ("1-bit PNG, zlib 1", {"bits": 1, "compression": 1})):  # fmt: skip
                t0 = time.perf_counter()
                write_png_atomic(target, mask, **kwargs)
                out[f"write {key} {kind}, {label}"] = {
                    "ms": (time.perf_counter() - t0) * 1e3,
                    "kb": target.stat().st_size / 1e3,
                }
        target.unlink(missing_ok=True)
    return out


def worker_arena(task: dict[str, Any]) -> dict[str, Any]:
    """Per-tile time and peak RSS of a fresh session with the CPU memory arena on or off."""
    sess = _session(task["model_path"], task["threads"], arena=task["arena"])
    s = tile_seconds(sess, batch=task["batch"], reps=2)
    return {"ms_per_tile": s / task["batch"] * 1e3, "rss_mb": peak_rss_mb()}


def worker_ov_tile(task: dict[str, Any]) -> dict[str, Any]:
    """Model-only per-tile time on the OpenVINO EP for each precision hint."""
    out = {}
    for precision in task["precisions"]:
        sess = _ov_session(task["model_path"], task["threads"], precision)
        out[precision or "default"] = {"ms": tile_seconds(sess, reps=task["reps"]) * 1e3}
    return out


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "skinseg": worker_skinseg,
    "seed": worker_seed,
    "peak": worker_peak,
    "prepare": worker_prepare,
    "levers": worker_levers,
    "arena": worker_arena,
    "ov_tile": worker_ov_tile,
}


# ================================================================================================ orchestration


def run_worker(task: dict[str, Any], threads: int, *, ort_path: str = "", timeout: float = 1200) -> dict[str, Any]:
    """Run ``task`` in a fresh Python process; return its result dict (``{"error": ...}`` on failure)."""
    env = dict(os.environ)
    env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore", "TF_ENABLE_ONEDNN_OPTS": "1"})
    paths = [p for p in (ort_path, str(Path(__file__).parent), str(ROOT)) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(task)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["process_s"] = time.perf_counter() - t0
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
    return {"error": f"worker exited {proc.returncode}: " + " | ".join(tail)}


def summarize(spec: RunSpec, result: dict[str, Any], image: dict[str, Any], flops: int, peak: float) -> dict[str, Any]:
    """Derived figures for one run."""
    w, h = image["size"]
    seconds = result["seconds"]
    tiles = result["tiles"]
    work = flops * tiles * ((spec.tile or TILE) / TILE) ** 2 if not spec.model.startswith("reference") else None
    model_s = result["phases"]["model"]
    row = {
        "seconds": seconds,
        "mp_per_s": w * h / seconds / 1e6,
        "tiles_per_s": tiles / seconds,
        "tiles": tiles,
        "gflops": work / seconds / 1e9 if work else None,
        "model_gflops": work / model_s / 1e9 if work and model_s > 0 else None,
        "rss_mb": result["rss_mb"],
        "phase_share": {k: v / seconds for k, v in result["phases"].items()},
    }
    row["model_peak_fraction"] = row["model_gflops"] / peak if row["model_gflops"] and peak else None
    return row


def compute_ious(results: list[dict[str, Any]], images: dict[str, Any]) -> None:
    """Mask IoU of each run against its reference run (and the grid-matched seed comparison)."""
    import cv2

    by_name = {r["id"]: r for r in results if "error" not in r["result"]}

    def load(run: dict[str, Any]) -> Any:
        return cv2.imread(run["mask"], cv2.IMREAD_GRAYSCALE)

    for run in results:
        if "error" in run["result"]:
            continue
        ref = by_name.get(run["spec"]["iou_ref"])
        if ref is not None:
            run["iou"] = mask_iou(load(run), load(ref))
    for key, info in images.items():
        fp32 = by_name.get(f"skinseg fp32 NCHW [{key}]")
        seed = by_name.get(f"seed baseline (Keras, margins 64) [{key}]")
        seed0 = by_name.get(f"seed, no margins (IoU check) [{key}]")
        if fp32 is None:
            continue
        if seed is not None:
            seed["iou_vs_skinseg_fp32"] = mask_iou(load(seed), load(fp32))
        if seed0 is not None:
            w, h = info["size"]
            region = matched_region(w, h)
            seed0["iou_vs_skinseg_fp32_matched"] = mask_iou(load(seed0), load(fp32), region)
            seed0["matched_fraction"] = float(region.mean())
            seed0["iou_vs_skinseg_fp32"] = mask_iou(load(seed0), load(fp32))


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def table(results: list[dict[str, Any]], peak: float) -> str:
    """The results as a markdown table."""
    head = ("| image | configuration | grid | provider | s/image | MP/s | tiles/s | ×seed | GFLOPS (model) | "
            "% peak | model % | decode+blend+write % | peak RSS MB (after load) | IoU | CPU use |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base: dict[str, float] = {}
    for run in results:
        if run["spec"]["engine"] == "seed" and run["spec"]["margin"] == SEED_MARGIN and "error" not in run["result"]:
            base[run["spec"]["image"]] = run["row"]["tiles_per_s"]
    for run in results:
        spec = run["spec"]
        if "error" in run["result"]:
            lines.append(f"| {spec['image']} | {spec['name']} | | error: {run['result']['error'][:120]} |")
            continue
        row = run["row"]
        share = row["phase_share"]
        io = share.get("decode", 0) + share.get("tiling/blend", 0) + share.get("write", 0)
        iou = run.get("iou", run.get("iou_vs_skinseg_fp32_matched", run.get("iou_vs_skinseg_fp32")))
        same_model = not spec["model"].startswith("reference")
        ratio = row["tiles_per_s"] / base[spec["image"]] if spec["image"] in base and same_model else None
        grid = f"{row['tiles']}×{spec['tile'] or 'meta'}" + (f" ov{spec['overlap']:g}" if spec["overlap"] else "")
        provider = run["result"]["provider"].replace("ExecutionProvider", "")
        fraction = row["model_peak_fraction"]
        cells = [
            spec["image"],
            spec["name"],
            grid,
            provider,
            _fmt(row["seconds"]),
            _fmt(row["mp_per_s"]),
            _fmt(row["tiles_per_s"]),
            _fmt(ratio),
            f"{_fmt(row['gflops'], '.0f')} ({_fmt(row['model_gflops'], '.0f')})",
            _fmt(fraction and 100 * fraction, ".0f"),
            f"{100 * share.get('model', 0):.0f}",
            f"{100 * io:.1f}",
            f"{row['rss_mb']:.0f}"
            + (f" ({run['result']['rss_loaded_mb']:.0f})" if run["result"].get("rss_loaded_mb") else ""),
            _fmt(iou, ".4f"),
            _fmt(run["result"].get("cpu_util"), ".0%"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lever_table(levers: dict[str, Any]) -> str:
    """Lever measurements as a markdown table."""
    lines = ["| lever | ms | MP/s | GFLOPS | notes |", "|---|---|---|---|---|"]
    for key, value in levers.items():
        if key == "profile" or not isinstance(value, dict):
            continue
        notes = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items()
                          if k not in ("ms", "mp_s", "gflops"))  # fmt: skip
        lines.append(f"| {key} | {_fmt(value.get('ms'), '.1f')} | {_fmt(value.get('mp_s'))} | "
                     f"{_fmt(value.get('gflops'), '.0f')} | {notes} |")  # fmt: skip
    for model, prof in levers.get("profile", {}).items():
        shares = ", ".join(f"{op} {100 * s:.1f}%" for op, s in prof["share"].items())
        lines.append(f"| profile {model} (node time {prof['node_ms_per_run']:.0f} ms/tile) | | | | {shares} |")
    return "\n".join(lines)


def markdown_section(report: dict[str, Any]) -> str:
    """The generated block of docs/performance.md."""
    m = report["machine"]
    v = m["versions"]
    peak = report["peak"]
    lines = [
        MARK_BEGIN,
        f"Generated by `python benchmarks/bench_infer.py {' '.join(report['argv'])}` on {report['date']} "
        f"(total {report['total_s']:.0f} s).",
        "",
        f"**Machine**: {m['model_name']} (family {m['cpu_family']}), {m['cores']} cores × {m['threads_per_core']} "
        f"thread(s), L2 {m['l2']}, L3 {m['l3']}, hypervisor {m['hypervisor'] or 'none'}; flags of note: "
        f"{', '.join(m['flags']) or 'none'}{'' if any(f.startswith('amx') for f in m['flags']) else ' (no AMX)'}. "
        f"{report['threads']} threads; load average {report['load'][0]:.2f} before, {report['load'][1]:.2f} after. "
        f"onnxruntime {v.get('onnxruntime')}, TensorFlow {v.get('tensorflow')}, Keras {v.get('keras')}, "
        f"numpy {v.get('numpy')}, OpenCV {v.get('cv2')}, Pillow {v.get('PIL')}"
        + (f"; OpenVINO EP from onnxruntime-openvino {report['ov_version']}" if report.get("ov_version") else "")
        + ".",
        "",
        f"**Model**: the seed configuration `{report['arch']}`, {report['params'] / 1e6:.1f} M parameters, "
        f"{report['flops_per_tile'] / 1e9:.1f} GFLOP per 512×512 tile (Conv/ConvTranspose counted from the ONNX graph; "
        f"Keras-side count {report['keras_flops'] / 1e9:.1f}), random weights (seed 0).",
        "",
        f"**fp32 matmul peak** (2048², best of 16 at start and end, same threads): "
        f"numpy {peak['numpy_gflops']:.0f} GFLOPS, "
        f"onnxruntime MatMul {peak['ort_gflops']:.0f} GFLOPS; peak used = {peak['peak_gflops']:.0f} GFLOPS.",
        "",
        table(report["runs"], peak["peak_gflops"]),
        "",
        "Columns: *grid* = model calls × tile (ov = overlap); *×seed* = tiles/s against the seed baseline on the "
        "same image; *GFLOPS (model)* = FLOPs / wall time (FLOPs / time inside `session.run`); *% peak* = model "
        "GFLOPS / matmul peak; *decode+blend+write %* = share of wall time outside the model except resize and "
        "post-processing; *IoU* = mask IoU against the fp32 NCHW run of the same grid (int8, NHWC, OpenVINO), the "
        "default fp32 run (default int8), or, for the seed runs, against skinseg fp32 (margin-free seed run: only "
        "where the grids give identical tiles); *peak RSS (after load)* = the process's VmHWM at the end "
        "(after loading the model and one warm-up batch); *CPU use* = process CPU time / (wall time × threads) in the "
        "timed run: well under 100 % means other processes took cores from the run (its figures are too slow).",
    ]
    phase_lines = ["", "Phases (seconds): ", "", "| image | configuration | " + " | ".join(PHASES) + " |",
                   "|---|---|" + "---|" * len(PHASES)]  # fmt: skip
    for run in report["runs"]:
        if "error" in run["result"]:
            continue
        ph = run["result"]["phases"]
        cells = " | ".join(f"{ph.get(p, 0):.2f}" for p in PHASES)
        phase_lines.append(f"| {run['spec']['image']} | {run['spec']['name']} | {cells} |")
    lines += phase_lines
    if report.get("levers"):
        lines += [
            "",
            "Levers (model-only unless stated, one 512×512 tile, best of N):",
            "",
            lever_table(report["levers"]),
        ]
    if report.get("notes"):
        lines += ["", "Notes: " + "; ".join(report["notes"]) + "."]
    lines.append(MARK_END)
    return "\n".join(lines)


PHASES = ("decode", "resize", "tiling/blend", "model", "post", "write", "other")


def write_markdown(path: Path, section: str) -> None:
    """Replace the generated block of ``path`` (between the markers), or append it."""
    text = path.read_text() if path.is_file() else "# Performance\n\n"
    if MARK_BEGIN in text and MARK_END in text:
        text = re.sub(re.escape(MARK_BEGIN) + r".*?" + re.escape(MARK_END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer configurations, the real image only")
    parser.add_argument("--images", default=str(DATA / "isic-72/images"), help="real photographs (the widest is used)")
    parser.add_argument(
        "--calibration", default=str(DATA / "isic-256/images"), help="int8 calibration images for the reference model"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results.json"), help="JSON results file")
    parser.add_argument("--markdown", default="", help="update the generated block of this markdown file")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every engine")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per configuration (best kept)")
    parser.add_argument("--levers", action="store_true", help="also measure the levers one at a time")
    parser.add_argument("--big-baseline", action="store_true", help="also run the seed baseline on 6600×4400")
    parser.add_argument("--ov-path", default="", help="a folder holding onnxruntime-openvino (pip --target)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "skinseg-bench"), help="cache folder")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached models")
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny UNet, to develop this script (numbers mean nothing)"
    )
    parser.add_argument("--from-json", default="", help="only re-print (and --markdown) the results of a JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        task = json.loads(args.worker)
        print("RESULT " + json.dumps(WORKERS[task["kind"]](task)), flush=True)
        return 0

    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        print(table(report["runs"], report["peak"]["peak_gflops"]))
        if args.markdown:
            write_markdown(Path(args.markdown), markdown_section(report))
        return 0

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    work = Path(args.work) / ("tiny" if args.tiny else "seed")
    (work / "masks").mkdir(parents=True, exist_ok=True)
    n = args.threads
    log = lambda msg: print(f"[{time.perf_counter() - started:6.0f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    log(f"preparing models and images (cached in {work})")
    prep = run_worker({"kind": "prepare", "work": str(work), "quick": args.quick, "rebuild": args.rebuild,
                       "tiny": args.tiny, "images_dir": args.images, "calibration_dir": args.calibration}, n,
                      timeout=3600)  # fmt: skip
    if "error" in prep:
        print(prep["error"], file=sys.stderr)
        return 1
    models, images, notes = prep["models"], prep["images"], list(prep["notes"])
    flops = conv_flops(models["fp32_nchw"])
    log(f"model: {flops / 1e9:.1f} GFLOP per tile (ONNX count), {prep['keras_flops'] / 1e9:.1f} (Keras count)")
    peak = run_worker({"kind": "peak", "threads": n}, n)
    log(f"matmul peak: {peak}")
    if "error" in peak:
        print(peak["error"], file=sys.stderr)
        return 1

    ov_path, ov_version = "", ""
    import onnxruntime

    if "OpenVINOExecutionProvider" in onnxruntime.get_available_providers():
        ov_version = onnxruntime.__version__
    elif args.ov_path and Path(args.ov_path, "onnxruntime").is_dir():
        ov_path = args.ov_path
        m = re.search(r"onnxruntime_openvino-([\d.]+)\.dist-info", " ".join(os.listdir(args.ov_path)))
        ov_version = m.group(1) if m else "?"
    else:
        notes.append("no OpenVINO EP (pip install --target DIR onnxruntime-openvino, then --ov-path DIR)")

    runs = plan_runs(args, models, images, bool(ov_version))
    results = []
    for spec in runs:
        rid = f"{spec.name} [{spec.image}]"
        mask = work / "masks" / (re.sub(r"[^A-Za-z0-9]+", "_", rid).strip("_") + ".png")
        task = {"kind": spec.engine, **asdict(spec), "threads": n, "model_path": models[spec.model],
                "image_path": images[spec.image]["path"], "mask_out": str(mask), "work": str(work)}  # fmt: skip
        log(f"run {rid}")
        result = run_worker(task, n, ort_path=ov_path if spec.device == "openvino" else "")
        entry: dict[str, Any] = {"id": rid, "spec": asdict(spec), "result": result, "mask": str(mask)}
        if "error" not in result:
            entry["row"] = summarize(spec, result, images[spec.image], flops, peak["peak_gflops"])
            log(f"  {result['seconds']:.2f} s, {result['tiles']} tiles, RSS {result['rss_mb']:.0f} MB")
        else:
            log(f"  ERROR {result['error']}")
        results.append(entry)
    compute_ious(results, images)

    levers: dict[str, Any] = {}
    if args.levers:
        log("levers")
        levers = run_worker({"kind": "levers", "models": models, "threads": n, "reps": 2 if args.quick else 3,
                             "flops_per_tile": flops, "images": images, "work": str(work),
                             "masks": {r["spec"]["image"]: r["mask"] for r in results
                                       if r["spec"]["name"] == "skinseg fp32 NCHW"}}, n)  # fmt: skip
        for arena in (True, False):
            r = run_worker({"kind": "arena", "model_path": models["fp32_nchw"], "threads": n, "arena": arena,
                            "batch": 4}, n)  # fmt: skip
            levers[f"fp32_nchw batch 4, arena {'on' if arena else 'off'}"] = {
                "ms": r.get("ms_per_tile"), "rss_mb": r.get("rss_mb")}  # fmt: skip
        if ov_version:
            for key in ("fp32_nchw", "int8_nchw"):
                precisions = ["f32", "bf16"] if key.startswith("fp32") else [""]
                r = run_worker({"kind": "ov_tile", "model_path": models[key], "threads": n, "reps": 3,
                                "precisions": precisions, "work": str(work)}, n, ort_path=ov_path)  # fmt: skip
                for p, v in r.items():
                    if isinstance(v, dict):
                        levers[f"OpenVINO {key} precision {p}"] = {
                            **v,
                            "mp_s": TILE * TILE / v["ms"] / 1e3,
                            "gflops": flops / v["ms"] / 1e6,
                        }
                    elif p == "error":
                        levers[f"OpenVINO {key}"] = {"error": str(v)[:200]}

    # The peak is measured again at the end and the larger kept: on a shared machine one measurement can land
    # while another process holds a core.
    again = run_worker({"kind": "peak", "threads": n}, n)
    if "error" not in again:
        log(f"matmul peak again: {again}")
        peak = {**peak, **{k: max(peak[k], again[k]) for k in ("numpy_gflops", "ort_gflops", "peak_gflops")}}
        for run in results:
            if "row" in run and run["row"]["model_gflops"]:
                run["row"]["model_peak_fraction"] = run["row"]["model_gflops"] / peak["peak_gflops"]
    report = {
        "argv": sys.argv[1:] if argv is None else argv,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "threads": n,
        "arch": prep["arch"],
        "params": prep["keras_params"],
        "keras_flops": prep["keras_flops"],
        "flops_per_tile": flops,
        "peak": peak,
        "ov_version": ov_version,
        "images": images,
        "runs": results,
        "levers": levers,
        "notes": notes,
        "total_s": time.perf_counter() - started,
        "load": [load_before, os.getloadavg()[0]],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(table(results, peak["peak_gflops"]))
    if levers:
        print()
        print(lever_table(levers))
    if args.markdown:
        write_markdown(Path(args.markdown), markdown_section(report))
    log(f"done: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
