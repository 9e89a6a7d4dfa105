"""Ticket services: internal notes, merges, and the agents and teams behind them."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.desk import directory, staff, tickets
from helpdesk.errors import InvalidInput, NotFound
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.store.models import (
    Contact,
    Event,
    Message,
    OutboxItem,
    Participant,
    Team,
    Ticket,
    TicketTag,
)
from helpdesk.values import Address, Origin, OutcomeKind
from tests.conftest import Store
from tests.mailfactory import make_mail

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def make_ticket(
    session: Session,
    requester: str,
    *,
    subject: str = "Something broke",
    status: str = "new",
    tags: tuple[str, ...] = (),
    people: tuple[tuple[str, str], ...] = (),
) -> Ticket:
    """A ticket from `requester` with a first customer mail, tags and participants."""
    contact = session.scalars(select(Contact).where(Contact.address == requester)).first()
    if contact is None:
        contact = Contact(address=requester, name="", created_at=NOW)
    ticket = Ticket(subject=subject, status=status, priority="normal", requester=contact,
                    created_at=NOW, updated_at=NOW)
    ticket.tags = [TicketTag(tag=t) for t in tags]
    session.add(ticket)
    session.flush()
    session.add(Message(ticket_id=ticket.id, direction="in", kind="customer",
                        message_id=f"m{ticket.id}@mail.example.com", content_hash="h",
                        from_address=requester, subject=subject, text="help", new_text="help",
                        received_at=NOW))
    session.add_all(Participant(ticket_id=ticket.id, address=a, role=r)
                    for a, r in ((requester, "requester"), *people))
    session.flush()
    return ticket


def event_kinds(session: Session, ticket_id: int) -> list[str]:
    return [e.kind for e in tickets.events(session, ticket_id)]


def participants(session: Session, ticket_id: int) -> dict[str, str]:
    rows = session.execute(
        select(Participant.address, Participant.role).where(Participant.ticket_id == ticket_id))
    return {address: role for address, role in rows}


# -- notes ---------------------------------------------------------------------------------


def test_note_is_an_internal_message_with_an_event(store: Store) -> None:
    """A note is a `note` message from the agent with a synthetic id and the text's hash."""
    with store.sessions.begin() as session:
        ticket_id = make_ticket(session, "dana@example.com").id
        note = tickets.add_note(session, ticket_id, author=Address("Alice@Example.com", "Alice"),
                                text="  Called Dana, printer is on the 3rd floor.\n",
                                domain="example.com", now=NOW)
        row_id = note.id
    with store.sessions() as session:
        row = session.get_one(Message, row_id)
        assert (row.kind, row.direction, row.from_address, row.from_name) == (
            "note", "in", "alice@example.com", "Alice")
        assert row.text == row.new_text == "Called Dana, printer is on the 3rd floor."
        assert re.fullmatch(r"note\.[0-9a-f]{32}@example\.com", row.message_id)
        assert row.message_id_synthetic is True
        assert row.content_hash == hashlib.sha256(row.text.encode()).hexdigest()
        event = session.scalars(select(Event).where(Event.kind == "note.added")).one()
        assert (event.ticket_id, event.message_row_id, event.actor) == (
            ticket_id, row_id, "alice@example.com")
        assert session.scalars(select(OutboxItem)).all() == []


def test_identical_notes_are_both_kept(store: Store) -> None:
    """Two notes with the same text get distinct ids, so the dedupe constraint never bites."""
    with store.sessions.begin() as session:
        ticket_id = make_ticket(session, "dana@example.com").id
        for _ in range(2):
            tickets.add_note(session, ticket_id, author=Address("alice@example.com"),
                             text="same", domain="example.com", now=NOW)
    with store.sessions() as session:
        ids = session.scalars(select(Message.message_id).where(Message.kind == "note")).all()
        assert len(set(ids)) == 2


def test_note_needs_text_and_a_live_ticket(store: Store) -> None:
    """An empty note, an unknown ticket and a merged ticket are refused."""
    with store.sessions.begin() as session:
        a = make_ticket(session, "dana@example.com").id
        b = make_ticket(session, "sam@example.org").id
        tickets.merge(session, a, b, actor="cli", now=NOW)
        author = Address("alice@example.com")
        with pytest.raises(InvalidInput, match="needs some text"):
            tickets.add_note(session, b, author=author, text=" \n", domain="example.com")
        with pytest.raises(NotFound, match="no ticket 99"):
            tickets.add_note(session, 99, author=author, text="x", domain="example.com")
        with pytest.raises(InvalidInput, match=f"merged into ticket {b}"):
            tickets.add_note(session, a, author=author, text="x", domain="example.com")


def test_last_customer_message_ignores_notes_and_replies(store: Store) -> None:
    """The editor template quotes the newest customer mail, not a note or an agent reply."""
    with store.sessions.begin() as session:
        ticket_id = make_ticket(session, "dana@example.com").id
        session.add(Message(ticket_id=ticket_id, direction="in", kind="customer",
                            message_id="m-late@mail.example.com", content_hash="h2",
                            from_address="dana@example.com", text="still broken"))
        session.add(Message(ticket_id=ticket_id, direction="out", kind="agent_reply",
                            message_id="r@example.com", content_hash="h3", text="on it"))
        tickets.add_note(session, ticket_id, author=Address("alice@example.com"), text="note",
                         domain="example.com", now=NOW)
        last = tickets.last_customer_message(session, ticket_id)
        assert last is not None
        assert last.message_id == "m-late@mail.example.com"


# -- merge ---------------------------------------------------------------------------------


def test_merge_closes_the_ticket_and_copies_people_and_tags(store: Store) -> None:
    """The merged ticket points at the other and is closed; people and tags are copied."""
    with store.sessions.begin() as session:
        a = make_ticket(session, "dana@example.com", tags=("vpn", "urgent"),
                        people=(("carl@example.com", "cc"), ("alice@example.com", "agent"))).id
        b = make_ticket(session, "sam@example.org", tags=("vpn",), status="open").id
        merged = tickets.merge(session, a, b, actor="cli", now=NOW + timedelta(hours=1))
        assert merged.participants == ("alice@example.com", "carl@example.com",
                                       "dana@example.com")
        assert merged.tags == ("urgent",)
    with store.sessions() as session:
        source, target = session.get_one(Ticket, a), session.get_one(Ticket, b)
        assert (source.merged_into_id, source.status) == (b, "closed")
        assert source.resolved_at == NOW + timedelta(hours=1)
        assert (target.merged_into_id, target.status) == (None, "open")
        assert [t.tag for t in target.tags] == ["urgent", "vpn"]
        assert participants(session, b) == {
            "sam@example.org": "requester", "dana@example.com": "cc",
            "carl@example.com": "cc", "alice@example.com": "agent",
        }
        assert event_kinds(session, a) == ["ticket.merged", "status.changed"]
        assert event_kinds(session, b) == ["ticket.merged"]
        detail = tickets.events(session, b)[0].detail
        assert detail == {"from": a, "participants": list(merged.participants),
                          "tags": ["urgent"]}
        assert tickets.events(session, a)[0].detail == {"into": b}


@pytest.mark.parametrize(
    ("source", "into", "error", "message"),
    [
        (1, 1, InvalidInput, "into itself"),
        (2, 3, InvalidInput, "already merged into ticket 1"),
        (3, 2, InvalidInput, "itself merged into ticket 1; merge into ticket 1 instead"),
        (3, 99, NotFound, "no ticket 99"),
    ],
)
def test_merge_refusals(
    store: Store, source: int, into: int, error: type[Exception], message: str
) -> None:
    """Merging into itself, twice, into a merged ticket or into nothing is refused."""
    with store.sessions.begin() as session:
        for who in ("dana@example.com", "sam@example.org", "kim@example.net"):
            make_ticket(session, who)
        tickets.merge(session, 2, 1, actor="cli", now=NOW)
        with pytest.raises(error, match=re.escape(message)):
            tickets.merge(session, source, into, actor="cli", now=NOW)


def test_mail_to_a_merged_ticket_lands_on_the_surviving_one(store: Store) -> None:
    """After a merge, a reply with the old tag, or to the old thread, threads onto INTO_ID."""
    ctx = IngestContext()

    def deliver(raw: bytes) -> tuple[OutcomeKind, int | None]:
        with store.sessions.begin() as session:
            outcome = ingest(session, raw, Origin("file", path="t.eml"), ctx)
            return outcome.kind, outcome.ticket_id

    assert deliver(make_mail(subject="VPN down")) == (OutcomeKind.NEW_TICKET, 1)
    assert deliver(make_mail(subject="VPN still down", sender="sam@example.org",
                             message_id="<sam-1@example.org>")) == (OutcomeKind.NEW_TICKET, 2)
    with store.sessions.begin() as session:
        tickets.merge(session, 1, 2, actor="cli")
    by_tag = make_mail(subject="Re: [#1] VPN down", message_id="<req-2@mail.example.com>")
    assert deliver(by_tag) == (OutcomeKind.REPLY, 2)
    by_header = make_mail(subject="Re: VPN down", message_id="<req-3@mail.example.com>",
                          in_reply_to="<req-1@mail.example.com>")
    assert deliver(by_header) == (OutcomeKind.REPLY, 2)
    with store.sessions() as session:
        assert session.get_one(Ticket, 1).status == "closed"
        assert event_kinds(session, 2)[-2:] == ["message.added", "message.added"]


# -- agents and teams ----------------------------------------------------------------------


def test_add_agent_with_addresses_teams_and_no_notify(store: Store) -> None:
    """An added agent has its addresses (first is primary), teams and notify setting."""
    with store.sessions.begin() as session:
        session.add_all([Team(name="networking"), Team(name="support")])
        info = staff.add_agent(session, " Bob@Example.com ", name="Bob Builder",
                               teams=["support", "networking"],
                               extra_addresses=["bob.b@example.org", "bob@example.com"],
                               notify=False)
    assert info == staff.AgentInfo(name="Bob Builder",
                                   addresses=("bob@example.com", "bob.b@example.org"),
                                   teams=("support", "networking"), active=True, notify=False)
    with store.sessions() as session:
        assert staff.list_agents(session) == [
            staff.AgentInfo("Bob Builder", ("bob@example.com", "bob.b@example.org"),
                            ("networking", "support"), True, False)
        ]


@pytest.mark.parametrize(
    ("address", "extra", "teams", "error", "message"),
    [
        ("alice@example.com", (), (), InvalidInput, "already belongs to agent Alice"),
        ("new@example.com", ("ALICE2@example.com",), (), InvalidInput,
         "alice2@example.com already belongs to agent Alice (alice@example.com)"),
        ("new@example.com", (), ("nope",), NotFound, "no team nope"),
        ("not-an-address", (), (), InvalidInput, "not an e-mail address"),
    ],
)
def test_add_agent_refusals(
    store: Store,
    address: str,
    extra: tuple[str, ...],
    teams: tuple[str, ...],
    error: type[Exception],
    message: str,
) -> None:
    """An address of another agent, an unknown team or a malformed address is refused."""
    with store.sessions.begin() as session:
        staff.add_agent(session, "alice@example.com", name="Alice",
                        extra_addresses=["alice2@example.com"])
        with pytest.raises(error, match=re.escape(message)):
            staff.add_agent(session, address, name="New", teams=teams, extra_addresses=extra)


def test_disable_enable_notify_and_active_agent(store: Store) -> None:
    """Any of an agent's addresses finds them; a disabled agent cannot act."""
    with store.sessions.begin() as session:
        staff.add_agent(session, "alice@example.com", name="Alice",
                        extra_addresses=["a@example.org"])
        assert staff.set_active(session, "A@example.org", False).active is False
        with pytest.raises(InvalidInput, match=re.escape("agent alice@example.com is disabled")):
            staff.active_agent(session, "Alice@example.com")
        assert staff.set_active(session, "alice@example.com", True).active is True
        assert staff.active_agent(session, "a@example.org").name == "Alice"
        assert staff.set_notify(session, "alice@example.com", False).notify is False
        with pytest.raises(NotFound, match=re.escape("no agent bob@example.com")):
            staff.set_notify(session, "bob@example.com", True)


def test_directory_sync_keeps_store_agents_and_their_settings(store: Store) -> None:
    """Config sync leaves agents added here alone and keeps a config agent's disable."""

    class AgentSpec:
        name = "Alice"
        addresses = ("alice@example.com",)
        teams = ("networking",)

    class TeamSpec:
        name = "networking"
        address = "net@example.com"

    with store.sessions.begin() as session:
        directory.sync(session, [TeamSpec()], [AgentSpec()])
        staff.add_agent(session, "bob@example.com", name="Bob", teams=["networking"])
        staff.set_active(session, "alice@example.com", False)
    with store.sessions.begin() as session:
        directory.sync(session, [TeamSpec()], [AgentSpec()])
    with store.sessions() as session:
        listed = {a.address: (a.active, a.teams) for a in staff.list_agents(session)}
        assert listed == {"alice@example.com": (False, ("networking",)),
                          "bob@example.com": (True, ("networking",))}


def test_teams_list_counts_open_tickets_and_members(store: Store) -> None:
    """Open means new, open or pending; members are listed by primary address."""
    with store.sessions.begin() as session:
        staff.add_team(session, "networking", address="Net@Example.com")
        staff.add_team(session, "support")
        staff.add_agent(session, "bob@example.com", name="Bob", teams=["networking"])
        staff.add_agent(session, "alice@example.com", name="Alice",
                        teams=["networking", "support"])
        net = session.scalars(select(Team).where(Team.name == "networking")).one()
        for status in ("new", "open", "pending", "resolved", "closed"):
            make_ticket(session, "dana@example.com", status=status).team = net
        with pytest.raises(InvalidInput, match="team support exists already"):
            staff.add_team(session, "support")
    with store.sessions() as session:
        assert staff.list_teams(session) == [
            staff.TeamInfo("networking", "net@example.com",
                           ("alice@example.com", "bob@example.com"), 3),
            staff.TeamInfo("support", None, ("alice@example.com",), 0),
        ]
