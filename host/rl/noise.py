"""Exploration noise: a truncated normal around the policy's action, with a constant-then-exponential schedule."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoiseSchedule:
    """``sigma`` for ``constant_episodes`` episodes (counted from the first learning episode), then times ``decay`` per episode."""

    sigma: float = 0.5
    constant_episodes: int = 0
    decay: float = 0.99

    def __post_init__(self) -> None:
        if self.sigma < 0 or not 0 < self.decay <= 1 or self.constant_episodes < 0:
            raise ValueError(f"bad noise schedule {self}: need sigma >= 0, 0 < decay <= 1, constant_episodes >= 0")

    @classmethod
    def decaying_to(cls, sigma: float, final_sigma: float, constant_episodes: int, decay_episodes: int) -> "NoiseSchedule":
        """Constant ``sigma``, then decayed exponentially so it reaches ``final_sigma`` after ``decay_episodes`` more."""
        decay = (final_sigma / sigma) ** (1.0 / decay_episodes) if decay_episodes > 0 and sigma > 0 else 1.0
        return cls(sigma, constant_episodes, decay)

    def sigma_at(self, episode: int) -> float:
        return self.sigma * self.decay ** max(0, episode - self.constant_episodes)


def truncated_normal(mean: np.ndarray, sigma: float, rng: np.random.Generator, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Sample ``N(mean, sigma)`` truncated to ``[low, high]`` elementwise (rejection sampling, as HAQ's scipy truncnorm)."""
    shape = np.shape(mean)
    mean = np.clip(np.array(mean, np.float64, ndmin=1), low, high)
    if sigma <= 0:
        return mean.reshape(shape)
    out = rng.normal(mean, sigma)
    bad = (out < low) | (out > high)
    for _ in range(64):
        if not bad.any():
            return out.reshape(shape)
        out[bad] = rng.normal(mean[bad], sigma)
        bad = (out < low) | (out > high)
    out[bad] = rng.uniform(low, high, size=int(bad.sum()))  # sigma huge against the interval: close to uniform anyway
    return out.reshape(shape)
