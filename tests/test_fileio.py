"""Atomic writes: a writer SIGKILLed between its temp file and the rename leaves ``.NAME.PID.tmp``; the next atomic
write into that folder removes it (and only temp files whose process is gone)."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from autoq.common.fileio import atomic_write_bytes, atomic_write_text, remove_stale_temps

KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from autoq.common import fileio

    fileio.os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed after fsync, before the rename
    fileio.atomic_write_text(sys.argv[1], "never renamed")
    """
)


def test_a_temp_file_left_by_a_sigkilled_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "plan.json"
    killed = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)])
    assert killed.wait(timeout=120) == -signal.SIGKILL
    stale = tmp_path / f".plan.json.{killed.pid}.tmp"
    assert stale.read_text() == "never renamed" and not target.exists()
    other_stale = tmp_path / f".summary.md.{killed.pid}.tmp"  # another file's temp in the same folder, also dead
    other_stale.write_text("x")
    atomic_write_text(target, "written")
    assert target.read_text() == "written"
    assert not stale.exists() and not other_stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_temp_files_of_live_processes_and_other_files_are_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".a.json.{sleeper.pid}.tmp"  # a writer still at work
        mine = tmp_path / f".b.json.{os.getpid()}.tmp"
        unrelated = [tmp_path / name for name in (".hidden.tmp", ".notes.txt", "c.123.tmp", ".x.12a.tmp")]
        for path in (live, mine, *unrelated):
            path.write_text("keep")
        assert remove_stale_temps(tmp_path) == []
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert all(p.exists() for p in (live, mine, *unrelated))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temps(tmp_path) == [live]  # once its writer is gone


def test_a_failed_write_leaves_no_temp_file(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "x.bin", "not bytes")
    assert list(tmp_path.iterdir()) == []
