"""First/last-layer policies of the quantizer, kept free of torch so the CLI can offer them on the board."""
from __future__ import annotations

from typing import Literal

EdgePolicy = Literal["plan", "act8", "keep8"]
EDGE_POLICIES: tuple[str, ...] = ("plan", "act8", "keep8")
KEPT_BITS = 8
