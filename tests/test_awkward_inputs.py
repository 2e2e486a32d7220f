"""Awkward images and names in one `skinseg infer` batch: each is handled or fails with a one-line reason, the rest
goes on, results.csv says which, and nothing is written outside --output. Names that are not UTF-8, at the file
system's length limit, or that a spreadsheet would run round-trip through every report; a FIFO swapped in for a photo
fails that photo alone.

Already covered elsewhere (not repeated here): corrupt PNG data, 16-bit PNG/TIFF, text file named .PNG,
--max-pixels and EXIF orientation 6 in one batch
(``tests/test_infer_cli.py::test_every_bad_input_in_one_batch_exit_1``);
EXIF orientations 1–8 decoded by ``read_image`` (``tests/test_imageio.py::test_jpeg_exif_orientation``); bomb headers
refused by ``read_image`` (``test_huge_png_header_refused_before_decoding``, ``test_huge_jpeg_header_refused``);
spaces and non-ASCII paths through the CLI (``test_infer_cli.py::test_spaces_and_non_ascii_paths``); ``..`` and
absolute relative paths (``test_batch.py::test_output_paths_refuse_to_leave_the_output``); symlink loops in discovery
(``test_batch.py::test_discovery_mirrors_folders_and_survives_symlink_loops``); a newline in a name
(``tests/test_user_text.py``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console

from skinseg.progress import InferProgress
from skinseg.runtime.batch import run_batch
from skinseg.runtime.imageio import read_image
from skinseg.runtime.options import InferOptions
from tests.support import (
    ORIENT,
    block_image,
    infer,
    jpeg_bytes,
    lesion_image,
    png_bytes,
    png_chunk,
    rows_of,
    run_cli,
    write_png,
)

ROOT = Path(__file__).resolve().parents[1]
OPTS = InferOptions(threads=1)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width × height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_bomb(side: int = 60_000) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, side, side, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def pil_bytes(rgb: np.ndarray, mode: str, fmt: str) -> bytes | None:
    """The image converted by PIL to ``mode`` (CMYK, LA, P...) and saved as ``fmt``; None without PIL."""
    try:
        from PIL import Image
    except ImportError:
        return None
    buf = io.BytesIO()
    extra = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(rgb).convert(mode).save(buf, format=fmt, **extra)
    return buf.getvalue()


def read_rows(output: Path) -> dict[str, dict[str, str]]:
    """results.csv as a spreadsheet-safe reader sees it: a leading ' that guards a formula-like name removed."""
    from skinseg.runtime.names import from_csv_cell

    with open(output / "results.csv", newline="", encoding="utf-8") as f:
        return {from_csv_cell(r["path"]): r for r in csv.DictReader(f)}


def mask_of(output: Path, stem: str) -> np.ndarray:
    return cv2.imread(str(output / f"{stem}_mask.png"), cv2.IMREAD_GRAYSCALE) > 127


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------------------- one batch


def awkward_inputs(src: Path) -> dict[str, tuple[str | None, np.ndarray | None]]:
    """Write every awkward file; value: (expected failure fragment or None for success, expected mask or None)."""
    src.mkdir(parents=True)
    rgb = block_image()
    expected_mask = rgb[..., 0] > 127
    rng = np.random.default_rng(7)
    good_png, good_jpg = png_bytes(rgb), jpeg_bytes(rgb)
    at = good_png.find(b"IDAT")
    files: dict[str, tuple[bytes | None, str | None, np.ndarray | None]] = {
        "good.png": (good_png, None, expected_mask),
        "noise_a.jpg": (rng.bytes(3000), "not an image", None),
        "noise_b.png": (rng.bytes(3000), "not an image", None),
        "random_after_png_magic.png": (b"\x89PNG\r\n\x1a\n" + rng.bytes(3000), "not a readable image", None),
        "truncated_a.png": (good_png[: at + 30], "truncated or corrupt", None),
        "truncated_header.png": (good_png[:20], "truncated", None),
        "truncated_b.jpg": (good_jpg[: len(good_jpg) // 2], "truncated", None),
        "zero_a.png": (b"", "empty (0 bytes)", None),
        "zero_b.jpg": (b"", "empty (0 bytes)", None),
        "bomb_a.png": (png_bomb(), "100000×100000 = 10,000 MP exceeds --max-pixels", None),
        "bomb_b.jpg": (jpeg_bomb(), "exceeds --max-pixels", None),
        "gray16.png": (png_bytes(rgb[..., 0].astype(np.uint16) * 257), None, expected_mask),
        "rgb16.png": (png_bytes(rgb.astype(np.uint16) * 257), None, expected_mask),
        "gray.png": (png_bytes(rgb[..., 0]), None, expected_mask),
        "rgba.png": (png_bytes(np.dstack([rgb, np.full(rgb.shape[:2], 0, np.uint8)])), None, expected_mask),
        "cmyk.jpg": (pil_bytes(rgb, "CMYK", "JPEG"), None, expected_mask),
        "gray_alpha.png": (pil_bytes(rgb, "LA", "PNG"), None, None),
        "palette.png": (pil_bytes(rgb, "P", "PNG"), None, expected_mask),
    }
    for orientation in range(1, 9):
        files[f"exif{orientation}.jpg"] = (
            jpeg_bytes(rgb, orientation=orientation),
            None,
            ORIENT[orientation](rgb)[..., 0] > 127,
        )
    expected = {}
    for name, (data, reason, mask) in files.items():
        if data is None:  # PIL is missing: that format cannot be made here
            continue
        (src / name).write_bytes(data)
        expected[name] = (reason, mask)
    return expected


def test_every_awkward_image_in_one_batch(model, tmp_path):
    expected = awkward_inputs(tmp_path / "src")
    out = tmp_path / "out"
    result = infer(tmp_path / "src", "--model", model, "--output", out, quiet=True)
    assert result.exit_code == 1, result.output  # some failed, the others are done
    assert "Traceback" not in result.output
    rows = read_rows(out)
    assert set(rows) == set(expected)
    for name, (reason, mask) in expected.items():
        row, stem = rows[name], name.rsplit(".", 1)[0]
        if reason is None:
            assert row["status"] == "ok", (name, row["error"])
            produced = mask_of(out, stem)
            if mask is not None:
                assert produced.shape == mask.shape, name
                assert (produced == mask).mean() > 0.97, name
        else:
            assert row["status"] == "failed", (name, row)
            assert reason in row["error"] and name in row["error"], (name, row["error"])
            assert "\n" not in row["error"] and len(row["error"]) <= 300
            assert not (out / f"{stem}_mask.png").exists() and not (out / f"{stem}_overlay.jpg").exists()
    ok = sum(reason is None for reason, _ in expected.values())
    assert f"{len(expected)} images: {ok} ok, {len(expected) - ok} failed, 0 skipped" in result.stdout


def test_cmyk_jpeg_colours_are_converted(tmp_path):

    rgb = block_image()
    data = pil_bytes(rgb, "CMYK", "JPEG")
    if data is None:
        pytest.skip("PIL is not installed: there is no CMYK JPEG encoder (OpenCV cannot write one)")
    assert b"Adobe" in data[:64]  # PIL writes the Adobe APP14 marker that flags inverted CMYK
    (tmp_path / "cmyk.jpg").write_bytes(data)
    for reduce in (1, 2):
        got = read_image(tmp_path / "cmyk.jpg", reduce=reduce)
        want = cv2.resize(rgb, (got.shape[1], got.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(got.astype(int) - want).mean() < 6, reduce


def test_decompression_bombs_allocate_nothing(tmp_path):
    """Refused from the header (default limit) or by the decoder (limit raised): peak RSS grows by < 40 MB."""
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    (tmp_path / "bomb.jpg").write_bytes(jpeg_bomb())
    (tmp_path / "small.png").write_bytes(png_bytes(block_image()))
    code = textwrap.dedent(
        f"""
        import resource
        from pathlib import Path
        from skinseg.runtime.batch import run_batch
        from skinseg.runtime.options import InferOptions
        from skinseg.runtime.errors import ImageError
        from skinseg.runtime.imageio import read_image
        from tests.onnx_standins import identity_model, metadata_json, save

        folder = Path({str(tmp_path)!r})
        model = save(identity_model(metadata=metadata_json((64, 64))), folder / "m.onnx")
        read_image(folder / "small.png")
        run_batch([folder / "small.png"], model, folder / "warm", InferOptions(threads=1))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for name, limit in [("bomb.png", 250_000_000), ("bomb.png", 10**12), ("bomb.jpg", 10**12)]:
            try:
                read_image(folder / name, max_pixels=limit)
                print("DECODED", name, limit)
            except ImageError as e:
                print("refused", name, e)
        summary = run_batch([folder / "bomb.png", folder / "bomb.jpg"], model, folder / "out", InferOptions(threads=1))
        print("failed", summary.failed)
        print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DECODED" not in proc.stdout and proc.stdout.count("refused") == 3 and "failed 2" in proc.stdout
    growth_kb = int(proc.stdout.split("GROWTH_KB")[1])
    assert growth_kb < 40 * 1024, f"peak RSS grew by {growth_kb / 1024:.0f} MB"


# ----------------------------------------------------------------------------------------------- paths


def test_symlink_loops_under_recursive_end_and_each_image_runs_once(model, tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.png").write_bytes(png_bytes(block_image()))
    (src / "a" / "b" / "deep.png").write_bytes(png_bytes(block_image()))
    (src / "a" / "b" / "up").symlink_to(src, target_is_directory=True)  # loop back to the root
    (src / "a" / "self").symlink_to(src / "a", target_is_directory=True)  # loop to itself
    (src / "a" / "b" / "alias.png").symlink_to(src / "top.png")  # one file under two names
    out = tmp_path / "out"
    result = infer(src, "--recursive", "--model", model, "--output", out, quiet=True)
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert len(rows) == 2 and {"top.png", "a/b/deep.png"} == set(rows)
    assert all(p.resolve().is_relative_to(out.resolve()) for p in files_under(out))


def test_outputs_stay_inside_output_whatever_the_input_names(model, tmp_path):
    """Globs with ``..``, a symlinked source folder leading elsewhere, and a symlink inside --output."""
    base = tmp_path / "work"
    outside = tmp_path / "outside"
    (base / "src" / "x" / "y").mkdir(parents=True)
    outside.mkdir()
    (outside / "far.png").write_bytes(png_bytes(block_image()))
    (outside / "glob_me.png").write_bytes(png_bytes(block_image()))
    (base / "src" / "near.png").write_bytes(png_bytes(block_image()))
    (base / "src" / "linked").symlink_to(outside, target_is_directory=True)
    out = base / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "linked").symlink_to(elsewhere, target_is_directory=True)  # a planted link inside --output
    before_outside = files_under(outside)

    # A glob whose matches climb out of its fixed leading folder: their outputs would land in ../../
    climbing = f"{base}/src/x/*/../../../../outside/glob*.png"
    result = infer(
        climbing, f"{base}/src/x/../near.png", base / "src", "-r", "--model", model, "--output", out, quiet=True
    )
    assert result.exit_code == 1, result.output
    rows = read_rows(out)
    assert rows["near.png"]["status"] == "ok"
    climbed = [r for p, r in rows.items() if ".." in p]
    assert climbed and all(r["status"] == "failed" and "outside --output" in r["error"] for r in climbed)
    assert rows["linked/far.png"]["status"] == "failed" and "outside --output" in rows["linked/far.png"]["error"]
    assert list(elsewhere.iterdir()) == [] and files_under(outside) == before_outside
    assert not list(tmp_path.glob("*_mask.png")) and not list(base.glob("*_mask.png"))
    assert all(os.path.realpath(p).startswith(str(out.resolve()) + os.sep) for p in files_under(out))


def test_file_names_with_csv_and_markup_characters(model, tmp_path):
    """Commas, quotes, newlines, brackets and unicode in names survive results.csv and the text log."""
    src = tmp_path / "in put ü"
    src.mkdir()
    names = [
        'a,b "c".png',
        "line\nbreak.png",
        "[red] x [bold].png",
        "émoji 🙂 皮膚.png",
        "-dash.png",
        "semi;colon.png",
    ]
    for name in names:
        (src / name).write_bytes(png_bytes(block_image()))
    out = tmp_path / "out ä"
    result = infer(src, "--model", model, "--output", out, quiet=True)
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert set(rows) == set(names) and all(r["status"] == "ok" for r in rows.values())
    for name in names:
        assert (out / f"{name[:-4]}_mask.png").is_file()


def test_progress_bars_survive_markup_in_file_names():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    name = "x[/red]/a.png"  # folders 'x[' and 'red]' under --recursive
    with InferProgress(out=console, console=console, quiet=False) as progress:
        progress.handle({"event": "start", "total": 1, "model": "m.onnx", "provider": "CPU", "output": "o"})
        progress.handle({"event": "tiles", "index": 0, "path": name, "done": 1, "total": 2})
        row = {"path": name, "status": "ok", "error": "", "area_fraction": 0.1, "seconds": 0.1}
        progress.handle({"event": "image_done", "index": 0, "done": 1, "total": 1, "row": row})
    assert name in buf.getvalue()


# ------------------------------------------------------------------------------------------- names that are not UTF-8


def test_names_that_are_not_utf8_round_trip_through_every_report(model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    names = [os.fsdecode(b"a\xe9.png"), "b.png", os.fsdecode(b"c\xff\xfe.png")]
    for name in names:
        write_png(src / name, lesion_image())
    out = tmp_path / "out"
    summary = run_batch([src], model, out, OPTS)
    assert (summary.ok, summary.failed) == (3, 0)
    rows = rows_of(out)
    assert set(rows) == set(names)  # results.csv gives the bytes back
    data = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert data["ok"] == 3
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "a\\xe9.png" in page  # shown escaped, the page is valid UTF-8
    assert run_batch([src], model, out, OPTS).skipped == 3  # and a rerun finds them up to date


@pytest.mark.slow
def test_a_fifo_swapped_in_mid_run_fails_one_image(model, tmp_path):
    src = tmp_path / "src"
    for i in range(6):
        write_png(src / f"i{i}.png", lesion_image(seed=i))
    os.unlink(src / "i3.png")
    os.mkfifo(src / "i3.png")  # a reader that opens it blocking would hang forever
    out = tmp_path / "out"
    done = run_cli("infer", src, "--model", model, "--output", out, "--quiet", "--threads", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert rows_of(out)["i3.png"]["status"] == "failed" and "not a regular file" in rows_of(out)["i3.png"]["error"]


# ------------------------------------------------------------------------------------------------ names at the limits


def test_a_name_at_the_file_system_limit_is_segmented(model, tmp_path):
    name = "n" * 240 + ".png"
    write_png(tmp_path / "src" / name, lesion_image())
    summary = run_batch([tmp_path / "src"], model, tmp_path / "out", OPTS)
    assert summary.ok == 1, rows_of(tmp_path / "out")
    assert (tmp_path / "out" / ("n" * 240 + "_mask.png")).is_file()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_cells_that_a_spreadsheet_would_run_are_escaped_and_read_back(model, tmp_path):
    names = ["=1+1.png", "+cmd.png", "-x.png", "@sum.png"]
    for name in names:
        write_png(tmp_path / "src" / name, lesion_image())
    run_batch([tmp_path / "src"], model, tmp_path / "out", OPTS)
    raw = (tmp_path / "out" / "results.csv").read_text(encoding="utf-8")
    for name in names:
        assert f"'{name}" in raw and f",{name}" not in raw
    assert set(rows_of(tmp_path / "out")) == set(names)


def test_a_name_whose_outputs_would_be_too_long_fails_alone_and_the_gallery_is_written(model, tmp_path):
    """248 characters: the input's name fits, "<stem>_overlay.jpg" does not (ENAMETOOLONG). It was a raw OSError row,
    and the gallery's is_file() raised on it, so index.html was never written again in that folder."""
    long_name = "M" * 248 + ".png"
    write_png(tmp_path / "src" / long_name, lesion_image())
    write_png(tmp_path / "src" / "b.png", lesion_image(seed=1))
    out = tmp_path / "out"
    done = run_cli("infer", tmp_path / "src", "--model", model, "--output", out, "--quiet", "--threads", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    error = rows_of(out)[long_name]["error"]
    assert "over the file system's 255; shorten the file's name" in error and "Errno" not in error
    assert rows_of(out)["b.png"]["status"] == "ok" and (out / "index.html").is_file()
    assert "error" not in done.stderr.lower(), done.stderr
