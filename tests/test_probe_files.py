"""The files skinseg creates in an output folder are its own: the probe files are never opened through a link someone
put there (issue 20, item 17: the settings stamp's clock probe was touched without O_EXCL or no-follow), and a lock
file that is a symbolic link or a FIFO is refused with nothing written."""

from __future__ import annotations

import os

import pytest

import skinseg.runtime.outputs as outputs
from skinseg.runtime.errors import UsageError
from skinseg.runtime.outputs import LOCK_NAME, output_lock, prepare_output, stamp_settings


@pytest.fixture
def predictable_probe(monkeypatch):
    """The first probe name skinseg draws is known in advance (as if guessed); later ones are random."""
    real = outputs.secrets.token_hex
    names = iter(["deadbeef"])
    monkeypatch.setattr(outputs.secrets, "token_hex", lambda n=8: next(names, None) or real(n))
    return ".skinseg-probe-deadbeef"


def test_a_link_in_place_of_the_clock_probe_is_never_followed(tmp_path, predictable_probe, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "created-through-the-link"
    (out / predictable_probe).symlink_to(victim)  # dangling: a follower would create it
    stamp_settings(out, "0" * 64, {"threshold": None})
    assert not victim.exists()
    kept = elsewhere / "kept"
    kept.write_text("x")
    os.utime(kept, ns=(1_000_000_000, 1_000_000_000))
    os.unlink(out / predictable_probe)
    (out / predictable_probe).symlink_to(kept)
    monkeypatch.setattr(outputs.secrets, "token_hex", lambda n=8: "deadbeef")  # every name guessed
    stamp_settings(out, "1" * 64, {"threshold": None})  # other settings: a new stamp, the probe again
    assert kept.stat().st_mtime_ns == 1_000_000_000 and kept.read_text() == "x"
    assert [p.name for p in out.iterdir() if p.name.startswith(".skinseg-probe")] == [predictable_probe]


def test_the_output_folder_probe_does_not_follow_a_link_either(tmp_path, predictable_probe):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    (out / predictable_probe).symlink_to(victim)
    prepare_output(out)  # refuses or probes under another name, but never through the link
    assert not victim.exists()


# ----------------------------------------------------------------------------------------------------------- the lock


def test_a_lock_that_is_a_symlink_or_a_fifo_is_refused_and_nothing_is_written(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(UsageError, match="symbolic link"), output_lock(out):
        pass
    assert victim.read_text() == "precious"
    (out / LOCK_NAME).unlink()
    os.mkfifo(out / LOCK_NAME)
    with pytest.raises(UsageError, match="not a regular file"), output_lock(out):
        pass
