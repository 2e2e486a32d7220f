"""The recipes shipped with skinseg (``configs/*.config``) and the config ``skinseg config init`` writes from one."""

from __future__ import annotations

import os
from pathlib import Path

from skinseg.data.config.coerce import suggest
from skinseg.data.config.load import load_config
from skinseg.data.config.render import render_config
from skinseg.data.config.schema import IGNORED_KEYS
from skinseg.runtime.errors import ConfigError

# The recipes shipped with skinseg: the repository's configs/*.config, installed as the package skinseg.configs.
RECIPES_PACKAGE = "skinseg.configs"
REFERENCE_RECIPE = "isic_reference"  # the reference recipe: what `skinseg config init` writes
# [section] keys naming data folders or files: `config init` moves them under the user's data folder
DATA_KEYS = {
    "train": ("image_datapath", "mask_datapath", "data_root", "exclude_stems_file"),
    "eval": ("image_datapath", "mask_datapath"),
    "test": ("image_datapath", "mask_datapath"),
}

CONFIG_HEADER = """\
; skinseg train_eval_infer.config: the recipe `{recipe}` (configs/{recipe}.config of skinseg), written by
; `skinseg config init`.
; Only keys that act are set; every other key keeps its default (`skinseg config show THIS_FILE` lists them all).
; Values are Python literals: numbers, "strings", True/False, None, (tuples) and [lists]. Nothing is evaluated.
; Relative paths resolve against this file's folder. CLI options (--epochs, --batch-size, ...) override values here.
; The data folders are those `skinseg data prepare --output {data}` makes from the ISIC archives.
; Train with:  skinseg train --config THIS_FILE
"""


def recipe_path(name: str = REFERENCE_RECIPE) -> Path:
    """The shipped recipe ``name`` (a file of ``configs/``, without ``.config``); ConfigError if there is none."""
    import importlib.resources

    try:
        folder = Path(str(importlib.resources.files(RECIPES_PACKAGE)))
    except (ModuleNotFoundError, TypeError):
        folder = Path(__file__).resolve().parents[2] / "configs"  # a checkout that was not installed
    path = folder / f"{name}.config"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.config")) if folder.is_dir() else []
        raise ConfigError(f"no recipe named {name!r}; {suggest(name, known) if known else 'reinstall skinseg'}")
    return path


def init_config_text(config_path: str | Path, *, data: str | Path = "data", recipe: str = REFERENCE_RECIPE) -> str:
    """The config ``skinseg config init`` writes to ``config_path``: the shipped ``recipe``, read from its file (so
    it follows the recipe), with only the keys that act. Its data folders move under ``data`` (taken from the
    current folder, written relative to the new file), keeping the data sets' names (``isic2017-train/images``); its run
    directory becomes ``runs/<config stem>`` next to the new file; other paths stay where the recipe points."""
    source = recipe_path(recipe)
    cfg = load_config(source)
    where = Path(os.path.abspath(config_path)).parent
    data_root = Path(os.path.abspath(data))
    found = [
        (section, key, getattr(getattr(cfg, section), key))
        for section, keys in DATA_KEYS.items()
        for key in keys
        if key in cfg.present.get(section, set()) and getattr(getattr(cfg, section), key) is not None
    ]
    paths = [p for _, _, v in found for p in (v if isinstance(v, list) else [v])]
    # the recipe's data root: above its data sets' folders (…/isic2017-train/images → …), so their names stay
    common = Path(os.path.commonpath([p.parent.parent for p in paths])) if paths else None

    def moved(p: Path) -> Path:
        assert common is not None
        target = data_root / (p.relative_to(common) if p != common else Path())
        return Path(os.path.relpath(target, where))

    for section, key, value in found:
        setattr(getattr(cfg, section), key, [moved(p) for p in value] if isinstance(value, list) else moved(value))
    if "model_dir" in cfg.present.get("train", set()):
        cfg.train.model_dir = Path("runs") / Path(config_path).stem
    for section, keys in IGNORED_KEYS.items():
        cfg.present[section] = cfg.present.get(section, set()) - set(keys)
    header = CONFIG_HEADER.format(recipe=recipe, data=Path(data).as_posix())
    return header + "\n" + render_config(cfg, only_present=True)


def default_config_text() -> str:
    """What ``skinseg config init my.config`` writes: the reference recipe, data under ``data/``."""
    return init_config_text("my.config")
