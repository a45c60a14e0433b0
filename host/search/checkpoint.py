"""Search checkpoints: everything a search needs to continue exactly, in one file written atomically.

The file holds the search settings, the next episode, the agent (networks, optimisers, replay buffers, its own
generators), the environment (position, accuracy memo), the global generators of python, numpy and torch, and the
episode history. It is a ``torch.save`` pickle: load only checkpoints you wrote.
"""
from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoq.common.fileio import atomic_write_bytes

from .rewards import SearchError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "autoq-search-checkpoint/1"


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


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"no checkpoint to resume at {path}: start the search without --resume, or point --out at an earlier run's folder")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, AttributeError, ModuleNotFoundError) as exc:
        raise SearchError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is not a search checkpoint or is damaged") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SearchError(f"{path} is not a search checkpoint (expected format {FORMAT!r})")
    return payload
