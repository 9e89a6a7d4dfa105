"""What every source shares: the backoff between retries and the counters."""

from __future__ import annotations

import pytest

from helpdesk.sources.base import Backoff, SourceStats
from helpdesk.values import IngestOutcome, OutcomeKind


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    """With the top of the jitter range, delays double from base and stop at cap."""
    backoff = Backoff(base=0.5, cap=5.0, rand=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_full_jitter_spreads_delays_over_the_whole_window() -> None:
    """Each delay is rand() times the current ceiling, so it can be anything from 0 up."""
    draws = iter([0.0, 0.5, 0.25])
    backoff = Backoff(base=2.0, cap=100.0, rand=lambda: next(draws))
    assert [backoff.next_delay() for _ in range(3)] == [0.0, 2.0, 2.0]


def test_reset_starts_again_from_base() -> None:
    """After a success the next failure waits as little as the first one did."""
    backoff = Backoff(base=1.0, cap=60.0, rand=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert (backoff.attempts, backoff.next_delay()) == (0, 1.0)


def test_many_attempts_do_not_overflow() -> None:
    """A day-long outage (thousands of attempts) keeps returning the cap."""
    backoff = Backoff(base=1.0, cap=300.0, rand=lambda: 1.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 300.0


def test_real_jitter_stays_in_range() -> None:
    """The default random source keeps every delay within [0, ceiling)."""
    backoff = Backoff(base=1.0, cap=8.0)
    for _ in range(200):
        ceiling = backoff.ceiling()
        assert 0.0 <= backoff.next_delay() <= ceiling


@pytest.mark.parametrize(("base", "cap", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_nonsense_parameters_are_refused(base: float, cap: float, factor: float) -> None:
    """Zero base, cap below base or a shrinking factor are programming errors."""
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base=base, cap=cap, factor=factor)


def test_stats_count_outcomes() -> None:
    """Each outcome counts as fetched plus its kind; the deltas are returned for the store."""
    stats = SourceStats()
    assert stats.count(IngestOutcome(OutcomeKind.NEW_TICKET)) == {"fetched": 1, "ingested": 1}
    stats.count(IngestOutcome(OutcomeKind.REPLY))
    assert stats.count(IngestOutcome(OutcomeKind.DUPLICATE)) == {"fetched": 1, "duplicates": 1}
    stats.count(IngestOutcome(OutcomeKind.QUARANTINED))
    deltas = stats.count(IngestOutcome(OutcomeKind.NEW_TICKET, suppressed=("automated",)))
    assert deltas == {"fetched": 1, "ingested": 1, "suppressed_automated": 1}
    assert stats.as_dict() == {
        "fetched": 5, "ingested": 3, "duplicates": 1, "quarantined": 1, "errors": 0,
        "suppressed": {"automated": 1}, "last_poll_at": None,
    }
