"""Exponential backoff with jitter, for reconnecting to brokers and cameras."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with jitter: 0.5 s, 1 s, 2 s ... up to ``maximum``; reset on success."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        """The next wait in seconds (each call doubles the base, jittered by +-20%)."""
        delay = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        """After a success: the next failure waits ``initial`` again."""
        self.attempt = 0
