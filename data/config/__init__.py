"""Load, validate and resolve ``train_eval_infer.config`` files.

The format is the INI of the Tensorflow-Image-Segmentation-API project. Differences from that toolkit:

- values are parsed with :func:`ast.literal_eval` (numbers, strings, booleans, tuples, lists, None), never ``eval``;
- every section and key is checked against a typed schema (the dataclasses of :mod:`.schema`); an unknown key, or a
  value of the wrong type, is a :class:`ConfigError` naming the file, line, key and a close valid spelling;
- the seed's misspelling ``alpah`` is read as ``alpha``, and its [augmentor] ``alpah``/``sigmoid`` as
  [deformation] ``alpha``/``sigmoid`` (each setting has one section), with a warning;
- relative paths resolve against the config file's folder (checked only by the command that needs them);
- CLI options override file values (:func:`apply_overrides`), typed and checked like the file's.

The modules, by job: :mod:`.schema` (sections, types, defaults, the seed's spellings), :mod:`.ini` (INI text to
raw values with line numbers), :mod:`.literals` (one value, never evaluated), :mod:`.coerce` (a value against a
type hint), :mod:`.validate` (ranges, known names, ignored keys), :mod:`.load` (a file to a :class:`Config`),
:mod:`.overrides`, :mod:`.render` (a config back to INI) and :mod:`.recipes` (the shipped recipes, ``config init``).
"""

from __future__ import annotations

from skinseg.data.config.coerce import coerce
from skinseg.data.config.ini import ConfigErrors, RawValue, parse_ini
from skinseg.data.config.literals import parse_literal
from skinseg.data.config.load import load_config, parse_config
from skinseg.data.config.overrides import apply_overrides
from skinseg.data.config.recipes import (
    CONFIG_HEADER,
    DATA_KEYS,
    RECIPES_PACKAGE,
    REFERENCE_RECIPE,
    default_config_text,
    init_config_text,
    recipe_path,
)
from skinseg.data.config.render import render_config
from skinseg.data.config.schema import (
    ALIASES,
    BLOCKS,
    ENCODERS,
    IGNORED_KEYS,
    IGNORED_WHY,
    LR_SCHEDULES,
    MOVED,
    SECTIONS,
    AugmentorSection,
    BrighteningSection,
    Config,
    DataPathsSection,
    DeformationSection,
    DistortionSection,
    GeneratorSection,
    InferSection,
    MaskSection,
    ModelSection,
    Probability,
    RadialDistortionSection,
    SegmentationSection,
    SharpeningSection,
    TiledInferSection,
    TrainSection,
)
from skinseg.data.config.validate import (
    ACTIVATION_NAMES,
    LOSS_NAMES,
    METRIC_NAMES,
    MODEL_NAMES,
    OPTIMIZER_NAMES,
    ignored_keys_warning,
    require_dir,
)
from skinseg.runtime.errors import ConfigError

__all__ = [
    "ACTIVATION_NAMES",
    "ALIASES",
    "BLOCKS",
    "CONFIG_HEADER",
    "DATA_KEYS",
    "ENCODERS",
    "IGNORED_KEYS",
    "IGNORED_WHY",
    "LOSS_NAMES",
    "LR_SCHEDULES",
    "METRIC_NAMES",
    "MODEL_NAMES",
    "MOVED",
    "OPTIMIZER_NAMES",
    "RECIPES_PACKAGE",
    "REFERENCE_RECIPE",
    "SECTIONS",
    "AugmentorSection",
    "BrighteningSection",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "DataPathsSection",
    "DeformationSection",
    "DistortionSection",
    "GeneratorSection",
    "InferSection",
    "MaskSection",
    "ModelSection",
    "Probability",
    "RadialDistortionSection",
    "RawValue",
    "SegmentationSection",
    "SharpeningSection",
    "TiledInferSection",
    "TrainSection",
    "apply_overrides",
    "coerce",
    "default_config_text",
    "ignored_keys_warning",
    "init_config_text",
    "load_config",
    "parse_config",
    "parse_ini",
    "parse_literal",
    "recipe_path",
    "render_config",
    "require_dir",
]
