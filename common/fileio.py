"""Crash-safe file writes (write a sibling temp file ``.NAME.PID.tmp``, fsync, then rename over the target), and
reads whose failure is an error of the caller's type naming the file.

A writer killed before its rename (SIGKILL, power cut) leaves its temp file behind; every atomic write removes the
temp files in its folder whose writer process is no longer alive.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    remove_stale_temps(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.PID.tmp`` files in ``folder`` whose process ``PID`` is not alive; returns them."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed  # a missing or unreadable folder: the write itself reports it
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False) or _alive(int(match.group(1))):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue  # removed by another writer meanwhile, or not ours to remove
        removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or no such pid at all)
        return False
    except PermissionError:  # another user's live process
        return True
    return pid > 0


def read_text(path: str | Path, error: type[Exception], what: str) -> str:
    """The text of ``path``; an unreadable file raises ``error("cannot read <what> <path>: <reason>")``."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc  # the cause keeps errno and filename
