"""The real job, end to end: `skinseg infer` on folders of large JPEGs with the bundled model, against the I/O floor.

For each folder (synthetic dermoscopy-like JPEGs written by `skinseg synth`, so anyone can rerun it):

- the floor: what cannot be avoided, one image after another in this process: a full JPEG decode, the 1-bit PNG
  mask encode at full size, and the overlay JPEG encode at the size the run writes (2048 px long side by default);
- `skinseg infer DIR --output OUT --quiet` as a whole process (wall seconds per image, and the run's own seconds
  per image from `summary.json`, which leave out start-up), with its peak RSS (the child's ``ru_maxrss``);
- the levers, each one change from the defaults: the overlay at full size, images in flight 1 or 3, onnxruntime
  threads 1;
- one 20000×15000 photograph (300 MP) alone: seconds and peak RSS;
- start-up: `skinseg infer` on one small image, whole process, and `import skinseg.cli` alone.

Ratios are measured in one run on the same machine (the figures of one run on a shared machine move by 10–20%).

    python benchmarks/bench_folder.py                       # the table (a few minutes on 2 cores)
    python benchmarks/bench_folder.py --markdown docs/folder_performance.md
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_child(args: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in MB, the result) of one child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # pipes could fill and block
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    done = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024, done


def infer(images: Path, out: Path, *extra: str) -> dict:
    wall, rss, _ = run_child(
        [sys.executable, "-m", "skinseg", "infer", str(images), "--output", str(out), "--quiet", "--overwrite", *extra]
    )
    summary = json.loads((out / "summary.json").read_text())
    n = summary["total"]
    if summary["ok"] != n:  # a failed image is no figure
        raise SystemExit(f"skinseg infer {' '.join(extra)}: {summary['failed']} of {n} images failed, see {out}")
    return {"n": n, "wall_per_image": wall / n, "run_per_image": summary["seconds"] / n, "rss_mb": rss}


def floor(images: list[Path], overlay_side: int | None) -> float:
    """Seconds per image of the unavoidable work: full decode, 1-bit mask PNG, overlay JPEG at the run's size."""
    import cv2
    import numpy as np

    from skinseg.runtime.imageio import decode_image, encode_jpeg, encode_png, load_image_file

    decode_image(load_image_file(images[0]), reduce=8)  # warm-up: libraries loaded, not timed
    total = 0.0
    for path in images:
        start = time.perf_counter()
        rgb = decode_image(load_image_file(path))
        h, w = rgb.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, (w // 2, h // 2), (w // 4, h // 4), 0, 0, 360, 255, -1)  # a lesion-like mask
        encode_png(mask, bits=1)
        if overlay_side is not None and max(h, w) > overlay_side:
            f = overlay_side / max(h, w)
            rgb = cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        encode_jpeg(rgb, quality=90)
        total += time.perf_counter() - start
    return total / len(images)


def synth(folder: Path, count: int, size: str, seed: int) -> list[Path]:
    subprocess.run(
        [sys.executable, "-m", "skinseg", "synth", str(folder), "--count", str(count), "--size", size,
         "--seed", str(seed), "--quiet"],
        check=True, capture_output=True,
    )  # fmt: skip
    return sorted((folder / "images").glob("*.jpg"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", type=int, default=4, help="6600×4400 photographs in the large folder")
    ap.add_argument("--small", type=int, default=12, help="1600×1200 photographs (about 2 MP) in the small folder")
    ap.add_argument("--no-300mp", action="store_true", help="skip the 20000×15000 photograph")
    ap.add_argument("--only-300mp", action="store_true", help="only the 20000×15000 photograph")
    ap.add_argument("--markdown", type=Path, help="also write the tables to this file")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()

    from skinseg.runtime.defaults import DEFAULT_OVERLAY_SIZE

    figures: dict[str, dict] = {}
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        folders = {} if args.only_300mp else {
            "6600×4400 (29 MP)": (synth(tmp / "large", args.large, "6600x4400", 1), tmp / "large" / "images"),
            "1600×1200 (1.9 MP)": (synth(tmp / "small", args.small, "1600x1200", 2), tmp / "small" / "images"),
        }  # fmt: skip
        lines += [
            "| folder | run | s/image (process) | s/image (run) | ratio to floor | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        levers = [
            ("defaults", []),
            ("--overlay-size full", ["--overlay-size", "full"]),
            ("--max-in-flight 1", ["--max-in-flight", "1"]),
            ("--max-in-flight 3", ["--max-in-flight", "3"]),
            ("--threads 1", ["--threads", "1"]),
        ]
        for label, (paths, folder) in folders.items():
            base_floor = floor(paths, DEFAULT_OVERLAY_SIZE)
            full_floor = floor(paths, None)
            lines.append(f"| {label} | floor (decode + mask PNG + 2048-px overlay) | {base_floor:.3f} | | 1.00 | |")
            lines.append(f"| {label} | floor with a full-size overlay | {full_floor:.3f} | | 1.00 | |")
            figures[label] = {"floor": base_floor, "floor_full_overlay": full_floor}
            for name, extra in levers:
                r = infer(folder, tmp / f"out-{len(figures)}-{name}", *extra)
                ref = full_floor if "full" in name else base_floor
                r["ratio"] = r["run_per_image"] / ref
                figures[label][name] = r
                lines.append(
                    f"| {label} | `skinseg infer` {name} | {r['wall_per_image']:.3f} | {r['run_per_image']:.3f} | "
                    f"{r['ratio']:.2f} | {r['rss_mb']:.0f} |"
                )
                print(lines[-1], flush=True)

        if not args.no_300mp:
            synth(tmp / "huge", 1, "20000x15000", 3)  # over the 250 MP default: --max-pixels admits it
            r = infer(tmp / "huge" / "images", tmp / "out-huge", "--max-pixels", "400000000")
            figures["20000×15000 (300 MP)"] = r
            lines.append(
                f"| 20000×15000 (300 MP), one | `skinseg infer` defaults | {r['wall_per_image']:.2f} | "
                f"{r['run_per_image']:.2f} | | {r['rss_mb']:.0f} |"
            )
            print(lines[-1], flush=True)

        one = tmp / "one"
        synth(one, 1, "1024x768", 4)
        r = infer(one / "images", tmp / "out-one")
        import_wall, import_rss, _ = run_child([sys.executable, "-c", "import skinseg.cli"])
        figures["start-up"] = {"infer_one_small_image_s": r["wall_per_image"], "import_cli_s": import_wall}
        lines += [
            "",
            f"Start-up: `skinseg infer` on one 1024×768 image, whole process: {r['wall_per_image']:.2f} s "
            f"(the image itself: {r['run_per_image']:.3f} s); `import skinseg.cli` alone: {import_wall:.2f} s.",
        ]

    head = (
        f"Machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores; "
        f"bundled model, default settings unless the run says otherwise; one run."
    )
    text = "\n".join([head, "", *lines]) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
