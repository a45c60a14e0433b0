"""Search checkpoints: everything a search needs to continue exactly, written after every episode.

The checkpoint file, rewritten atomically, holds the search settings, the next episode, the agent (networks,
optimisers, replay buffers, its own generators), the environment (position, accuracy memo) and the global generators
of python, numpy and torch. The episode history, which only grows, goes to the append-only sidecar
``<checkpoint>.history`` (length-prefixed pickles); the checkpoint records how many of its bytes are committed, so
a save costs the same at episode 1000 as at episode 1 and a record appended by a run killed before its checkpoint is
cut off on resume. Both are pickles: load only checkpoints you wrote.
"""
from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from autoq.common.fileio import atomic_write_bytes

from .rewards import SearchError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "autoq-search-checkpoint/2"
_LENGTH_BYTES = 8


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


class CheckpointWriter:
    """Writes the checkpoints of one search to ``path`` (and its history sidecar), starting from an empty history,
    or, with ``resume_from``, from a payload ``load_checkpoint`` returned."""

    def __init__(self, path: str | Path, resume_from: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self._records = len(resume_from["history"]) if resume_from else 0
        self._bytes = int(resume_from["history_bytes"]) if resume_from else 0
        with open(history_path(self.path), "ab") as fh:  # cut off what the checkpoint does not count
            fh.truncate(self._bytes)

    def save(self, payload: dict[str, Any]) -> None:
        """Append the records of ``payload["history"]`` not yet written, then write the rest of ``payload``."""
        history: Sequence[Any] = payload["history"]
        with open(history_path(self.path), "ab") as fh:
            for record in history[self._records:]:
                data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
                fh.write(len(data).to_bytes(_LENGTH_BYTES, "little") + data)
            fh.flush()
            os.fsync(fh.fileno())
            self._bytes = fh.tell()
        self._records = len(history)
        state = {k: v for k, v in payload.items() if k != "history"}
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, **state, "history_records": self._records, "history_bytes": self._bytes}, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload last saved to ``path``, with its ``history`` read back from the sidecar."""
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"no checkpoint to resume at {path}: start the search without --resume, or point --out at an earlier run's folder")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, AttributeError, ModuleNotFoundError) as exc:
        raise SearchError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is not a search checkpoint or is damaged") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SearchError(f"{path} is not a search checkpoint (expected format {FORMAT!r})")
    payload["history"] = _read_history(history_path(path), payload.pop("history_records"), payload["history_bytes"])
    return payload


def _read_history(path: Path, records: int, size: int) -> list[Any]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(size)
    except OSError as exc:
        raise SearchError(f"cannot read the search history {path}: {exc.strerror}") from None
    history, offset = [], 0
    try:
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + _LENGTH_BYTES], "little")
            offset += _LENGTH_BYTES + length
            history.append(pickle.loads(data[offset - length : offset]))
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise SearchError(f"search history {path} is damaged ({exc})") from None
    if len(data) != size or offset != size or len(history) != records:
        raise SearchError(f"search history {path} is damaged: its checkpoint counts {records} records in {size} bytes")
    return history
