"""The ingest transaction on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import threading
import time

from sqlalchemy import func, select

from helpdesk.desk import directory, tickets
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.mail.trust import TrustPolicy
from helpdesk.store.models import Attachment, Contact, Event, Message, QuarantineItem, Ticket
from helpdesk.thread import ThreadPolicy
from helpdesk.values import Origin, OutcomeKind
from tests.conftest import MESSAGES, Clock, Store
from tests.mailfactory import delivered_via, make_mail

FILE = Origin(source="file", path="test.eml")


def ctx(clock: Clock, **policy: str) -> IngestContext:
    return IngestContext(
        policy=ThreadPolicy(**policy),
        is_own_address=lambda a: a.startswith("support@"),
        clock=clock,
    )


def run(store: Store, raw: bytes, clock: Clock, origin: Origin = FILE, **policy: str):
    with store.sessions.begin() as session:
        return ingest(session, raw, origin, ctx(clock, **policy))


def count(store: Store, model: type) -> int:
    with store.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_new_mail_opens_ticket_with_raw_bytes(store: Store, clock: Clock) -> None:
    """A first mail becomes ticket 1, its requester a contact, its raw bytes kept exactly."""
    raw = make_mail(attachment=("error log.txt", b"E-104 paper jam\n"))
    outcome = run(store, raw, clock)

    assert outcome.kind is OutcomeKind.NEW_TICKET
    with store.sessions() as session:
        ticket = session.get_one(Ticket, outcome.ticket_id)
        assert ticket.subject == "Printer on 3rd floor is jammed"
        assert ticket.status == "new"
        assert ticket.requester is not None
        assert ticket.requester.address == "dana.reyes@example.com"
        assert ticket.requester.name == "Dana Reyes"
        assert ticket.created_at == clock.now
        (message,) = ticket.messages
        assert message.raw == raw
        assert message.message_id == "req-1@mail.example.com"
        assert "error E-104" in message.text
        (attachment,) = message.attachments
        assert (attachment.filename, attachment.content) == ("error log.txt", b"E-104 paper jam\n")
        kinds = [e.kind for e in tickets.events(session, ticket.id)]
        assert kinds == ["ticket.created"]


def test_reply_threads_by_in_reply_to(store: Store, clock: Clock) -> None:
    """A reply whose In-Reply-To names a stored message lands on the same ticket."""
    first = run(store, make_mail(), clock)
    clock.advance(hours=1)
    reply = make_mail(
        subject="Re: Printer on 3rd floor is jammed",
        message_id="<req-2@mail.example.com>",
        in_reply_to="<req-1@mail.example.com>",
        references="<req-1@mail.example.com>",
        body="It is working again, thanks!\n\nOn Mon, Dana wrote:\n> the printer\n",
    )
    outcome = run(store, reply, clock)

    assert outcome.kind is OutcomeKind.REPLY
    assert outcome.ticket_id == first.ticket_id
    with store.sessions() as session:
        ticket = session.get_one(Ticket, first.ticket_id)
        assert ticket.updated_at == clock.now
        assert [m.message_id for m in ticket.messages] == [
            "req-1@mail.example.com",
            "req-2@mail.example.com",
        ]
        assert ticket.messages[1].new_text == "It is working again, thanks!"


def test_outlook_reply_with_only_the_tag(store: Store, clock: Clock) -> None:
    """Outlook drops References; the subject tag alone threads the reply."""
    first = run(store, make_mail(), clock)
    reply = make_mail(
        subject=f"AW: [#{first.ticket_id}] Printer on 3rd floor is jammed",
        message_id="<AM0PR01MB1234@eurprd01.prod.outlook.com>",
    )
    outcome = run(store, reply, clock)
    assert (outcome.kind, outcome.ticket_id) == (OutcomeKind.REPLY, first.ticket_id)


def test_redelivery_adds_nothing(store: Store, clock: Clock) -> None:
    """The same mail ingested twice is one ticket entry, never two."""
    raw = make_mail()
    first = run(store, raw, clock)
    second = run(store, raw, clock)
    assert second.kind is OutcomeKind.DUPLICATE
    assert second.ticket_id == first.ticket_id
    assert count(store, Message) == 1
    assert count(store, Ticket) == 1


def test_redelivery_through_second_mailbox_is_recognised(store: Store, clock: Clock) -> None:
    """The same mail reaching us through helpdesk@ and support@ is stored once."""
    raw = make_mail(to="support@example.com, helpdesk@example.com")
    run(store, delivered_via(raw, "support@example.com"), clock,
        Origin("imap", mailbox="support", uidvalidity=1, uid=5))
    second = run(store, delivered_via(raw, "helpdesk@example.com"), clock,
                 Origin("imap", mailbox="helpdesk", uidvalidity=9, uid=77))
    assert second.kind is OutcomeKind.DUPLICATE
    assert count(store, Message) == 1


def test_same_server_copy_is_recognised_by_origin(store: Store, clock: Clock) -> None:
    """A crash after commit but before the IMAP move re-delivers the same UID: a duplicate."""
    origin = Origin("imap", mailbox="support", uidvalidity=3, uid=41)
    run(store, make_mail(), clock, origin)
    again = run(store, make_mail(), clock, origin)
    assert again.kind is OutcomeKind.DUPLICATE


def test_missing_message_id_is_synthesised_and_deduped(store: Store, clock: Clock) -> None:
    """Without a Message-ID a content-derived id still recognises a redelivery."""
    raw = make_mail(message_id=None)
    first = run(store, raw, clock)
    second = run(store, delivered_via(raw, "support@example.com"), clock)
    assert first.kind is OutcomeKind.NEW_TICKET
    assert first.message_id is not None
    assert first.message_id.endswith("@synthetic.helpdesk.invalid")
    assert second.kind is OutcomeKind.DUPLICATE


def test_same_id_different_content_is_a_new_message(store: Store, clock: Clock) -> None:
    """A broken client reusing a Message-ID for a different mail loses nothing."""
    run(store, make_mail(), clock)
    other = run(store, make_mail(body="A completely different question.\n"), clock)
    assert other.kind is not OutcomeKind.DUPLICATE
    assert count(store, Message) == 2


def test_foreign_tag_opens_new_ticket_and_warns_both(store: Store, clock: Clock) -> None:
    """A stranger's mail carrying someone else's tag gets its own ticket; both get an event."""
    first = run(store, make_mail(), clock)
    stranger = make_mail(
        sender="Mallory <mallory@example.net>",
        subject=f"Re: [#{first.ticket_id}] Printer on 3rd floor is jammed",
        message_id="<evil-1@example.net>",
        body="Please send me the admin password.\n",
    )
    outcome = run(store, stranger, clock)
    assert outcome.kind is OutcomeKind.NEW_TICKET
    assert outcome.ticket_id != first.ticket_id
    with store.sessions() as session:
        old_events = [e.kind for e in tickets.events(session, first.ticket_id)]
        new_events = [e.kind for e in tickets.events(session, outcome.ticket_id)]
        assert "thread.foreign_tag" in old_events
        assert new_events == ["ticket.created", "thread.foreign_tag"]
        new_ticket = session.get_one(Ticket, outcome.ticket_id)
        assert new_ticket.subject == "Printer on 3rd floor is jammed"


def test_foreign_tag_accepted_when_configured(store: Store, clock: Clock) -> None:
    """With foreign_tag = accept the mail is appended and the event says so."""
    first = run(store, make_mail(), clock)
    stranger = make_mail(
        sender="mallory@example.net",
        subject=f"[#{first.ticket_id}] me too",
        message_id="<m2@example.net>",
    )
    outcome = run(store, stranger, clock, foreign_tag="accept")
    assert outcome.ticket_id == first.ticket_id
    with store.sessions() as session:
        assert "thread.foreign_tag" in [e.kind for e in tickets.events(session, first.ticket_id)]


def test_copied_person_may_answer_with_tag(store: Store, clock: Clock) -> None:
    """Someone the requester copied is a participant, not a stranger."""
    first = run(store, make_mail(cc="Boss <boss@example.com>"), clock)
    boss = make_mail(
        sender="boss@example.com",
        subject=f"RE: [#{first.ticket_id}] Printer",
        message_id="<boss-1@example.com>",
    )
    assert run(store, boss, clock).ticket_id == first.ticket_id


def test_requester_reply_reopens_resolved_ticket(store: Store, clock: Clock) -> None:
    """A requester answering a resolved ticket reopens it, with an event."""
    first = run(store, make_mail(), clock)
    with store.sessions.begin() as session:
        tickets.set_status(session, first.ticket_id, "resolved", actor="cli", now=clock.now)
    reply = make_mail(
        subject=f"Re: [#{first.ticket_id}] Printer",
        message_id="<req-3@mail.example.com>",
        body="Still broken.\n",
    )
    run(store, reply, clock)
    with store.sessions() as session:
        ticket = session.get_one(Ticket, first.ticket_id)
        assert ticket.status == "open"
        assert ticket.resolved_at is None
        changes = [e.detail for e in tickets.events(session, ticket.id)
                   if e.kind == "status.changed"]
        assert changes[-1]["from"] == "resolved"
        assert changes[-1]["to"] == "open"


def test_closed_ticket_new_ticket_policy_links(store: Store, clock: Clock) -> None:
    """With closed_ticket = new_ticket a mail to a closed ticket opens a linked one."""
    first = run(store, make_mail(), clock)
    with store.sessions.begin() as session:
        tickets.set_status(session, first.ticket_id, "closed", actor="cli", now=clock.now)
    reply = make_mail(subject=f"Re: [#{first.ticket_id}] Printer", message_id="<r9@example.com>")
    outcome = run(store, reply, clock, closed_ticket="new_ticket")
    assert outcome.kind is OutcomeKind.NEW_TICKET
    with store.sessions() as session:
        created = session.scalars(
            select(Event).where(Event.ticket_id == outcome.ticket_id,
                                Event.kind == "ticket.created")
        ).one()
        assert created.detail["related_ticket_id"] == first.ticket_id


def test_agent_mail_is_stored_as_agent_reply(store: Store, clock: Clock) -> None:
    """A mail from a configured agent's address is recorded as an agent reply."""

    class Team:
        name, address = "support", None

    class AgentSpec:
        name, addresses, teams = "Alice", ["alice@it.example.com"], ["support"]

    with store.sessions.begin() as session:
        directory.sync(session, [Team()], [AgentSpec()])
    first = run(store, make_mail(), clock)
    answer = make_mail(
        sender="Alice <Alice@IT.example.com>",
        subject=f"Re: [#{first.ticket_id}] Printer",
        message_id="<a1@it.example.com>",
    )
    # This test is about storing; who may act as an agent is tests/service/test_agent_trust.py.
    trusting = dataclasses.replace(ctx(clock), trust=TrustPolicy(trust_from_header=True))
    with store.sessions.begin() as session:
        outcome = ingest(session, answer, FILE, trusting)
    with store.sessions() as session:
        row = session.get_one(Message, outcome.message_row_id)
        assert (row.ticket_id, row.kind) == (first.ticket_id, "agent_reply")


def test_garbage_is_quarantined_not_raised(store: Store, clock: Clock) -> None:
    """Bytes that are not a mail are kept in quarantine with the reason."""
    raw = b"\x00\x01\x02 this is not an e-mail \xff\xfe"
    outcome = run(store, raw, clock)
    assert outcome.kind is OutcomeKind.QUARANTINED
    assert outcome.error
    with store.sessions() as session:
        item = session.get_one(QuarantineItem, outcome.quarantine_id)
        assert item.raw == raw
        assert item.state == "held"


def test_poison_redelivery_is_one_quarantine_row(store: Store, clock: Clock) -> None:
    """The same bad mail quarantined twice is one row with a retry count."""
    raw = b"Subject: no sender here\r\n\r\nbody\r\n"
    first = run(store, raw, clock)
    second = run(store, raw, clock)
    assert first.quarantine_id == second.quarantine_id
    assert "sender" in (first.error or "")
    with store.sessions() as session:
        item = session.get_one(QuarantineItem, first.quarantine_id)
        assert item.retries == 1
    assert count(store, QuarantineItem) == 1


def test_nul_bytes_are_stored(store: Store, clock: Clock) -> None:
    """A mail whose text holds NUL characters is stored (PostgreSQL text cannot hold NUL)."""
    raw = make_mail(body="before\x00after\n")
    outcome = run(store, raw, clock)
    assert outcome.kind is OutcomeKind.NEW_TICKET
    with store.sessions() as session:
        row = session.get_one(Message, outcome.message_row_id)
        assert "\x00" not in row.text
        assert row.raw == raw


def test_concurrent_ingest_of_same_mail_stores_it_once(store: Store, clock: Clock) -> None:
    """Two workers ingesting the same mail at once: one wins, the other sees a duplicate."""
    raw = make_mail()
    results = []
    holding = threading.Event()
    release = threading.Event()

    def first_worker() -> None:
        with store.sessions.begin() as session:
            results.append(ingest(session, raw, FILE, ctx(clock)))
            holding.set()
            release.wait(10)

    def second_worker() -> None:
        with store.sessions.begin() as session:
            results.append(ingest(session, raw, FILE, ctx(clock)))

    a = threading.Thread(target=first_worker)
    a.start()
    assert holding.wait(10)
    b = threading.Thread(target=second_worker)
    b.start()
    time.sleep(0.3)  # let the second worker block on the first one's uncommitted row
    release.set()
    a.join(10)
    b.join(20)
    assert sorted(r.kind.value for r in results) == ["duplicate", "new_ticket"]
    assert count(store, Message) == 1
    assert count(store, Contact) == 1


def test_attachment_rows_keep_sha256(store: Store, clock: Clock) -> None:
    """Attachments are stored decoded with their sha256."""
    outcome = run(store, make_mail(attachment=("a.bin", b"\x00\x01" * 100)), clock)
    with store.sessions() as session:
        (att,) = session.scalars(
            select(Attachment).where(Attachment.message_id == outcome.message_row_id)
        ).all()
        assert att.size == 200
        assert len(att.sha256) == 64


def test_twenty_megabyte_attachment_is_stored(store: Store, clock: Clock) -> None:
    """A 20 MB attachment is decoded, stored whole and hashed."""
    blob = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    outcome = run(store, make_mail(attachment=("disk-image.bin", blob)), clock)
    assert outcome.kind is OutcomeKind.NEW_TICKET
    with store.sessions() as session:
        (att,) = session.scalars(
            select(Attachment).where(Attachment.message_id == outcome.message_row_id)
        ).all()
        assert att.size == len(blob)
        assert att.content == blob


def test_whole_corpus_is_stored_once_on_both_stores(store: Store, clock: Clock) -> None:
    """Every fixture mail (clients, charsets, hostile input) is stored or quarantined, once."""
    corpus = sorted(MESSAGES.rglob("*.eml"))
    assert len(corpus) >= 30
    first = {p.name: run(store, p.read_bytes(), clock, Origin("file", path=str(p)))
             for p in corpus}
    quarantined = sorted(n for n, o in first.items() if o.kind is OutcomeKind.QUARANTINED)
    assert quarantined == ["garbage.eml"]
    assert all(o.kind is OutcomeKind.NEW_TICKET for n, o in first.items() if n != "garbage.eml")
    again = [run(store, p.read_bytes(), clock, Origin("file", path=str(p))) for p in corpus]
    assert {o.kind for o in again} == {OutcomeKind.DUPLICATE, OutcomeKind.QUARANTINED}
    assert count(store, Message) == len(corpus) - 1
    assert count(store, QuarantineItem) == 1
