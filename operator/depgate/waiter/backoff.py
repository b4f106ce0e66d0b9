"""Exponential backoff with jitter, capped at --period (pure: randomness is injected).

Dependencies usually come up within the first minute of a pod's life (they start together), so for
`FAST_WINDOW` seconds the pauses stay at or under `FAST_CEILING` (a dependency is seen within about
0.25 s of coming up); after that they grow to --period, so a long wait costs little.
"""

from __future__ import annotations

import os
from collections.abc import Callable

INITIAL = 0.05
FACTOR = 2.0
FAST_CEILING = 0.25
FAST_WINDOW = 60.0


def urandom_unit() -> float:
    """A float in [0, 1) from os.urandom (spares importing `random` at start-up)."""
    return int.from_bytes(os.urandom(7), "big") / float(1 << 56)


def base_delay(n: int, ceiling: float, initial: float = INITIAL, factor: float = FACTOR) -> float:
    """The n-th (0-based) pause before jitter: initial * factor**n, never above `ceiling`."""
    if ceiling <= initial:
        return ceiling
    # stop growing once past the ceiling (no float overflow however long we wait)
    delay = initial
    for _ in range(n):
        delay *= factor
        if delay >= ceiling:
            return ceiling
    return delay


class Backoff:
    """Pauses of 50 ms, 100 ms, 200 ms ... capped at `ceiling`, each scaled by a jitter in [0.5, 1).

    "Equal jitter": the pause is never longer than the ceiling (--period keeps its meaning, the
    longest pause) and never shorter than half of the base, so many pods restarted together
    spread out without any of them polling much slower than asked.
    """

    def __init__(self, ceiling: float, rand: Callable[[], float] = urandom_unit,
                 fast_ceiling: float = FAST_CEILING, fast_window: float = 0.0) -> None:
        if ceiling <= 0:
            raise ValueError("ceiling must be > 0")
        self.ceiling = ceiling
        self.fast_ceiling = min(fast_ceiling, ceiling)
        self.fast_window = fast_window
        self.rand = rand
        self.n = 0

    def next(self, elapsed: float = float("inf")) -> float:
        """The next pause; `elapsed` (seconds since the wait began) keeps it short in the fast window."""
        ceiling = self.fast_ceiling if elapsed < self.fast_window else self.ceiling
        base = base_delay(self.n, ceiling)
        if base < ceiling:  # after the fast window the growth resumes from where it stood
            self.n += 1
        return base * (0.5 + 0.5 * min(max(self.rand(), 0.0), 1.0))

    def reset(self) -> None:
        self.n = 0
