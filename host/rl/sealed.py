"""``Sealed``: a piece of agent state that never changes once made, so a checkpoint stores it once.

An agent's state dict may hold ``Sealed`` values (e.g. an actor-critic's last full snapshot and its journal since).
The search checkpoint writes each one to an append-only sidecar the first time it sees it and refers to it by
position afterwards (``autoq.host.search.checkpoint``); anything else (``copy``, plain ``pickle``) treats it as an
ordinary object holding ``value``.
"""
from __future__ import annotations

from typing import Any


class Sealed:
    """Holds ``value``, which its owner promises never to change; ``stored`` is the checkpoint's note of where it
    was written (``None`` until it is)."""

    __slots__ = ("value", "stored")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.stored: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.value, self.stored = state["value"], None

    def __repr__(self) -> str:
        return f"Sealed({type(self.value).__name__})"
