"""The README's fine-tuning recipe: the shipped reference `.keras`, `configs/finetune.config`, a clinic's pairs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from typer.testing import CliRunner  # noqa: E402

from skinseg.cli import app  # noqa: E402
from skinseg.data.synth import write_dataset  # noqa: E402

pytestmark = pytest.mark.train
ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "reference" / "skinseg_default.keras"
runner = CliRunner()


def clinic_config(tmp_path: Path, **changes: str) -> Path:
    """configs/finetune.config as a clinic would use it, shortened to a few steps; ``changes`` edit [model] keys."""
    text = (ROOT / "configs" / "finetune.config").read_text()
    text = text.replace("epochs           = 8", "epochs           = 1\nsteps_per_epoch  = 2")
    for key, value in changes.items():
        text = re.sub(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "finetune.config"
    path.write_text(text)
    write_dataset(tmp_path / "clinic", count=10, size=(160, 120), seed=4)
    return path


def test_the_shipped_reference_model_fine_tunes_on_a_clinics_pairs(tmp_path):
    import keras

    assert REFERENCE.is_file(), "the reference model for fine-tuning ships in reference/"
    config = clinic_config(tmp_path)
    out = tmp_path / "runs" / "clinic"
    result = runner.invoke(
        app, ["train", "--config", str(config), "--init-weights", str(REFERENCE), "--output", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    tuned = keras.saving.load_model(out / "last.keras", compile=False)
    reference = keras.saving.load_model(REFERENCE, compile=False)
    for name in ("enc0_conv1", "mask"):
        before = reference.get_layer(name).get_weights()[0].ravel()
        after = tuned.get_layer(name).get_weights()[0].ravel()
        assert np.corrcoef(before, after)[0, 1] > 0.95, name  # started from the reference, moved a little


def test_a_config_that_builds_another_network_is_refused_in_one_line(tmp_path):
    config = clinic_config(tmp_path, base_filters="8")
    out = tmp_path / "runs" / "clinic"
    result = runner.invoke(
        app, ["train", "--config", str(config), "--init-weights", str(REFERENCE), "--output", str(out), "--quiet"]
    )
    assert result.exit_code == 2 and "init weights" in result.output and "Traceback" not in result.output
    assert not out.exists()
