"""Actor and critic MLPs. Actions live in [0, 1] (sigmoid head), as HAQ's and AutoQ's continuous bit actions."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.body = mlp(state_dim, hidden, action_dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(states))


class Critic(nn.Module):
    """Q(s, a) on the concatenated state and action."""

    def __init__(self, state_dim: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.body = mlp(state_dim + action_dim, hidden, 1)

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([states, actions], dim=-1)).squeeze(-1)
