"""The terminal sparkline of tickets per day."""

from __future__ import annotations

import pytest

from helpdesk.report.spark import BLOCKS, fold, sparkline


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], ""),
        ([0, 0, 0], "▁▁▁"),
        ([7], "█"),
        ([0, 7, 1, 3, 6], "▁█▂▄▇"),
        ([0, 1, 100], "▁▂█"),   # one ticket is never drawn like none
        ([5, 5], "██"),
        ([10**12, 0, 10**11], "█▁▂"),
    ],
)
def test_sparkline(values: list[int], expected: str) -> None:
    """One block per day, scaled to the busiest day; only an empty day is the lowest block."""
    assert sparkline(values) == expected


def test_sparkline_uses_every_level() -> None:
    """Eight levels from ▁ to █, in order."""
    assert sparkline(list(range(8))) == BLOCKS


@pytest.mark.parametrize(
    ("values", "width", "expected"),
    [
        ([1, 2, 3], 10, ((1, 2, 3), 1)),
        ([1, 2, 3, 4, 5], 2, ((6, 9), 3)),
        ([1] * 365, 80, ((5,) * 73, 5)),
        ([], 5, ((), 1)),
    ],
)
def test_fold_sums_runs_of_days_to_fit(values: list[int], width: int,
                                       expected: tuple[tuple[int, ...], int]) -> None:
    """Too many days for the line: adjacent days are summed, no ticket is lost."""
    folded = fold(values, width)
    assert folded == expected
    assert sum(folded[0]) == sum(values)
    assert len(folded[0]) <= width


def test_fold_needs_room() -> None:
    """A width under one is a programming error."""
    with pytest.raises(ValueError, match="positive"):
        fold([1], 0)
