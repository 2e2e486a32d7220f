"""End-to-end training on synthetic data: the loss falls, the run directory is complete, STOP and resume work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

from typer.testing import CliRunner  # noqa: E402

from skinseg.cli import app  # noqa: E402
from skinseg.data.config import parse_config  # noqa: E402
from skinseg.data.synth import write_dataset  # noqa: E402

pytestmark = pytest.mark.train
runner = CliRunner()

CONFIG = """\
[model]
image_width = 64
image_height = 64
base_filters = 8
num_layers = 3
base_kernels = (3, 3)
dilation = (2, 2)
dropout_rate = 0.0
learning_rate = 0.005
loss = "bce_dice_loss"
metrics = ["binary_accuracy", "dice_coef"]
normalization = True

[train]
epochs = {epochs}
batch_size = 4
patience = 10
model_dir = "run"
image_datapath = "data/images"
mask_datapath = "data/masks"
valid_ratio = 0.25
seed = 3

[augmentor]
hflip = True
vflip = True
rotation = True
angles = [90, 180, 270]
shrinks = []
shears = []
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    write_dataset(root / "data", count=16, size=(96, 80), seed=5)
    return root


def _config(workdir: Path, epochs: int) -> Path:
    path = workdir / f"train{epochs}.config"
    path.write_text(CONFIG.format(epochs=epochs))
    return path


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_two_epochs_loss_falls_and_run_dir_is_complete(workdir):
    run = workdir / "run_a"
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(_config(workdir, 2)),
            "--output",
            str(run),
            "--steps-per-epoch",
            "6",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = _history(run)
    assert len(rows) == 2
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])
    for name in (
        "best_model.keras",
        "last.keras",
        "config.given.ini",
        "config.resolved.ini",
        "versions.json",
        "split.json",
        "curves.png",
        "state.json",
    ):
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["valid"]) and len(split["train"]) + len(split["valid"]) == 16
    resolved = parse_config((run / "config.resolved.ini").read_text(), source="resolved")
    assert resolved.train.epochs == 2 and resolved.train.steps_per_epoch == 6  # the CLI overrides are recorded

    again = runner.invoke(app, ["train", "--config", str(_config(workdir, 2)), "--output", str(run), "--quiet"])
    assert again.exit_code == 2 and "--force" in again.output  # never overwrites an old run silently

    resumed = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(_config(workdir, 3)),
            "--output",
            str(run),
            "--steps-per-epoch",
            "6",
            "--resume",
            "--quiet",
        ],
    )
    assert resumed.exit_code == 0, resumed.output
    assert [r["epoch"] for r in _history(run)] == ["1", "2", "3"]

    # a training still writing the run: a second one with --force (or --resume) stops at once, deleting nothing
    from skinseg.runtime.outputs import output_lock

    files = sorted(p.name for p in run.iterdir())
    with output_lock(run, command="train"):
        busy = runner.invoke(app, ["train", "--config", str(_config(workdir, 2)), "-o", str(run), "--force", "-q"])
    assert busy.exit_code == 2 and "another skinseg train" in busy.output, busy.output
    assert sorted(p.name for p in run.iterdir()) == files

    # another split and network under --resume: refused before any work, naming what differs (it trained on)
    other = workdir / "other.config"
    other.write_text(CONFIG.format(epochs=4).replace("valid_ratio = 0.25", "valid_ratio = 0.5")
                     .replace("base_filters = 8", "base_filters = 4"))  # fmt: skip
    changed = runner.invoke(
        app, ["train", "--config", str(other), "--output", str(run), "--steps-per-epoch", "6", "--resume", "--quiet"]
    )
    assert changed.exit_code == 2, changed.output
    assert "[model] base_filters 8 → 4" in changed.output and "[train] valid_ratio 0.25 → 0.5" in changed.output
    assert "validation pairs: 4 added" in changed.output
    assert [r["epoch"] for r in _history(run)] == ["1", "2", "3"]


def test_stop_file_ends_training_with_best_model(workdir):
    from skinseg.data.config import load_config
    from skinseg.data.run_folder import STOP_FILE
    from skinseg.training.trainer import train

    run = workdir / "run_stop"

    def touch_stop(event):  # a user creates STOP while the first epoch runs
        if event["event"] == "batch":
            (run / STOP_FILE).touch()

    cfg = load_config(_config(workdir, 5))
    cfg.train.steps_per_epoch = 3
    result = train(cfg, run_dir=run, on_event=touch_stop)
    assert result.stopped_by == "stop_file"
    assert result.epochs_run == 1 and len(_history(run)) == 1
    assert (run / "best_model.keras").is_file()


def test_same_seed_same_first_epoch(workdir):
    losses = []
    for name in ("run_s1", "run_s2"):
        result = runner.invoke(
            app,
            [
                "train",
                "--config",
                str(_config(workdir, 1)),
                "--output",
                str(workdir / name),
                "--steps-per-epoch",
                "3",
                "--quiet",
            ],
        )
        assert result.exit_code == 0, result.output
        losses.append(float(_history(workdir / name)[0]["loss"]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_missing_data_folder_is_a_clear_error(workdir, tmp_path):
    cfg = tmp_path / "c.config"
    cfg.write_text(CONFIG.format(epochs=1))
    result = runner.invoke(app, ["train", "--config", str(cfg), "--output", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2
    assert "data folder" in result.output and "data/images" in result.output


def test_fine_tuning_starts_from_the_given_model_and_refuses_another_architecture(workdir, tmp_path):
    """--init-weights: the first epoch of a fine-tune starts where the trained model ended (lower loss than a fresh
    start); a config the model does not fit is one clear line, and no run directory is left behind."""
    base = workdir / "run_ft_base"
    args = ["--steps-per-epoch", "6", "--quiet"]
    assert runner.invoke(app, ["train", "-c", str(_config(workdir, 2)), "-o", str(base), *args]).exit_code == 0
    tuned = workdir / "run_ft"
    result = runner.invoke(
        app,
        ["train", "-c", str(_config(workdir, 1)), "-o", str(tuned), "--init-weights", str(base / "last.keras"), *args],
    )
    assert result.exit_code == 0, result.output
    first_base = float(_history(base)[0]["loss"])
    assert float(_history(tuned)[0]["loss"]) < first_base
    resolved = parse_config((tuned / "config.resolved.ini").read_text(), source="resolved")
    assert resolved.train.init_weights == base / "last.keras"

    wider = workdir / "wider.config"
    wider.write_text(CONFIG.format(epochs=1).replace("base_filters = 8", "base_filters = 16"))
    bad = tmp_path / "bad_run"
    result = runner.invoke(
        app, ["train", "-c", str(wider), "-o", str(bad), "--init-weights", str(base / "last.keras"), "--quiet"]
    )
    assert result.exit_code == 2, result.output
    assert "init weights" in result.output and "enc0_conv1" in result.output and "Traceback" not in result.output
    assert not bad.exists()


def test_new_recipe_levers_train(workdir):
    """Cosine schedule with warm-up, per-image Jaccard loss, artefacts, colour constancy and separable blocks run
    together; the learning rate follows the cosine and ends near zero."""
    text = (
        CONFIG.format(epochs=2)
        .replace(
            'loss = "bce_dice_loss"',
            'loss = "bce_jaccard_loss"\nblock = "separable"\ncolor_constancy = "shades_of_gray"',
        )
        .replace("seed = 3", 'seed = 3\nlr_schedule = "cosine"\nwarmup_epochs = 0.5')
        .replace("shears = []", "shears = []\nhair = 0.5\nink = 0.3\nruler = 0.3\nvignette = 0.3\nwhite_balance = 0.5")
    )
    cfg = workdir / "levers.config"
    cfg.write_text(text)
    run = workdir / "run_levers"
    result = runner.invoke(app, ["train", "-c", str(cfg), "-o", str(run), "--steps-per-epoch", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    rates = [float(r["learning_rate"]) for r in _history(run)]
    assert rates[0] > rates[1] and rates[1] < 1e-4  # end of epoch 1: past the warm-up peak; end: decayed to ~0


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path):
    """Keras's TerminateOnNaN stopped as "finished" (exit 0), and the epoch's end saved NaN weights as last.keras."""
    import keras

    from skinseg.training.trainer import _run_tracker

    cfg = parse_config("[train]\nepochs = 5\n", source="t")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    run = tmp_path / "run"
    run.mkdir()
    tracker = _run_tracker(run, cfg, lambda e: None, steps=2, state={}, writer=True)
    tracker.set_model(model)
    tracker.on_epoch_begin(0)
    tracker.on_train_batch_end(0, {"loss": 1.0})
    tracker.on_epoch_end(0, {"loss": 1.0, "val_loss": 0.5})
    saved = (run / "last.keras").read_bytes()
    tracker.on_epoch_begin(1)
    tracker.on_train_batch_end(0, {"loss": float("nan")})
    assert model.stop_training and tracker.stopped_by == "nan"
    tracker.on_epoch_end(1, {"loss": float("nan"), "val_loss": float("nan")})
    assert (run / "last.keras").read_bytes() == saved and tracker.epoch == 1 and len(tracker.history) == 1


def test_a_config_with_an_infinite_learning_rate_is_refused():
    from skinseg.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="learning_rate = inf must be positive and finite"):
        parse_config("[model]\nlearning_rate = 1e400\n", source="t")


def test_resume_checks_the_recipe_and_the_pairs_not_where_the_project_lies(workdir, tmp_path):
    """A project copied to another disk resumes (its paths differ, its pairs do not); another seed does not."""
    import shutil

    from skinseg.data.config import load_config, render_config
    from skinseg.data.run_folder import RunFolder, Split
    from skinseg.training.recipe import find_splits
    from skinseg.training.trainer import resume_differences

    moved = tmp_path / "elsewhere"
    shutil.copytree(workdir / "data", moved / "data")
    before = load_config(_config(workdir, 2))
    (moved / "train.config").write_text(CONFIG.format(epochs=5))
    after = load_config(moved / "train.config")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.resolved.ini").write_text(render_config(before, comments=False))
    splits = find_splits(before)
    RunFolder(run).write_split(Split.of_pairs(splits.train, splits.valid, []))
    assert after.train.image_datapath != before.train.image_datapath
    assert resume_differences(run, after, find_splits(after)) == []
    after.train.seed = 4
    assert resume_differences(run, after, find_splits(after))[0] == "[train] seed 3 → 4"


def test_force_never_empties_the_folder_a_symlinked_run_directory_points_to(workdir, tmp_path):
    target = tmp_path / "2024-05-01"
    target.mkdir()
    (target / "best_model.keras").write_bytes(b"keep me")
    link = tmp_path / "latest"
    link.symlink_to(target, target_is_directory=True)
    result = runner.invoke(app, ["train", "--config", str(_config(workdir, 1)), "-o", str(link), "--force", "-q"])
    assert result.exit_code == 2 and "symbolic link" in result.output, result.output
    assert (target / "best_model.keras").read_bytes() == b"keep me"
