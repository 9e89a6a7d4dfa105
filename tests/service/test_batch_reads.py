"""A batch's lookups read ahead: one query per kind for the batch, not a round trip a mail.

`ingest_batch` reads what its mails will look up (earlier copies by Message-ID
and content, by server copy, the tickets of the ids they answer, their senders'
contacts, bounce suppressions and automatic replies) before filing them
(`store.batchreads`). These tests check that the mails then ask the database
nothing of the kind, that the answers are those the database would give at that
point of the batch (a second copy of a mail, a second mail from a new sender, a
reply to a mail of the same batch, a sender over the rate limit or bounced in it),
and that what another writer commits after the read is still found.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import structlog
from sqlalchemy import event, func, select

from helpdesk.desk import notices
from helpdesk.flow.ingest import IngestContext, ingest_batch
from helpdesk.mail.prepare import Prepared, prepare_with
from helpdesk.store import batchreads, queries, schema
from helpdesk.values import Origin, OutcomeKind
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail
from tests.service.test_ingest_batch import SUPPORT, shipped_rules_context
from tests.service.test_pipeline import dsn

BOX = ("INBOX", 7)  # mailbox, UIDVALIDITY


def imap(uid: int) -> Origin:
    return Origin("imap", mailbox=BOX[0], uidvalidity=BOX[1], uid=uid, recipient=SUPPORT)


def prepare(raw: bytes, origin: Origin, ctx: IngestContext) -> tuple[bytes, Origin, Prepared]:
    return raw, origin, prepare_with(raw, parse=ctx.parse, is_own_address=ctx.is_own_address,
                                     loop_id=ctx.loop_id, trust=ctx.trust)


def request(n: int, sender: str) -> bytes:
    return make_mail(subject=f"Request {n}", message_id=f"<r{n}@mail.example.com>",
                     sender=sender, body=f"Request number {n}.\n")


class Lookups:
    """Counts the per-mail lookups `store.batchreads` stands in for, and new contacts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by_content = self.by_origin = self.contact_selects = self.new_contacts = 0
        for name, attribute in (("_BY_CONTENT", "by_content"), ("_BY_ORIGIN", "by_origin"),
                                ("_CONTACT", "contact_selects")):
            monkeypatch.setattr(queries, name, self._counted(getattr(queries, name), attribute))
        original = queries._new_contact

        def new_contact(*args: Any) -> tuple[int, str]:
            self.new_contacts += 1
            return original(*args)

        monkeypatch.setattr(queries, "_new_contact", new_contact)

    def _counted(self, direct: Any, attribute: str) -> Any:
        lookups = self

        class Counted:
            def first(self, conn: Any, params: Any) -> Any:
                setattr(lookups, attribute, getattr(lookups, attribute) + 1)
                return direct.first(conn, params)

        return Counted()


def test_a_batch_asks_nothing_per_mail_and_finds_what_it_wrote_itself(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six mails, among them a second copy of one and three from one new sender: no
    lookup a mail, one contact made per new sender, the copy found in the same pass."""
    ctx = shipped_rules_context(store, clock)
    raws = [request(1, "Dana <dana@example.com>"), request(2, "Lee <lee@example.com>"),
            request(3, "Dana <dana@example.com>"), request(4, "Dana <dana@example.com>"),
            request(5, "Pat <pat@example.com>")]
    items = [prepare(raw, imap(uid), ctx) for uid, raw in enumerate(raws, 1)]
    items.append(prepare(raws[1], imap(9), ctx))  # the same mail again, another server copy
    lookups = Lookups(monkeypatch)
    with structlog.testing.capture_logs() as logs, store.sessions.begin() as session:
        outcomes = ingest_batch(session, items, ctx)
    assert [o.kind for o in outcomes] == [OutcomeKind.NEW_TICKET] * 5 + [OutcomeKind.DUPLICATE]
    assert outcomes[5].message_row_id == outcomes[1].message_row_id
    # Filed in the batch's one pass: not split and stored again mail by mail.
    assert not [e for e in logs if e["event"] == "ingest.batch_split"]
    assert (lookups.by_content, lookups.by_origin, lookups.contact_selects) == (0, 0, 0)
    assert lookups.new_contacts == 3
    with store.sessions() as session:
        requesters = session.execute(
            select(schema.contacts.c.address, func.count())
            .join(schema.tickets, schema.tickets.c.requester_id == schema.contacts.c.id)
            .group_by(schema.contacts.c.address)).all()
        assert sorted(requesters) == [("dana@example.com", 3), ("lee@example.com", 1),
                                      ("pat@example.com", 1)]


def test_the_answers_read_ahead_are_the_databases(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What earlier batches stored: a server copy seen before, a mail stored before through
    another copy, a known sender; beside them a mail of the same Message-ID with other
    content, which is not a duplicate."""
    ctx = shipped_rules_context(store, clock)
    first, second = request(1, "Dana <dana@example.com>"), request(2, "Lee <lee@example.com>")
    with store.sessions.begin() as session:
        before = ingest_batch(session, [prepare(first, imap(1), ctx),
                                        prepare(second, imap(2), ctx)], ctx)
    reworded = make_mail(subject="Request 1", message_id="<r1@mail.example.com>",
                         sender="Dana <dana@example.com>", body="Other words.\n")
    lookups = Lookups(monkeypatch)
    with store.sessions.begin() as session:
        after = ingest_batch(session, [
            prepare(first, imap(1), ctx),  # the same server copy
            prepare(second, imap(20), ctx),  # the same mail, another copy
            prepare(reworded, imap(21), ctx),
            prepare(request(3, "Dana <dana@example.com>"), imap(22), ctx),
        ], ctx)
    assert [o.kind for o in after] == [OutcomeKind.DUPLICATE, OutcomeKind.DUPLICATE,
                                       OutcomeKind.NEW_TICKET, OutcomeKind.NEW_TICKET]
    assert after[0].message_row_id == before[0].message_row_id
    assert after[1].message_row_id == before[1].message_row_id
    assert lookups.new_contacts == 0
    with store.sessions() as session:
        dana = session.scalar(select(schema.contacts.c.id)
                              .where(schema.contacts.c.address == "dana@example.com"))
        requesters = session.scalars(select(schema.tickets.c.requester_id)
                                     .where(schema.tickets.c.id.in_(
                                         [after[2].ticket_id, after[3].ticket_id]))).all()
        assert requesters == [dana, dana]


def test_threads_and_the_auto_reply_guards_come_from_the_read_and_the_batchs_own_writes(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies to a mail of an earlier batch and of the same batch are threaded, a sender
    reaches the rate limit inside the batch, and a bounce in the batch suppresses its
    address for a later mail of the batch: without a lookup of ids or guards a mail."""
    ctx = shipped_rules_context(store, clock)
    assert ctx.actions is not None
    ctx = dataclasses.replace(ctx, actions=dataclasses.replace(ctx.actions, auto_reply_limit=3))
    dana, lee, pat = ("Dana <dana@example.com>", "Lee <lee@example.com>",
                      "Pat <pat@example.com>")
    with store.sessions.begin() as session:
        before = ingest_batch(session, [prepare(request(n, who), imap(n), ctx)
                                        for n, who in ((1, dana), (2, lee), (6, pat))], ctx)
    with store.sessions() as session:
        acks = session.scalars(select(schema.outbox.c.message_id)
                               .order_by(schema.outbox.c.id)).all()
    assert len(acks) == 3  # one auto reply each; Dana's counts towards her limit
    bounce = dsn(acks[2], "5.1.1").replace(b"dana.reyes@example.com", b"pat@example.com")

    def reply(n: int, who: str, to: int) -> bytes:
        return make_mail(subject=f"Re: Request {to}", message_id=f"<a{n}@mail.example.com>",
                         sender=who, in_reply_to=f"<r{to}@mail.example.com>",
                         body="Thanks, one more thing.\n")

    raws = [reply(2, lee, 2), request(3, dana), reply(3, dana, 3), request(4, dana),
            request(5, dana), bounce, request(7, pat)]
    items = [prepare(raw, imap(10 + n), ctx) for n, raw in enumerate(raws)]
    asked = {"guards": 0, "ids": 0}
    guards, by_ids = notices._GUARDS, queries._tickets_by_n_ids

    class CountedGuards:
        def first(self, conn: Any, params: Any) -> Any:
            asked["guards"] += 1
            return guards.first(conn, params)

    def counted_ids(count: int) -> Any:
        asked["ids"] += 1
        return by_ids(count)

    monkeypatch.setattr(notices, "_GUARDS", CountedGuards())
    monkeypatch.setattr(queries, "_tickets_by_n_ids", counted_ids)
    with structlog.testing.capture_logs() as logs, store.sessions.begin() as session:
        after = ingest_batch(session, items, ctx)
    assert not [e for e in logs if e["event"] == "ingest.batch_split"]
    assert asked == {"guards": 0, "ids": 0}
    new, answered = OutcomeKind.NEW_TICKET, OutcomeKind.REPLY
    assert [o.kind for o in after] == [answered, new, answered, new, new, answered, new]
    assert after[0].ticket_id == before[1].ticket_id  # an earlier batch's mail
    assert after[2].ticket_id == after[1].ticket_id  # this batch's mail
    assert after[5].ticket_id == before[2].ticket_id  # the bounce, on Pat's ticket
    # Dana had one reply before the batch: two more reach the limit of three.
    assert [after[i].suppressed for i in (1, 3, 4)] == [(), (), ("rate_limit",)]
    assert after[6].suppressed == ("bounced",)
    with store.sessions() as session:
        replies = session.scalars(select(schema.auto_replies.c.address)
                                  .order_by(schema.auto_replies.c.id)).all()
    assert replies.count("dana@example.com") == 3
    assert replies.count("pat@example.com") == 1


@pytest.mark.postgres
def test_a_copy_another_writer_commits_after_the_read_is_still_a_duplicate(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another daemon stores the same mail between our read and our insert: our batch is
    filed again mail by mail, asking the database, and the mail is stored once."""
    if store.backend != "postgres":
        pytest.skip("SQLite has one writer at a time: the read and the insert hold its lock")
    ctx = shipped_rules_context(store, clock)
    contested = request(1, "Dana <dana@example.com>")
    original = batchreads.read_ahead

    def read_then_race(conn: Any, wanted: batchreads.Wanted) -> batchreads.Ahead:
        ahead = original(conn, wanted)
        with store.sessions.begin() as other:
            (theirs,) = ingest_batch(other, [prepare(contested, imap(50), ctx)], ctx)
            assert theirs.kind is OutcomeKind.NEW_TICKET
        return ahead

    monkeypatch.setattr(batchreads, "read_ahead", read_then_race)
    with store.sessions.begin() as session:
        ours = ingest_batch(session, [prepare(contested, imap(1), ctx),
                                      prepare(request(2, "Lee <lee@example.com>"), imap(2), ctx)],
                            ctx)
    assert [o.kind for o in ours] == [OutcomeKind.DUPLICATE, OutcomeKind.NEW_TICKET]
    with store.sessions() as session:
        copies = session.scalar(select(func.count()).select_from(schema.messages)
                                .where(schema.messages.c.message_id == "r1@mail.example.com"))
        assert copies == 1


@pytest.mark.postgres
def test_a_batchs_new_contacts_share_one_connection_of_their_own(
    store: Store, clock: Clock
) -> None:
    """As the group-commit writer files them (`contacts_apart`): each new contact is
    committed at once, apart from the batch, on one connection the batch checks out
    once, not once (and pinged) a contact; it goes back to the pool with the batch."""
    if store.backend != "postgres":
        pytest.skip("SQLite has one writer at a time anyway")
    ctx = shipped_rules_context(store, clock)
    items = [prepare(request(n, f"Person {n} <p{n}@example.com>"), imap(n), ctx)
             for n in range(1, 6)]
    checkouts: list[object] = []

    def checked_out(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        checkouts.append(dbapi_conn)

    event.listen(store.engine, "checkout", checked_out)
    try:
        with structlog.testing.capture_logs() as logs, store.sessions.begin() as session:
            queries.contacts_apart(session)
            outcomes = ingest_batch(session, items, ctx)
            # Committed apart: another connection sees them before the batch commits.
            with store.engine.connect() as other:
                seen = other.scalar(select(func.count()).select_from(schema.contacts))
    finally:
        event.remove(store.engine, "checkout", checked_out)
    assert [o.kind for o in outcomes] == [OutcomeKind.NEW_TICKET] * 5
    assert not [e for e in logs if e["event"] == "ingest.batch_split"]
    assert seen == 5
    # The batch's session, its connection for new contacts, and the test's look.
    assert len(checkouts) == 3
    assert store.engine.pool.checkedout() == 0
