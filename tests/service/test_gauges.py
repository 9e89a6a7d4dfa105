"""The store-wide figures the daemon's metrics export: outbox, open tickets, quarantine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpdesk.desk import gauges
from helpdesk.store.models import Contact, OutboxItem, QuarantineItem, Team, Ticket
from tests.conftest import Store

NOW = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)


def outbox_row(n: int, state: str, next_attempt_at: datetime) -> OutboxItem:
    return OutboxItem(message_id=f"<out-{n}@helpdesk.example>", envelope_from="",
                      envelope_to=[f"user{n}@example.org"], raw=b"x", state=state,
                      next_attempt_at=next_attempt_at, created_at=NOW - timedelta(hours=1))


def test_an_empty_store_reads_all_zero(store: Store) -> None:
    """Nothing queued, nothing open, nothing held: zeros, and no oldest due mail."""
    with store.sessions() as session:
        assert gauges.read(session, NOW) == gauges.StoreGauges(0, 0, 0, 0, 0.0, {}, 0)


def test_the_outbox_by_state_and_the_wait_of_its_oldest_due_mail(store: Store) -> None:
    """Due and later mail are queued and retrying; the oldest due one waited since it was
    due (not since it was written); sent and failed are counted too."""
    with store.sessions.begin() as session:
        session.add_all([
            outbox_row(1, "pending", NOW - timedelta(seconds=90)),
            outbox_row(2, "pending", NOW - timedelta(seconds=5)),
            outbox_row(3, "pending", NOW + timedelta(minutes=10)),
            outbox_row(4, "sent", NOW - timedelta(days=2)),
            outbox_row(5, "sent", NOW - timedelta(days=1)),
            outbox_row(6, "sent", NOW - timedelta(days=1)),
            outbox_row(7, "failed", NOW - timedelta(days=3)),
        ])
    with store.sessions() as session:
        got = gauges.read(session, NOW)
    assert (got.outbox_queued, got.outbox_retrying, got.outbox_sent, got.outbox_failed) == (
        2, 1, 3, 1)
    assert got.outbox_oldest_due_seconds == 90.0
    with store.sessions() as session:
        later = gauges.read(session, NOW + timedelta(minutes=30))
    assert later.outbox_queued == 3
    assert later.outbox_oldest_due_seconds == 90.0 + 30 * 60


def test_open_tickets_by_team_and_status_and_the_held_quarantine(store: Store) -> None:
    """Only new, open and pending tickets count (merged ones not), by team (None: no team);
    only held quarantine items count."""
    with store.sessions.begin() as session:
        networking = Team(name="networking")
        requester = Contact(address="a@example.org", name="")
        for status, team in [("new", networking), ("new", networking), ("open", networking),
                             ("pending", None), ("resolved", networking), ("closed", None)]:
            session.add(Ticket(subject="s", status=status, team=team, requester=requester,
                               created_at=NOW, updated_at=NOW))
        session.flush()
        session.add(Ticket(subject="merged", status="new", team=networking,
                           requester=requester, created_at=NOW, updated_at=NOW,
                           merged_into_id=1))
        for n, state in enumerate(["held", "held", "resolved", "discarded", "released"]):
            session.add(QuarantineItem(error="not an e-mail", raw=b"\x00", state=state,
                                       content_sha256=f"{n:064d}"))
    with store.sessions() as session:
        got = gauges.read(session, NOW)
    assert got.open_tickets == {("networking", "new"): 2, ("networking", "open"): 1,
                                (None, "pending"): 1}
    assert got.quarantine_held == 2
