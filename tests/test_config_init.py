"""`skinseg config init` writes the shipped reference recipe (read from its file), with only the keys that act; a
config's errors are all reported at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skinseg.cli import app
from skinseg.data.config import (
    IGNORED_KEYS,
    SECTIONS,
    ConfigError,
    ConfigErrors,
    init_config_text,
    load_config,
    parse_config,
    recipe_path,
)
from skinseg.data.config import recipes as config_module

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _acting(cfg) -> dict[str, dict]:
    """The values of the keys a config sets, paths left out (init moves them)."""
    out = {}
    for section in SECTIONS:
        sub = getattr(cfg, section)
        hints = {f.name: f.type for f in dataclasses.fields(sub)}
        out[section] = {
            k: getattr(sub, k) for k in sorted(cfg.present.get(section, set())) if "Path" not in str(hints[k])
        }
    return out


def test_the_shipped_recipe_is_the_repository_file():
    assert recipe_path() == ROOT / "configs" / "isic_reference.config"


def test_init_writes_the_reference_recipe_with_only_keys_that_act(tmp_path):
    path = tmp_path / "my.config"
    result = runner.invoke(app, ["config", "init", str(path)])
    assert result.exit_code == 0, result.output
    written = load_config(path)
    reference = load_config(ROOT / "configs" / "isic_reference.config")
    assert _acting(written) == _acting(reference)  # the recipe's values, not the schema's defaults
    assert written.warnings == []  # `config show` has nothing to warn about
    for section, keys in IGNORED_KEYS.items():
        assert not set(keys) & written.present.get(section, set())
    set_keys = sum(len(v) for v in written.present.values())
    assert set_keys == sum(len(v) for v in reference.present.values())  # not the ~100 keys of the schema
    shown = runner.invoke(app, ["config", "show", str(path)])
    assert shown.exit_code == 0 and "warning" not in shown.output


def test_init_points_the_data_paths_at_the_data_folder_and_the_run_at_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    result = runner.invoke(app, ["config", "init", "cfg/a.config", "--data", "prepared"])
    assert result.exit_code == 0, result.output
    cfg = load_config(tmp_path / "cfg" / "a.config")
    assert cfg.train.image_datapath == [tmp_path / "prepared" / "isic2017-train" / "images"]
    assert cfg.train.mask_datapath == [tmp_path / "prepared" / "isic2017-train" / "masks"]
    assert cfg.eval.image_datapath == [tmp_path / "prepared" / "isic-raw" / "images"]
    assert cfg.train.model_dir == tmp_path / "cfg" / "runs" / "a"
    text = (tmp_path / "cfg" / "a.config").read_text()
    assert '"../prepared/isic2017-train/images"' in text  # relative to the file: the folder can move


def test_init_with_quotes_and_backslashes_in_the_data_folder_reads_back(tmp_path, monkeypatch):
    """A double quote in --data was written unescaped: a config that `config show` could not read."""
    monkeypatch.chdir(tmp_path)
    data = 'my data/with "quote\\and back'
    result = runner.invoke(app, ["config", "init", "a.config", "--data", data])
    assert result.exit_code == 0, result.output
    cfg = load_config(tmp_path / "a.config")
    assert cfg.train.image_datapath == [tmp_path / data / "isic2017-train" / "images"]
    assert runner.invoke(app, ["config", "show", "a.config"]).exit_code == 0


def test_rendered_strings_with_line_breaks_of_every_kind_read_back():
    """JSON leaves U+0085, U+2028 and U+2029 raw; the INI reader's splitlines() broke the value there."""
    from skinseg.data.config import render_config

    cfg = parse_config('[train]\nmodel_dir = "runs"\n', source="t")
    cfg.train.model_dir = Path('a\x85b\u2028c\u2029d"e\nf')
    again = parse_config(render_config(cfg), source="t")
    assert again.train.model_dir == cfg.train.model_dir


def test_init_follows_the_recipe_file_rather_than_a_copy_of_its_values(tmp_path, monkeypatch):
    recipe = tmp_path / "isic_reference.config"
    recipe.write_text(
        "[model]\nlearning_rate = 0.0123\nnum_layers = 4\n[train]\nepochs = 7\nshow_history = True\n"
        'image_datapath = "../d/x/images"\nmask_datapath = "../d/x/masks"\n'
    )
    monkeypatch.setattr(config_module, "recipe_path", lambda name="isic_reference": recipe)
    cfg = parse_config(init_config_text(tmp_path / "n.config", data=tmp_path / "mine"), base_dir=tmp_path)
    assert cfg.model.learning_rate == 0.0123 and cfg.model.num_layers == 4 and cfg.train.epochs == 7
    assert "show_history" not in cfg.present["train"]  # a key that changes nothing is not written
    assert cfg.train.image_datapath == [tmp_path / "mine" / "x" / "images"]


def test_init_other_recipes_and_an_unknown_one(tmp_path):
    assert runner.invoke(app, ["config", "init", str(tmp_path / "f.config"), "--recipe", "finetune"]).exit_code == 0
    assert (
        load_config(tmp_path / "f.config").model.learning_rate
        == load_config(recipe_path("finetune")).model.learning_rate
    )
    result = runner.invoke(app, ["config", "init", str(tmp_path / "g.config"), "--recipe", "finetun"])
    assert result.exit_code == 2 and "did you mean `finetune`" in result.output and not (tmp_path / "g.config").exists()


def test_init_never_overwrites_without_force(tmp_path):
    path = tmp_path / "x.config"
    path.write_text("mine")
    assert runner.invoke(app, ["config", "init", str(path)]).exit_code == 2 and path.read_text() == "mine"
    assert runner.invoke(app, ["config", "init", str(path), "--force"]).exit_code == 0 and "[model]" in path.read_text()


BAD = """\
[model]
learning_rat = 0.1
dropout_rate = 2.0
loss = "bce_dise"
[train]
epochs = "ten"
batch_size = 0
batch_size = 4
[trian]
x = 1
"""


def test_every_error_of_a_config_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigErrors) as info:
        parse_config(BAD, source="bad.config")
    messages = info.value.messages
    assert len(messages) == 7, messages
    for needle in ("learning_rat", "dropout_rate", "bce_dise", "epochs", "batch_size = 0", "set twice", "[trian]"):
        assert sum(needle in m for m in messages) == 1, (needle, messages)
    lines = [int(m.split(":")[1]) for m in messages if m.split(":")[1].isdigit()]
    assert lines == sorted(lines)  # in the file's order
    assert isinstance(info.value, ConfigError)  # callers that catch ConfigError still do


def test_the_cli_prints_each_config_error_on_its_own_line(tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_text(BAD)
    result = runner.invoke(app, ["config", "show", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 7 and all(line.startswith("error: ") for line in lines)


def test_a_config_with_one_error_still_gives_one_line(tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_text("[model]\nlearning_rat = 0.1\n")
    result = runner.invoke(app, ["config", "show", str(bad)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_demo_config_says_how_to_use_it_and_no_longer_mentions_make_demo_training():
    text = (ROOT / "configs" / "demo.config").read_text()
    assert "skinseg synth runs/demo-data" in text and "skinseg train --config configs/demo.config" in text
    cfg = load_config(ROOT / "configs" / "demo.config")
    assert cfg.train.image_datapath == [ROOT / "runs" / "demo-data" / "images"]
