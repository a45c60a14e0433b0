"""Search checkpoints: everything a search needs to continue exactly, written after every episode.

The checkpoint file, rewritten atomically, holds the search settings, the next episode, the agent (networks,
optimisers, replay buffers, its own generators), the environment (its position in an episode) and the global generators
of python, numpy and torch. What only grows goes to the append-only sidecar ``<checkpoint>.history``
(length-prefixed, tagged pickles): the episode history, and every ``Sealed`` value of the agent's state (an
actor-critic's full snapshot, taken every ``SNAPSHOT_EVERY`` episodes, and its per-episode journal), written the
first time a save meets it and referred to by position afterwards. So a save writes a few tens of kB, not the
agents' ~6 MB, except when a snapshot is taken; the sidecar grows by one snapshot per ``SNAPSHOT_EVERY`` episodes.
The checkpoint records how many sidecar bytes are committed, so a record appended by a run killed before its
checkpoint is cut off on resume. Both are pickles: load only checkpoints you wrote.

Integrity: the checkpoint file is a header (format line, SHA-256 of the payload) followed by the payload, and the
payload holds the SHA-256 of the sidecar bytes it counts, so one flipped byte in either file is refused on resume
with an error naming the file (never unpickled, never resumed into different results). The sidecar is created by the
first save, so a search that fails before its first checkpoint leaves none.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from autoq.common.fileio import atomic_write_bytes
from autoq.host.rl.sealed import Sealed

from .rewards import SearchError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "autoq-search-checkpoint/5"  # 5: plain pickle; Sealed agent state in the sidecar (4: torch.save, all inline)
_HEADER = FORMAT.encode() + b"\n"
_DIGEST_HEX = 64  # SHA-256, hex
_LENGTH_BYTES = 8
_HISTORY, _SEALED = b"h", b"s"  # sidecar record kinds


def capture_rng() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def history_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".history")


class _Pickler(pickle.Pickler):
    """Pickles ``Sealed`` values by reference: ``stored`` (a sidecar offset), writing them first when new."""

    def __init__(self, file: io.BytesIO, store: Any) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.store = store

    def persistent_id(self, obj: Any) -> Any:
        return self.store(obj) if isinstance(obj, Sealed) else None


class _Unpickler(pickle.Unpickler):
    """Unpickles a checkpoint payload; each ``Sealed`` reference becomes a ``Sealed`` whose value is filled in once
    the sidecar is verified."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.sealed: list[Sealed] = []

    def persistent_load(self, pid: Any) -> Any:
        sealed = Sealed(None)
        sealed.stored = pid
        self.sealed.append(sealed)
        return sealed


class CheckpointWriter:
    """Writes the checkpoints of one search to ``path`` (and its history sidecar), starting from an empty history,
    or, with ``resume_from``, from a payload ``load_checkpoint`` returned."""

    def __init__(self, path: str | Path, resume_from: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self._records = len(resume_from["history"]) if resume_from else 0
        self._bytes = int(resume_from["history_bytes"]) if resume_from else 0
        self._digest = hashlib.sha256()
        self.bytes_written = 0  # by this writer, both files (what a save costs)
        self._key = str(history_path(self.path).resolve())
        if resume_from:
            sidecar = history_path(self.path)
            self._digest.update(_read_bytes(sidecar, self._bytes))
            if self._digest.hexdigest() != resume_from["history_sha256"]:
                raise SearchError(_damaged("search history", sidecar, "it changed after it was read", self.path))

    def save(self, payload: dict[str, Any]) -> None:
        """Append the records of ``payload["history"]`` not yet written and the ``Sealed`` values of the rest not
        yet stored, then write the rest of ``payload``."""
        history: Sequence[Any] = payload["history"]
        with open(history_path(self.path), "ab") as fh:
            fh.truncate(self._bytes)  # cut off what the checkpoint does not count (a run killed before its checkpoint)
            fh.seek(self._bytes)

            def append(kind: bytes, data: bytes) -> int:
                offset = self._bytes
                record = len(data).to_bytes(_LENGTH_BYTES, "little") + kind + data
                fh.write(record)
                self._digest.update(record)
                self._bytes += len(record)
                self.bytes_written += len(record)
                return offset

            def store(sealed: Sealed) -> Any:
                if sealed.stored is None or sealed.stored[2] != self._key:  # new, or stored by another search
                    offset = append(_SEALED, pickle.dumps(sealed.value, protocol=pickle.HIGHEST_PROTOCOL))
                    sealed.stored = (_SEALED, offset, self._key)
                return sealed.stored[:2]

            for record in history[self._records:]:
                append(_HISTORY, pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
            self._records = len(history)
            state = {k: v for k, v in payload.items() if k != "history"}
            buffer = io.BytesIO()
            _Pickler(buffer, store).dump({"format": FORMAT, **state})  # appends the new Sealed values
            fh.flush()
            os.fsync(fh.fileno())
        tail = io.BytesIO()
        pickle.dump({"history_records": self._records, "history_bytes": self._bytes,
                     "history_sha256": self._digest.hexdigest()}, tail, protocol=pickle.HIGHEST_PROTOCOL)
        body = len(buffer.getvalue()).to_bytes(_LENGTH_BYTES, "little") + buffer.getvalue() + tail.getvalue()
        data = _HEADER + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
        atomic_write_bytes(self.path, data)
        self.bytes_written += len(data)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload last saved to ``path``, with its ``history`` and ``Sealed`` values read back from the sidecar;
    both files verified before anything in them is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"no checkpoint to resume at {path}: start the search without --resume, or point --out at an earlier run's folder")
    data = _read_bytes(path, None, "checkpoint")
    if not data.startswith(_HEADER):
        older = data.startswith(b"PK") or data.startswith(b"autoq-search-checkpoint/")
        raise SearchError(f"checkpoint {path} cannot be read: it is not a search checkpoint of this autoq (format {FORMAT!r}"
                          + ("; it was written by another autoq version" if older else "") + "): resume it with the autoq "
                          "that wrote it, or start a fresh search with another --out")
    digest, body = data[len(_HEADER) : len(_HEADER) + _DIGEST_HEX], data[len(_HEADER) + _DIGEST_HEX + 1 :]
    if data[len(_HEADER) + _DIGEST_HEX : len(_HEADER) + _DIGEST_HEX + 1] != b"\n" or hashlib.sha256(body).hexdigest().encode() != digest:
        raise SearchError(_damaged("checkpoint", path, "its SHA-256 does not match its content", path))
    try:
        size = int.from_bytes(body[:_LENGTH_BYTES], "little")
        unpickler = _Unpickler(io.BytesIO(body[_LENGTH_BYTES : _LENGTH_BYTES + size]))
        payload = unpickler.load()
        payload.update(pickle.loads(body[_LENGTH_BYTES + size :]))
    except Exception as exc:  # verified bytes that do not unpickle: written by something else under our header
        raise SearchError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is not a search checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SearchError(f"{path} is not a search checkpoint (expected format {FORMAT!r})")
    history, sealed = _read_history(history_path(path), payload.pop("history_records"), payload["history_bytes"],
                                    payload["history_sha256"], path)
    key = str(history_path(path).resolve())
    for value in unpickler.sealed:
        kind, offset = value.stored
        if kind != _SEALED or offset not in sealed:
            raise SearchError(_damaged("search history", history_path(path), f"it holds no agent state at {offset}", path))
        value.value, value.stored = pickle.loads(sealed[offset]), (kind, offset, key)
    payload["history"] = history
    return payload


def _damaged(what: str, path: Path, why: str, checkpoint: Path) -> str:
    return (f"{what} {path} is damaged ({why}): the search cannot be resumed from it; start a fresh search with another --out, "
            f"or delete {checkpoint} and {history_path(checkpoint).name} to run this folder's search again from the start")


def _read_bytes(path: Path, size: int | None, what: str = "search history") -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read() if size is None else fh.read(size)
    except OSError as exc:
        raise SearchError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _read_history(path: Path, records: int, size: int, sha256: str, checkpoint: Path) -> tuple[list[Any], dict[int, bytes]]:
    """The history records of the sidecar, and the pickled ``Sealed`` values in it by offset."""
    data = _read_bytes(path, size)
    if len(data) != size:
        raise SearchError(_damaged("search history", path, f"shorter than the {size} bytes its checkpoint counts", checkpoint))
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SearchError(_damaged("search history", path, "its SHA-256 does not match the one its checkpoint recorded", checkpoint))
    history, sealed, offset = [], {}, 0
    while offset < len(data):  # verified: these are the bytes save() wrote
        start = offset
        length = int.from_bytes(data[offset : offset + _LENGTH_BYTES], "little")
        kind = data[offset + _LENGTH_BYTES : offset + _LENGTH_BYTES + 1]
        offset += _LENGTH_BYTES + 1 + length
        if kind == _HISTORY:
            history.append(pickle.loads(data[offset - length : offset]))
        else:
            sealed[start] = data[offset - length : offset]
    if offset != size or len(history) != records:
        raise SearchError(_damaged("search history", path, f"its checkpoint counts {records} records in {size} bytes", checkpoint))
    return history, sealed
