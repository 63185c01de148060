"""Exponential backoff with jitter, shared by the watches and the sync loop's retries."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Exponential backoff with full jitter over [delay/2, delay]."""

    initial: float = 0.5
    maximum: float = 10.0
    factor: float = 2.0
    _next: float = 0.0

    def next(self) -> float:
        self._next = self.initial if not self._next else min(self._next * self.factor, self.maximum)
        return random.uniform(self._next / 2, self._next)

    def reset(self) -> None:
        self._next = 0.0
