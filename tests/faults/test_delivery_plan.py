"""`delivery.plan`, the pure part of recording the relay's answers: per-recipient state,
dead-lettering, giving up, the row's state and its claim."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from helpdesk.delivery.claims import DeliveryReport, RecipientReply, RecipientState, RowState, plan
from helpdesk.delivery.outbox import OutboxPolicy

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
POLICY = OutboxPolicy(max_permanent_failures=2, retry_base=timedelta(seconds=30))


def row(**changes: object) -> RowState:
    values: dict[str, object] = {
        "id": 7, "ticket_id": 3, "message_id": "m@x", "attempts": 0, "created_at": NOW,
        "next_attempt_at": NOW, "sent_at": None, "claimed_by": "me",
        "claimed_until": NOW + timedelta(minutes=1)}
    values.update(changes)
    return RowState(**values)  # type: ignore[arg-type]


TO = RecipientState(1, "to@example.org", "pending")
CC = RecipientState(2, "cc@example.org", "pending")


def report(*replies: tuple[str, int]) -> DeliveryReport:
    return DeliveryReport(7, tuple(RecipientReply(a, code, "text") for a, code in replies))


def test_all_accepted_is_sent_and_the_claim_released() -> None:
    done = plan(row(), [TO, CC], report((TO.address, 250), (CC.address, 250)), holder="me",
                now=NOW, policy=POLICY)
    assert done is not None
    assert (done.row["state"], done.row["claimed_by"], done.row["sent_at"]) == (
        "sent", None, NOW)
    assert [r.state for r in done.recipients] == ["sent", "sent"]
    assert done.recorded.outcome == "sent"
    assert done.attempt["next_attempt_at"] is None


def test_a_4xx_keeps_that_recipient_pending_with_a_backoff() -> None:
    done = plan(row(), [TO, CC], report((TO.address, 250), (CC.address, 450)), holder="me",
                now=NOW, policy=POLICY, rng=random.Random(1))
    assert done is not None
    assert done.row["state"] == "pending"
    assert NOW + timedelta(seconds=15) <= done.row["next_attempt_at"] <= NOW + timedelta(
        seconds=30)
    assert {r.address: r.state for r in done.recipients} == {TO.address: "sent",
                                                             CC.address: "pending"}
    assert done.recorded.outcome == "partial"
    assert done.recorded.deferred == (CC.address,)
    assert done.row["last_error"] == "cc@example.org: 450 text"


def test_a_5xx_dead_letters_after_max_permanent_failures() -> None:
    first = plan(row(), [TO], report((TO.address, 550)), holder="me", now=NOW, policy=POLICY)
    assert first is not None
    assert (first.row["state"], first.dead) == ("pending", ())
    again = RecipientState(1, TO.address, "pending", attempts=1, permanent_failures=1)
    second = plan(row(attempts=1), [again], report((TO.address, 550)), holder="me", now=NOW,
                  policy=POLICY)
    assert second is not None
    assert second.row["state"] == "failed"
    assert [r.address for r in second.dead] == [TO.address]
    assert second.recorded.outcome == "refused"


def test_a_mail_too_old_gives_up_on_its_pending_recipients() -> None:
    old = row(created_at=NOW - POLICY.give_up_after)
    done = plan(old, [TO, CC], report((TO.address, 250), (CC.address, 451)), holder="me",
                now=NOW, policy=POLICY)
    assert done is not None
    assert done.row["state"] == "sent"
    [dead] = done.dead
    assert dead.address == CC.address
    assert (dead.last_reply or "").startswith("gave up after 1 attempts: 451")


def test_answers_already_recorded_change_nothing() -> None:
    sent = RecipientState(1, TO.address, "sent", attempts=1)
    assert plan(row(), [sent], report((TO.address, 250)), holder="me", now=NOW,
                policy=POLICY) is None


def test_a_claim_taken_over_by_another_sender_stays_theirs() -> None:
    done = plan(row(claimed_by="other"), [TO], report((TO.address, 250)), holder="me",
                now=NOW, policy=POLICY)
    assert done is not None
    assert done.row["claimed_by"] == "other"
    assert done.row["state"] == "sent", "the 250 is recorded all the same"
