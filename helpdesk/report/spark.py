"""A sparkline: a row of figures as one line of Unicode block characters."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int]) -> str:
    """One block per value, scaled to the largest; zero is the lowest block, and only zero.

    A day with one ticket must not look like a day with none, so every
    positive value gets at least the second block.
    """
    top = max(values, default=0)
    if top <= 0:
        return BLOCKS[0] * len(values)
    steps = len(BLOCKS) - 1
    return "".join(BLOCKS[0] if v <= 0 else BLOCKS[max(1, math.ceil(v * steps / top))]
                   for v in values)


def fold(values: Sequence[int], width: int) -> tuple[tuple[int, ...], int]:
    """Sums of runs of `n` values so that at most `width` remain; returns them and `n`.

    A year of days on an 80-column terminal becomes one block per few days
    rather than a line that wraps.
    """
    if width < 1:
        raise ValueError("width must be positive")
    n = max(1, math.ceil(len(values) / width))
    return tuple(sum(values[i:i + n]) for i in range(0, len(values), n)), n
