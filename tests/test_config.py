"""Config loading: the seed file loads as is, errors name file/line/key and a fix (values train would reject too),
nothing is evaluated. Arbitrary input: ``tests/test_config_hostile_input.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from skinseg.data.config import (
    apply_overrides,
    default_config_text,
    load_config,
    parse_config,
    parse_literal,
    render_config,
)
from skinseg.runtime.errors import ConfigError
from tests.support import invoke

SEED = Path(__file__).parent / "data" / "seed_train_eval_infer.config"


def test_seed_config_loads_as_is():
    cfg = load_config(SEED)
    assert cfg.model.image_width == 512 and cfg.model.image_height == 512
    assert cfg.model.base_kernels == (5, 5) and cfg.model.dilation == (2, 2)
    assert cfg.model.num_layers == 7 and cfg.model.base_filters == 16
    assert cfg.model.loss == "bce_dice_loss" and cfg.model.metrics == ["binary_accuracy"]
    assert cfg.train.epochs == 100 and cfg.train.save_weights_only is True
    assert cfg.segmentation.blursize is None
    assert cfg.augmentor.angles == [0, 90, 180, 270]
    assert cfg.deformation.alpha == 1300  # spelled `alpah` in the file, in [augmentor]
    assert any("alpah" in w and ":75:" in w for w in cfg.warnings)


def test_relative_paths_resolve_against_the_config_folder_and_are_not_checked(tmp_path):
    cfg = load_config(SEED)
    expected = (SEED.parent / "../../../dataset/Skin-Cancer/train/images/").resolve()
    assert cfg.train.image_datapath == [expected] or cfg.train.image_datapath == expected
    assert not expected.exists()  # loading did not require it


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[model]\nlearning_rat = 0.1\n", [":2:", "learning_rat", "did you mean `learning_rate`"]),
        ("[modle]\n", ["unknown section [modle]", "did you mean `model`"]),
        ('[model]\nimage_width = "abc"\n', [":2:", "image_width", "expected int"]),
        ("[model]\nbase_kernels = (5, 5, 5)\n", ["base_kernels", "tuple of 2"]),
        ("[train]\nepochs = 0\n", ["epochs", "positive"]),
        ("[augmentor]\nhflip = 1.5\n", ["hflip", "probability"]),
        ("[model]\nimage_width = 5\nimage_width = 6\n", [":3:", "set twice", "line 2"]),
        ("image_width = 5\n", ["before any [section]"]),
        ("[model]\nthis is not ini\n", [":2:", "cannot read"]),
    ],
)
def test_bad_config_errors_name_line_key_and_fix(text, fragments):
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="my.config")
    message = str(info.value)
    assert message.startswith("my.config")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    "payload",
    [
        '__import__("os").system("touch PWNED")',
        "open('/etc/passwd').read()",
        "[x for x in ().__class__.__base__.__subclasses__()]",
        "lambda: 1",
        "1 if True else 2",
    ],
)
def test_code_in_values_is_a_config_error_not_code(payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        parse_config(f"[model]\nloss = {payload}\n", source="evil.config")
    assert "not a literal" in str(info.value)
    assert not (tmp_path / "PWNED").exists()


def test_literals_and_bare_strings():
    assert parse_literal("(5,5)", expects_str=False) == (5, 5)
    assert parse_literal("None", expects_str=False) is None
    assert parse_literal('"x" ; comment', expects_str=True) == "x"
    assert parse_literal("relu", expects_str=True) == "relu"
    with pytest.raises(ValueError):
        parse_literal("relu", expects_str=False)


def test_probability_values_accept_bool_or_float():
    cfg = parse_config("[augmentor]\nhflip = 0.25\nvflip = False\n")
    assert cfg.augmentor.hflip == 0.25 and cfg.augmentor.vflip is False


def test_overrides_win_and_are_checked():
    cfg = load_config(SEED)
    apply_overrides(cfg, {"train.epochs": 3, "train.batch_size": None, "model.learning_rate": 0.01})
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 4 and cfg.model.learning_rate == 0.01
    with pytest.raises(ConfigError):
        apply_overrides(cfg, {"train.epochs": 0})
    with pytest.raises(ConfigError, match="did you mean"):
        apply_overrides(cfg, {"train.epoch": 3})


def test_overrides_name_an_unknown_section_and_read_the_seeds_names_like_a_file():
    """An unknown section is a ConfigError naming the key (not an AttributeError); the seed's spellings and places
    (``augmentor.alpah``) are read as the file form reads them, with a warning."""
    cfg = load_config(SEED)
    with pytest.raises(ConfigError, match="bogus.x"):
        apply_overrides(cfg, {"bogus.x": 1})
    with pytest.raises(ConfigError, match="did you mean `train`"):
        apply_overrides(cfg, {"trian.epochs": 1})
    apply_overrides(cfg, {"augmentor.alpah": "500", "deformation.sigmoid": 6, "augmentor.sigmoids": [4.0, 6.0]})
    from_file = parse_config("[augmentor]\nalpah = 500\nsigmoids = [4.0, 6.0]\n[deformation]\nsigmoid = 6\n")
    assert (
        (cfg.deformation.alpha, cfg.deformation.sigmoid, cfg.deformation.sigmoids)
        == (
            from_file.deformation.alpha,
            from_file.deformation.sigmoid,
            from_file.deformation.sigmoids,
        )
        == (500.0, 6.0, [4.0, 6.0])
    )
    assert any("augmentor.alpah" in w and "deformation.alpha" in w for w in cfg.warnings)
    assert not any("`deformation.sigmoid`" in w for w in cfg.warnings)  # its own name: no warning


def test_overrides_are_typed_like_file_values():
    """Text from an override is read as the file reads a value: "0.001" is the float, as in the file."""
    cfg = load_config(SEED)
    apply_overrides(
        cfg,
        {
            "model.learning_rate": "0.001",
            "train.epochs": "7",
            "train.mixed_precision": "True",
            "train.image_datapath": Path("my images"),
            "train.freeze_encoder_epochs": 1,
        },
    )
    from_file = parse_config(
        "[model]\nlearning_rate = 0.001\n[train]\nepochs = 7\nmixed_precision = True\nfreeze_encoder_epochs = 1\n"
    )
    assert cfg.model.learning_rate == from_file.model.learning_rate and type(cfg.model.learning_rate) is float
    assert cfg.train.epochs == 7 and type(cfg.train.epochs) is int
    assert cfg.train.mixed_precision is True
    assert cfg.train.freeze_encoder_epochs == 1.0 and type(cfg.train.freeze_encoder_epochs) is float
    assert cfg.train.image_datapath == [Path("my images")]  # one folder where a list is expected, as in a file
    with pytest.raises(ConfigError, match="model.learning_rate"):
        apply_overrides(cfg, {"model.learning_rate": "fast"})
    with pytest.raises(ConfigError, match="train.epochs"):
        apply_overrides(cfg, {"train.epochs": "2.5"})


def test_the_seed_deformation_keys_in_augmentor_are_read_into_deformation():
    """Each setting has one section: the toolkit's [augmentor] alpah/sigmoid(s) are [deformation]'s, with a warning;
    where both sections set one, [deformation]'s value is used whatever the order."""
    cfg = parse_config("[augmentor]\ntransformer = True\nalpah = 500\nsigmoids = [4.0, 6.0]\n", source="s.config")
    assert (cfg.deformation.alpha, cfg.deformation.sigmoids) == (500.0, [4.0, 6.0])
    assert cfg.present["deformation"] == {"alpha", "sigmoids"} and "alpha" not in cfg.present["augmentor"]
    assert any("s.config:3:" in w and "[deformation] `alpha`" in w for w in cfg.warnings)
    assert not hasattr(cfg.augmentor, "alpha")
    again = parse_config(render_config(cfg), source="again")  # the resolved config keeps the value
    assert again.deformation.alpha == 500.0 and again.deformation.sigmoids == [4.0, 6.0]
    for text in (
        "[augmentor]\nalpha = 500\n[deformation]\nalpha = 300\n",
        "[deformation]\nalpha = 300\n[augmentor]\nalpha = 500\n",
    ):
        both = parse_config(text, source="b.config")
        assert both.deformation.alpha == 300.0
        assert any("is ignored" in w and "[augmentor] `alpha`" in w for w in both.warnings)
    with pytest.raises(ConfigError, match=r"b.config:2: \[augmentor\] sigmoid"):
        parse_config('[augmentor]\nsigmoid = "soft"\n', source="b.config")


def test_render_round_trips():
    cfg = load_config(SEED)
    again = parse_config(render_config(cfg), source="again")
    assert again.to_dict() == cfg.to_dict()


def test_default_config_is_valid():
    cfg = parse_config(default_config_text(), source="default")  # the reference recipe (tests/test_config_init.py)
    assert cfg.warnings == [] and cfg.model.image_width % 2 ** (cfg.model.num_layers - 1) == 0


def test_missing_file_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match="skinseg config init"):
        load_config(tmp_path / "nope.config")


def test_keys_that_change_nothing_are_named_in_one_warning():
    """The seed's format has keys skinseg reads but does not use: setting them says so, once, in one line."""
    cfg = parse_config(
        "[model]\nshow_summary = True\n[tiledinfer]\noverlapping = 64\nsplit_size = 512\n[mask]\nblur = True\n",
        source="my.config",
    )
    ignored = [w for w in cfg.warnings if "no effect" in w]
    assert len(ignored) == 1 and "\n" not in ignored[0]
    assert "[model] show_summary" in ignored[0] and "[tiledinfer] overlapping, split_size" in ignored[0]
    assert "[mask] blur" in ignored[0] and ignored[0].startswith("my.config:")
    assert not [w for w in parse_config("[model]\nbase_filters = 8\n").warnings if "no effect" in w]


def test_every_schema_key_is_used_somewhere_or_listed_as_ignored():
    """A key added to the schema but read nowhere would be checked, then silently ignored: this finds it."""
    import dataclasses
    import re

    from skinseg.data.config import IGNORED_KEYS, SECTIONS

    root = Path(__file__).resolve().parents[1]
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for folder in ("runtime", "data", "exporters", "training", "skinseg_cli")
        for p in (root / folder).rglob("*.py")
        if p.name != "config.py" and p.parent.name != "config"  # the schema's own package (data/config/)
    )
    unused = [
        f"[{section}] {f.name}"
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if f.name not in IGNORED_KEYS.get(section, ()) and not re.search(rf"\.{f.name}\b", code)
    ]
    assert unused == [], f"read nowhere and not in IGNORED_KEYS: {unused}"
    for section, keys in IGNORED_KEYS.items():
        assert set(keys) <= {f.name for f in dataclasses.fields(SECTIONS[section])}, section


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.config")), ids=lambda p: p.name
)
def test_every_shipped_config_loads(path):
    """The recipe, the fine-tuning template, the demo and every lever screen stay valid as the schema moves."""
    cfg = load_config(path)
    assert cfg.model.image_width > 0 and cfg.train.epochs > 0


# ------------------------------------------------------------------------------------------ values train would reject


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('optimizer = "SGD"', "optimizer"),
        ('model = "Foo"', "model"),
    ],
)
def test_config_values_train_would_reject_are_errors_at_load_with_file_and_line(tmp_path, line, words):
    cfg = tmp_path / "c.config"
    cfg.write_text(f"[model]\nimage_width = 64\nimage_height = 64\n{line}\n")
    result = invoke("config", "show", cfg)
    assert result.exit_code == 2, result.output
    assert f"{cfg}:4" in result.output.replace("\n", "") and words in result.output


def test_lowercase_true_suggests_true(tmp_path):
    cfg = tmp_path / "c.config"
    cfg.write_text("[augmentor]\nhflip = true\n")
    result = invoke("config", "show", cfg)
    assert result.exit_code == 2 and "True" in result.output
