"""The one atomic writer: unique temporary names, nothing left on error, long names, stale temps of killed writers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from skinseg.runtime import atomic


def test_a_write_replaces_the_file_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old\n")
    atomic.write_bytes_atomic(target, b"new\n")
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_an_error_mid_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic.atomic_path(target, suffix=".keras") as tmp:
        assert tmp.name.endswith(".tmp.keras") and tmp.exists()
        tmp.write_text("half")
        raise RuntimeError("killed mid-save")
    assert target.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_two_writers_of_one_file_never_share_a_temp(tmp_path):
    """Concurrent writers (threads here; processes get distinct pids too) each finish with a whole file."""
    target = tmp_path / "state.json"
    errors = []

    def write(i):
        try:
            for _ in range(50):
                atomic.write_json_atomic(target, {"writer": i, "pad": "x" * 1000})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and '"writer"' in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_name_too_long_for_a_temp_suffix_still_writes(tmp_path):
    name = "p" * 236 + "_overlay.jpg"  # 248 bytes: fits the filesystem, not with a temp suffix added
    atomic.write_bytes_atomic(tmp_path / name, b"x")
    assert (tmp_path / name).read_bytes() == b"x"
    temp = atomic.temp_name(name)
    assert len(os.fsencode(temp)) <= atomic.NAME_MAX and atomic.temp_target(temp).endswith("_overlay.jpg")


def test_stale_temps_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".a_mask.png.{dead_pid}-0123abcd.tmp"
    live = tmp_path / f".a_mask.png.{os.getpid()}-89abcdef.tmp"
    mine = tmp_path / ".notes.txt"  # not a temp name: never touched
    for p in (stale, live, mine):
        p.write_text("x")
    assert atomic.remove_stale_temps(tmp_path) == 1
    assert not stale.exists() and live.exists() and mine.exists()
    assert atomic.remove_stale_temps(tmp_path, target=lambda n: n.endswith(".csv"), any_process=True) == 0
    assert atomic.remove_stale_temps(tmp_path, any_process=True) == 1 and not live.exists() and mine.exists()


def test_an_unwritable_folder_fails_before_any_work(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(PermissionError), atomic.atomic_path(folder / "x.png"):
        pytest.fail("the block must not run")
