"""Crash-safe file writes (write a sibling temp file, fsync, then rename over the target), and reads whose failure
is an error of the caller's type naming the file."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_text(path: str | Path, error: type[Exception], what: str) -> str:
    """The text of ``path``; an unreadable file raises ``error("cannot read <what> <path>: <reason>")``."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
