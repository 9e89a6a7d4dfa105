"""Timer deadlines and the once-per-state rule, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from helpdesk.rules.timers import (
    ESCALATED_TAG,
    FiredRecord,
    Timer,
    TimerTicket,
    conditions_signature,
    deadline,
    due,
    next_deadline,
    state_key,
)

T0 = datetime(2026, 1, 1, 9, tzinfo=UTC)
HOUR = timedelta(hours=1)
IDLE = Timer(name="idle", path=Path("t.toml"), statuses=frozenset({"pending"}),
             idle=timedelta(days=7), notify="resolved")
LATE = Timer(name="late", path=Path("t.toml"),
             no_response={"urgent": HOUR, "normal": 24 * HOUR}, escalate=True)


def ticket(status: str = "open", priority: str = "normal", *, updated: datetime = T0,
           answered: bool = False, tags: frozenset[str] = frozenset(), merged: bool = False
           ) -> TimerTicket:
    return TimerTicket(1, status, priority, T0, updated, T0 + HOUR if answered else None,
                       tags, merged)


def test_deadlines_per_condition() -> None:
    """Idle: last change + idle; no response: creation + the priority's target; None when the
    status, an answer, the escalated tag or a merge rules the timer out."""
    assert deadline(IDLE, ticket("pending", updated=T0 + HOUR)) == T0 + HOUR + timedelta(days=7)
    assert deadline(IDLE, ticket("open")) is None
    assert deadline(LATE, ticket(priority="urgent")) == T0 + HOUR
    assert deadline(LATE, ticket(priority="low")) is None  # no target for low
    assert deadline(LATE, ticket(answered=True)) is None
    assert deadline(LATE, ticket(tags=frozenset({ESCALATED_TAG}))) is None
    assert deadline(LATE, ticket("resolved")) is None
    assert deadline(LATE, ticket(merged=True)) is None


def test_next_deadline_is_the_earliest() -> None:
    """The stored deadline is the earliest of the timers' deadlines."""
    pending = ticket("pending", "urgent")
    assert next_deadline([IDLE, LATE], pending) == T0 + HOUR
    assert next_deadline([IDLE, LATE], ticket("pending", answered=True)) == T0 + timedelta(days=7)
    assert next_deadline([IDLE, LATE], ticket("closed")) is None


def test_due_agrees_with_the_deadline() -> None:
    """A timer is due exactly when its deadline has come."""
    late = ticket(priority="urgent")
    assert due([LATE], late, T0 + HOUR - timedelta(seconds=1)) == []
    assert [f.timer.name for f in due([LATE], late, T0 + HOUR)] == ["late"]


def test_a_timer_does_not_fire_again_in_the_state_it_fired_in_or_left() -> None:
    """Fired in a state: not again in it, nor in the state the firing left; a new state (a
    change by someone else) may fire again."""
    before = ticket("pending", updated=T0)
    after = ticket("pending", updated=T0 + timedelta(days=7))  # the notice touched it
    record = FiredRecord(state_key(IDLE, before), state_key(IDLE, after))
    later = T0 + timedelta(days=30)
    assert due([IDLE], before, later, {"idle": record}) == []
    assert due([IDLE], after, later, {"idle": record}) == []
    assert next_deadline([IDLE], after, {"idle": record}) is None
    replied = ticket("pending", updated=T0 + timedelta(days=8))
    assert len(due([IDLE], replied, later, {"idle": record})) == 1


def test_no_response_timers_fire_once_per_ticket() -> None:
    """A ticket is unanswered once: a later change does not make it a new state."""
    nag = Timer(name="nag", path=Path("t.toml"), no_response={"normal": HOUR}, tags=("late",))
    first = ticket()
    record = FiredRecord(state_key(nag, first), state_key(nag, first))
    chased = ticket(updated=T0 + 5 * HOUR)  # the requester wrote again
    assert due([nag], chased, T0 + 6 * HOUR, {"nag": record}) == []


def test_the_signature_changes_with_the_conditions_only() -> None:
    """Changing a timer's condition changes the signature; changing what it does does not."""
    base = conditions_signature([IDLE, LATE])
    assert conditions_signature([IDLE, LATE]) == base
    quieter = Timer(name="idle", path=Path("t.toml"), statuses=frozenset({"pending"}),
                    idle=timedelta(days=8), notify="resolved")
    assert conditions_signature([quieter, LATE]) != base
    other_notice = Timer(name="idle", path=Path("t.toml"), statuses=frozenset({"pending"}),
                         idle=timedelta(days=7), notify="acknowledge")
    assert conditions_signature([other_notice, LATE]) == base
