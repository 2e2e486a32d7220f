"""The library speaks its own parameters and leaves the host process alone; only the command line knows flags.

- a library error names the keyword parameter (``overlap must be …``, ``error.param == "overlap"``); the same error
  raised while a command runs names its flag (``--overlap must be …``), mapped from the Typer declarations;
- ``import skinseg`` changes no environment variable (OpenCV's decoder limit is an explicit call the CLI makes);
- one tile parser and one error formatter serve every caller.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skinseg.runtime.errors import (
    ParameterError,
    SkinsegError,
    UsageError,
    one_line,
    param,
    parameter_names,
    render,
)
from skinseg.runtime.tiling import parse_tile, plan_tiles

ROOT = Path(__file__).resolve().parents[1]
# the variables skinseg's command line sets: a CLI test run in this process before may have set them here
CLEAN = {k: v for k, v in os.environ.items() if k not in ("OPENCV_IO_MAX_IMAGE_PIXELS", "ORT_DISABLE_TELEMETRY")}


def _environ_after(code: str) -> dict[str, str]:
    script = f"import json, os\n{code}\nprint(json.dumps(dict(os.environ)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT, env=CLEAN
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_skinseg_changes_no_environment_variable():
    bare = _environ_after("")
    assert _environ_after("import skinseg, skinseg.runtime, skinseg.runtime.errors, skinseg.cli") == bare
    # OpenCV and onnxruntime change what they change when they load; skinseg's own modules add nothing to that
    libraries = _environ_after("import cv2, onnxruntime")
    loaded = _environ_after(
        "import cv2, onnxruntime\nfrom skinseg import Segmenter\nimport skinseg.runtime.batch, skinseg.runtime.cluster"
    )
    assert loaded == libraries
    assert "OPENCV_IO_MAX_IMAGE_PIXELS" not in loaded and "ORT_DISABLE_TELEMETRY" not in loaded


def test_the_decoder_limit_is_an_explicit_call_before_opencv_loads():
    code = (
        "import os, sys\n"
        "from skinseg.runtime import set_decoder_limit\n"
        "first = set_decoder_limit(300_000_000)\n"
        "import cv2\n"
        "late = set_decoder_limit(400_000_000)\n"
        "print(first, late, os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=CLEAN
    )
    assert done.stdout.split() == ["True", "False", "300000000"], done.stderr


def test_the_command_line_sets_the_decoder_limit_as_it_starts():
    code = (
        "import os, sys\n"
        "from skinseg.cli import app\n"
        "try:\n    app(['config', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('LIMIT', os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS'), os.environ.get('ORT_DISABLE_TELEMETRY'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=CLEAN
    )
    assert "LIMIT 250000000 1" in done.stdout, done.stdout + done.stderr


def test_a_library_error_names_the_parameter_and_the_cli_its_flag(tmp_path):
    from skinseg import Segmenter
    from skinseg.cli import app

    with pytest.raises(ParameterError) as info:
        Segmenter(overlap=2.0)
    said = str(info.value)
    assert said.startswith("overlap must be within [0, ") and "--" not in said
    assert info.value.param == "overlap" and isinstance(info.value, ValueError) and info.value.exit_code == 2

    (tmp_path / "src").mkdir()
    done = CliRunner().invoke(app, ["infer", str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--overlap", "2"])
    assert done.exit_code == 2
    assert "error: --overlap must be within [0, " in done.output and "\x1f" not in done.output


def test_a_setting_reads_name_equals_value_in_the_library_and_flag_value_on_the_command_line():
    error = UsageError(f"{param('tile', 4096)}: too large; use a smaller {param('tile')} or {param('batch_size')}")
    assert str(error) == "tile=4096: too large; use a smaller tile or batch_size"
    assert error.param == "tile"
    with parameter_names({"tile": "--tile", "batch_size": "--batch-size"}):
        assert str(error) == "--tile 4096: too large; use a smaller --tile or --batch-size"
        assert one_line(error) == str(error)
    assert str(error) == "tile=4096: too large; use a smaller tile or batch_size"  # the naming ends with the block
    assert render(f"{param('unknown')} x", {"tile": "--tile"}) == "unknown x"
    assert SkinsegError("plain text").param is None


def test_every_parameter_the_library_names_is_an_option_of_the_command_line():
    """A typo in a message's parameter (``param("max_pixel")``) would show a bare name to CLI users."""
    import skinseg.cli  # noqa: F401  (registers the commands)
    from skinseg.app import option_flags

    flags = option_flags()
    assert flags["overlap"] == "--overlap" and flags["max_pixels"] == "--max-pixels"
    assert flags["keep_largest"] == "--keep-largest" and flags["tls_ca_file"] == "--tls-ca-file"
    named = set()
    for folder in ("runtime", "data", "exporters", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            named |= set(re.findall(r"""\bparam\(\s*["']([a-z_]+)["']""", path.read_text(encoding="utf-8")))
    assert named and not named - set(flags), sorted(named - set(flags))


def test_a_row_of_a_library_batch_names_the_parameter(standin_model, tmp_path):
    import cv2

    from skinseg.runtime.job import process_image
    from skinseg.runtime.options import InferOptions

    src = tmp_path / "big.png"
    cv2.imwrite(str(src), np.zeros((160, 200, 3), np.uint8))
    row = process_image(standin_model, src, InferOptions(threads=1, max_pixels=1000), tmp_path / "out", "big.png")
    assert row["status"] == "failed" and "exceeds max_pixels=1,000 px; raise max_pixels if" in row["error"], row


@pytest.mark.parametrize("tile", [0, (32, 0), (32,), (1, 2, 3), "32", "256", 256.5, (256, 5000), 5000, None, True])
def test_one_tile_parser_refuses_what_no_caller_can_use(tile):
    with pytest.raises(ParameterError, match="^tile must be one or two integers from 1 to 4096"):
        parse_tile(tile)
    with pytest.raises(ValueError, match="tile"):
        plan_tiles(100, 100, tile)


@pytest.mark.parametrize(
    ("tile", "pair"),
    [(256, (256, 256)), ((128, 256), (128, 256)), ([64, 32], (64, 32)), (np.int64(48), (48, 48)), (256.0, (256, 256))],
)
def test_one_tile_parser_reads_one_or_two_whole_numbers(tile, pair):
    assert parse_tile(tile) == pair
    assert plan_tiles(300, 300, tile)[0].th == pair[0]


def test_one_error_formatter_for_rows_and_quoted_errors():
    assert one_line(ValueError("a\n  b")) == "ValueError: a b"
    assert one_line(ValueError("a\n  b"), typed=False) == "a b"
    assert one_line(MemoryError()) == "MemoryError"
    assert one_line(UsageError("plain\nlines")) == "plain lines"  # our own errors need no type name
    long = one_line(RuntimeError(" ".join(["word"] * 200)), 50)
    assert len(long) <= 50 and long.endswith("word …")
    for module in sorted((ROOT / "runtime").rglob("*.py")):  # all of the runtime but the formatter's own module
        if module.name == "errors.py":
            continue
        text = module.read_text(encoding="utf-8")
        assert ".split())" not in text and "def _one_line" not in text and "def _first_line" not in text, module


def test_a_dask_task_names_parameters_as_the_command_that_sent_it(standin_model, tmp_path):
    """A worker process has no CLI running: the task carries the sender's names, for its thread only."""
    import cv2

    from skinseg.runtime.cluster import cluster_task
    from skinseg.runtime.errors import current_parameter_names
    from skinseg.runtime.options import InferOptions

    src = tmp_path / "big.png"
    cv2.imwrite(str(src), np.zeros((160, 200, 3), np.uint8))
    options = InferOptions(threads=1, max_pixels=1000)
    with parameter_names({"max_pixels": "--max-pixels"}):
        sent = current_parameter_names()
    row = cluster_task(str(standin_model), str(src), options, str(tmp_path / "out"), "big.png", None, sent)
    assert "exceeds --max-pixels 1,000 px; raise --max-pixels if" in row["error"], row
    assert current_parameter_names() == {}  # nothing stays behind in this thread
    row = cluster_task(str(standin_model), str(src), options, str(tmp_path / "out"), "big.png", None)
    assert "exceeds max_pixels=1,000 px" in row["error"], row
