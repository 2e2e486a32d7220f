"""The options of `skinseg infer` and `skinseg evaluate` and the options objects of the runtime agree: every
option's name, and its default, is declared once (skinseg.runtime.options) and the flags follow."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer

from skinseg.cli import app
from skinseg.flags import infer_options, segment_options
from skinseg.runtime.options import InferOptions, SegmentOptions
from skinseg.runtime.segmenter import Segmenter

# Parameters of the commands that are not options of an image's segmentation or of the batch's work on it.
COMMAND_ONLY = {
    "infer": {"sources", "output", "model", "wait", "quiet", "log_file", "log_format", "recursive", "scheduler",
              "tls_ca_file", "tls_cert", "tls_key"},
    "evaluate": {"images", "masks", "output", "model", "stems", "worst", "quiet", "review_below"},
}  # fmt: skip
NOT_FLAGS = {"model_sha256"}  # set by the run (the model it pinned), never by the user


def cli_defaults(command: str) -> dict[str, object]:
    params = typer.main.get_command(app).commands[command].params
    return {p.name: p.default for p in params}


def names(options_type: type) -> set[str]:
    return {f.name for f in dataclasses.fields(options_type)} - NOT_FLAGS


@pytest.mark.parametrize(("command", "options_type"), [("infer", InferOptions), ("evaluate", SegmentOptions)])
def test_each_option_is_a_flag_and_each_flag_an_option(command, options_type):
    flags = set(cli_defaults(command)) - COMMAND_ONLY[command]
    assert flags == names(options_type)


def test_the_flags_defaults_are_the_options_defaults():
    """The CLI's defaults, in their CLI form (``auto``, ``green``, ``2048``), make the options' defaults."""
    infer = cli_defaults("infer")
    segment = segment_options(**{name: infer[name] for name in names(SegmentOptions)})
    batch = names(InferOptions) - names(SegmentOptions)
    assert segment == SegmentOptions()
    assert infer_options(segment, **{name: infer[name] for name in batch}) == InferOptions()
    evaluate = cli_defaults("evaluate")
    assert segment_options(**{name: evaluate[name] for name in names(SegmentOptions)}) == SegmentOptions()


def test_the_builders_take_every_option_by_name():
    """A renamed option breaks its builder at once (keyword-only, no ``**kwargs``): nothing is dropped silently."""
    segment = inspect.signature(segment_options).parameters
    batch = inspect.signature(infer_options).parameters
    assert set(segment) == names(SegmentOptions)
    assert set(batch) - {"segment"} == names(InferOptions) - names(SegmentOptions)
    assert all(p.kind is p.KEYWORD_ONLY for p in [*segment.values(), *list(batch.values())[1:]])


def test_segmenter_takes_the_options_and_refuses_an_unknown_one(standin_model):
    options = SegmentOptions(threshold=0.7, tile=32)
    seg = Segmenter(standin_model, options)
    assert (seg.threshold, seg.tile, seg.overlap) == (0.7, (32, 32), SegmentOptions().overlap)
    assert Segmenter(standin_model, options, threshold=0.2).threshold == 0.2  # a keyword changes one option
    with pytest.raises(TypeError, match="treshold"):
        Segmenter(standin_model, treshold=0.2)
