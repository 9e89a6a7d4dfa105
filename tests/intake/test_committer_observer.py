"""The committer tells its observer (the daemon's metrics) about each mail after the commit,
and an observer that fails changes nothing about what was committed (issue 11)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from helpdesk.flow.ingest import IngestContext
from helpdesk.intake import Committer
from helpdesk.intake.committer import Item, store_now
from helpdesk.mail.prepare import prepare_with
from helpdesk.observe import Observer
from helpdesk.store import queries
from helpdesk.store.models import Ticket
from helpdesk.thread import ThreadPolicy
from helpdesk.values import IngestOutcome, Origin, OutcomeKind
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


class Recording(Observer):
    """Writes down what it is told; `broken` makes every call raise after writing."""

    def __init__(self, broken: bool = False) -> None:
        self.seen: list[tuple[str | None, OutcomeKind, float]] = []
        self.broken = broken

    def ingested(self, origin: Origin, outcome: IngestOutcome, seconds: float) -> None:
        self.seen.append((origin.mailbox, outcome.kind, seconds))
        if self.broken:
            raise RuntimeError("metrics bug")


def items(ctx: IngestContext, *raws: bytes) -> list[Item]:
    origin = Origin("maildir", mailbox="support")
    return [(raw, origin, prepare_with(raw, parse=ctx.parse, is_own_address=ctx.is_own_address,
                                       loop_id=ctx.loop_id, trust=ctx.trust)) for raw in raws]


def context(clock: Clock) -> IngestContext:
    return IngestContext(policy=ThreadPolicy(), is_own_address=lambda a: a.startswith("support@"),
                         clock=clock)


def test_each_committed_mail_is_reported_and_a_failing_observer_harms_nothing(
    store: Store, clock: Clock,
) -> None:
    """Two mails in one group commit: the observer hears of each with its outcome; an
    observer that raises still leaves both stored and their outcomes returned."""
    ctx = context(clock)
    first = make_mail(subject="Printer jams", message_id="<o-1@example.org>")
    second = make_mail(subject="Scanner too", message_id="<o-2@example.org>")
    for observer, mails in ((Recording(), (first,)), (Recording(broken=True), (second, first))):
        committer = Committer(store.sessions, lambda: ctx, observer=observer).start()
        try:
            outcomes = committer.store(items(ctx, *mails))
        finally:
            committer.stop()
        assert [o.kind for o in outcomes] == [k for _, k, _ in observer.seen]
        assert all(mailbox == "support" and seconds >= 0 for mailbox, _, seconds in observer.seen)
    assert [k for _, k, _ in observer.seen] == [OutcomeKind.NEW_TICKET, OutcomeKind.DUPLICATE]
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Ticket)) == 2


@pytest.mark.postgres
def test_a_batch_does_not_hold_a_new_persons_contact_until_it_commits(store: Store) -> None:
    """Two daemons, one person writing to both mailboxes: while one daemon's batch is still
    being stored, the other finds or makes that person's contact without waiting for it."""
    if store.backend != "postgres":
        pytest.skip("SQLite has one writer at a time anyway")
    second_mail_started = threading.Event()
    go_on = threading.Event()
    calls = 0

    def clock() -> datetime:  # called once a mail, as filing starts
        nonlocal calls
        calls += 1
        if calls == 2:  # the first mail (from kim) is filed, its batch not committed
            second_mail_started.set()
            go_on.wait(10)
        return datetime(2026, 3, 31, 12, 0, tzinfo=UTC)

    ctx = IngestContext(policy=ThreadPolicy(), is_own_address=lambda a: a.startswith("support@"),
                        clock=clock)
    batch = items(ctx, make_mail(sender="kim@example.com", message_id="<k-1@example.org>"),
                  make_mail(sender="lee@example.com", message_id="<l-1@example.org>"))
    done: list[list[IngestOutcome]] = []
    writer = threading.Thread(target=lambda: done.append(store_now(store.sessions, batch, ctx)))
    writer.start()
    try:
        assert second_mail_started.wait(10)
        with store.sessions.begin() as other:  # another writer's transaction
            # Waiting for the batch's commit would fail this instead of hanging.
            other.execute(text("SET LOCAL lock_timeout = '2s'"))
            kim, _ = queries.contact(other, "kim@example.com", "Kim", NOW)
    finally:
        go_on.set()
        writer.join(10)
    assert [o.kind for o in done[0]] == [OutcomeKind.NEW_TICKET, OutcomeKind.NEW_TICKET]
    with store.sessions() as session:
        requesters = session.scalars(select(Ticket.requester_id).order_by(Ticket.id)).all()
    assert requesters[0] == kim
