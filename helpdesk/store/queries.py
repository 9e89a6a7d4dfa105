"""Named queries the services need; each takes a session and returns rows or values."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, selectinload
from sqlalchemy.orm.util import identity_key

from helpdesk.store import batchreads, schema
from helpdesk.store.direct import Direct
from helpdesk.store.models import (
    Agent,
    AgentAddress,
    Attachment,
    Event,
    Message,
    Participant,
    QuarantineItem,
    Team,
    Ticket,
    TicketTag,
)
from helpdesk.store.upsert import dialect_insert
from helpdesk.values import Direction, Origin, Priority, TicketStatus, TicketView


@dataclass(frozen=True, slots=True)
class StoredRef:
    """Where a stored message is: enough to report a duplicate."""

    id: int
    ticket_id: int
    message_id: str


_messages = schema.messages
_REF_COLUMNS = (_messages.c.id, _messages.c.ticket_id, _messages.c.message_id)
_BY_ORIGIN = Direct(
    select(*_REF_COLUMNS)
    .where(
        _messages.c.origin_mailbox == bindparam("mailbox"),
        _messages.c.origin_uidvalidity == bindparam("uidvalidity"),
        _messages.c.origin_uid == bindparam("uid"),
    )
    .limit(1)
)
_BY_CONTENT = Direct(
    select(*_REF_COLUMNS)
    .where(
        _messages.c.message_id == bindparam("message_id"),
        # A copy of a mail we sent (a Bcc, a list, an alias pointing back at us)
        # is ours whatever a relay did to its bytes: the Message-ID is enough.
        or_(_messages.c.content_hash == bindparam("content_hash"),
            _messages.c.direction == Direction.OUTGOING.value),
    )
    .limit(1)
)


def message_by_origin(session: Session, origin: Origin) -> StoredRef | None:
    """The stored message that came from exactly this server copy (IMAP mailbox+UIDVALIDITY+UID)."""
    key = batchreads.origin_key(origin)
    if key is None:
        return None
    ahead = batchreads.ahead_of(session)
    if ahead is not None and ahead.knows_origin(key):
        copy = ahead.origins.get(key)
        return StoredRef(copy.id, copy.ticket_id, copy.message_id) if copy else None
    mailbox, uidvalidity, uid = key
    row = _BY_ORIGIN.first(
        session.connection(), {"mailbox": mailbox, "uidvalidity": uidvalidity, "uid": uid})
    return StoredRef(*row) if row else None


def message_by_content(session: Session, message_id: str, content_hash: str) -> StoredRef | None:
    """The stored message with this Message-ID and content, or our own sent mail with this id."""
    ahead = batchreads.ahead_of(session)
    if ahead is not None and ahead.knows_message_id(message_id):
        copy = ahead.by_content(message_id, content_hash)
        return StoredRef(copy.id, copy.ticket_id, copy.message_id) if copy else None
    row = _BY_CONTENT.first(
        session.connection(), {"message_id": message_id, "content_hash": content_hash}
    )
    return StoredRef(*row) if row else None


_BY_IDS_COLUMNS = (_messages.c.id, _messages.c.message_id, _messages.c.ticket_id)
_TICKETS_BY_IDS = (
    select(*_BY_IDS_COLUMNS)
    .where(_messages.c.message_id.in_(bindparam("ids", expanding=True)))
    .order_by(_messages.c.id)
)
# Most mails name one to a few ids: a fixed IN list of that length runs directly.
_FIXED_IN_LISTS = 8


@functools.cache
def _tickets_by_n_ids(count: int) -> Direct:
    ids: list[Any] = [bindparam(f"id{i}") for i in range(count)]
    return Direct(select(*_BY_IDS_COLUMNS).where(_messages.c.message_id.in_(ids))
                  .order_by(_messages.c.id))


# Bound parameters per lookup: far below SQLite's 32,766 and PostgreSQL's 65,535,
# whatever a mail's References header holds (issue 12 §9).
_IDS_PER_QUERY = 500


def tickets_by_message_ids(session: Session, message_ids: Sequence[str]) -> dict[str, int]:
    """Map each known Message-ID (incoming or outgoing) to the ticket it is on."""
    unique = list(dict.fromkeys(message_ids))
    ahead = batchreads.ahead_of(session)
    if ahead is not None and all(ahead.knows_message_id(mid) for mid in unique):
        return ahead.tickets_by_message_ids(unique)
    found: dict[str, tuple[int, int]] = {}  # id -> (row id, ticket)
    conn = session.connection()
    for start in range(0, len(unique), _IDS_PER_QUERY):
        chunk = unique[start:start + _IDS_PER_QUERY]
        if len(chunk) <= _FIXED_IN_LISTS:
            rows: Sequence[Any] = _tickets_by_n_ids(len(chunk)).all(
                conn, {f"id{i}": mid for i, mid in enumerate(chunk)})
        else:
            rows = conn.execute(_TICKETS_BY_IDS, {"ids": chunk}).all()
        for row_id, mid, ticket_id in rows:
            if mid not in found or row_id < found[mid][0]:
                found[mid] = (row_id, ticket_id)  # the first stored copy wins
    return {mid: ticket_id for mid, (_row, ticket_id) in found.items()}


@dataclass(frozen=True, slots=True)
class TicketState:
    """A ticket as rules and actions read it, loaded by Core (ingest asks for every mail)."""

    view: TicketView
    created_at: datetime
    requester_name: str
    team_id: int | None
    assignee_id: int | None
    # Opened by the mail being filed: no earlier mail is on it.
    fresh: bool = False


_teams = schema.teams
_contacts = schema.contacts
_tags_t = schema.ticket_tags
_PRIMARY_ADDRESS = (
    select(schema.agent_addresses.c.address)
    .where(schema.agent_addresses.c.agent_id == schema.tickets.c.assignee_id)
    .order_by(schema.agent_addresses.c.id)
    .limit(1)
    .scalar_subquery()
)
_TICKET_STATE = Direct(
    select(schema.tickets, _contacts.c.address.label("requester_address"),
           _contacts.c.name.label("requester_name"), _teams.c.name.label("team_name"),
           _PRIMARY_ADDRESS.label("assignee_address"))
    .outerjoin(_contacts, _contacts.c.id == schema.tickets.c.requester_id)
    .outerjoin(_teams, _teams.c.id == schema.tickets.c.team_id)
    .where(schema.tickets.c.id == bindparam("ticket_id"))
)
_TAGS = Direct(select(_tags_t.c.tag).where(_tags_t.c.ticket_id == bindparam("ticket_id")))


def ticket_state(
    session: Session, ticket_id: int, participants: frozenset[str] | None = None
) -> TicketState | None:
    """The ticket's `TicketState` in two queries (three without `participants`), or None."""
    conn = session.connection()
    row: Any = _TICKET_STATE.first(conn, {"ticket_id": ticket_id})
    if row is None:
        return None
    tags = frozenset(tag for tag, in _TAGS.all(conn, {"ticket_id": ticket_id}))
    if participants is None:
        participants = _participants(conn, ticket_id)
    view = TicketView(
        id=row.id,
        status=TicketStatus(row.status),
        subject=row.subject,
        requester=row.requester_address,
        participants=participants,
        merged_into=row.merged_into_id,
        team=row.team_name,
        assignee=row.assignee_address,
        priority=Priority(row.priority),
        tags=tags,
    )
    return TicketState(view, row.created_at, row.requester_name or "", row.team_id,
                       row.assignee_id)


def expire_ticket(session: Session, ticket_id: int) -> None:
    """Make a loaded `Ticket` (if the session holds one) read its row again when next used.

    For callers that change a ticket's row by Core: an ORM object loaded
    earlier in the same transaction would otherwise keep the old values.
    """
    ticket = session.identity_map.get(identity_key(Ticket, ticket_id))
    if ticket is not None:
        session.expire(ticket)


def participants(session: Session, ticket_id: int) -> frozenset[str]:
    """The addresses that may write on a ticket."""
    return _participants(session.connection(), ticket_id)


def view_of(ticket: Ticket, participants: frozenset[str] = frozenset()) -> TicketView:
    """A snapshot of an already loaded ticket (templates need no participants)."""
    return TicketView(
        id=ticket.id,
        status=TicketStatus(ticket.status),
        subject=ticket.subject,
        requester=ticket.requester.address if ticket.requester else None,
        participants=participants,
        merged_into=ticket.merged_into_id,
        team=ticket.team.name if ticket.team else None,
        assignee=ticket.assignee.primary_address if ticket.assignee else None,
        priority=Priority(ticket.priority),
        tags=frozenset(t.tag for t in ticket.tags),
    )


_tickets = schema.tickets
_THREAD_VIEW = Direct(
    select(_tickets.c.id, _tickets.c.status, _tickets.c.subject, _tickets.c.merged_into_id,
           schema.contacts.c.address)
    .outerjoin(schema.contacts, schema.contacts.c.id == _tickets.c.requester_id)
    .where(_tickets.c.id == bindparam("ticket_id"))
)
_PARTICIPANTS = Direct(select(schema.participants.c.address).where(
    schema.participants.c.ticket_id == bindparam("ticket_id")
))


def _participants(conn: Connection, ticket_id: int) -> frozenset[str]:
    return frozenset(address for address, in _PARTICIPANTS.all(conn, {"ticket_id": ticket_id}))


def thread_view(session: Session, ticket_id: int) -> TicketView | None:
    """The part of a ticket threading needs (status, requester, participants), in two queries."""
    conn = session.connection()
    row = _THREAD_VIEW.first(conn, {"ticket_id": ticket_id})
    if row is None:
        return None
    row_id, status, subject, merged_into, requester = row
    return TicketView(
        id=row_id,
        status=TicketStatus(status),
        subject=subject,
        requester=requester,
        participants=_participants(conn, ticket_id),
        merged_into=merged_into,
    )


_AGENT_ADDRESSES = select(schema.agent_addresses.c.address)


def is_agent_address(session: Session, address: str) -> bool:
    """Whether `address` belongs to an agent (active or not).

    The addresses are read once per transaction: a group commit asks for every
    mail, and agents do not change in the middle of one.
    """
    known = session.info.get("helpdesk.agent_addresses")
    if known is None:
        known = frozenset(session.connection().execute(_AGENT_ADDRESSES).scalars())
        session.info["helpdesk.agent_addresses"] = known
    return address.lower() in known


def agent_by_address(session: Session, address: str) -> Agent | None:
    """The agent who writes from `address`, active or not."""
    return session.scalars(
        select(Agent).join(AgentAddress).where(AgentAddress.address == address.lower())
    ).first()


def team_by_name(session: Session, name: str) -> Team | None:
    return session.scalars(select(Team).where(Team.name == name)).first()


def known_team(session: Session, name: str) -> Team | None:
    """`team_by_name`, remembered for the rest of the transaction once found (ingest asks
    for the same few teams again and again)."""
    cache: dict[str, Team] = session.info.setdefault("helpdesk.teams", {})
    team = cache.get(name)
    if team is None:
        team = team_by_name(session, name)
        if team is not None:
            cache[name] = team
    return team


_CONTACT = Direct(select(_contacts.c.id, _contacts.c.name).where(
    _contacts.c.address == bindparam("address")))
_INSERT_CONTACT = insert(_contacts).returning(_contacts.c.id)


# Set on the group-commit writer's sessions only (`contacts_apart`): a dry run must
# commit nothing, and its sequences are locked by its own transaction.
_APART = "helpdesk.contacts_apart"


def contacts_apart(session: Session) -> None:
    """Let `contact` commit new contacts on a connection of their own (PostgreSQL): for
    the group-commit writer, whose transactions hold a whole batch of mail."""
    session.info[_APART] = True


def contact(session: Session, address: str, name: str, now: datetime) -> tuple[int, str]:
    """The id and stored name of the contact for `address`, created (with `name`) if new.

    Safe against a concurrent insert of the same address.
    """
    ahead = batchreads.ahead_of(session)
    if ahead is not None and ahead.knows_address(address):
        known = ahead.contacts.get(address)
        if known is not None:
            return known
        ahead.contacts[address] = made = _new_contact(session, address, name, now)
        return made
    found = _CONTACT.first(session.connection(), {"address": address})
    if found is not None:
        return int(found[0]), found[1] or ""
    return _new_contact(session, address, name, now)


def _new_contact(session: Session, address: str, name: str, now: datetime) -> tuple[int, str]:
    """`contact`'s insert, for an address not found: the new row's, or a concurrent one's."""
    bind = session.get_bind()
    if session.info.get(_APART) and isinstance(bind, Engine) and bind.dialect.name == "postgresql":
        return _contact_apart(bind, address, name, now, batchreads.ahead_of(session))
    try:
        with session.begin_nested():
            # The connection must be asked for inside the savepoint: the session
            # emits SAVEPOINT when it hands the connection out.
            new_id = session.connection().execute(
                _INSERT_CONTACT, {"address": address, "name": name, "created_at": now}
            ).scalar_one()
    except IntegrityError:
        # Another daemon inserted the same address between our select and insert.
        row = _CONTACT.first(session.connection(), {"address": address})
        assert row is not None  # the insert that beat ours is committed
        return int(row[0]), row[1] or ""
    return int(new_id), name


def _contact_apart(engine: Engine, address: str, name: str, now: datetime,
                   ahead: batchreads.Ahead | None = None) -> tuple[int, str]:
    """`contact`'s insert on PostgreSQL, committed at once on a connection of its own.

    In the caller's transaction (a whole batch of mail) the new row would hold its
    unique key until the batch commits, and another daemon storing mail from the same
    person, say through a second mailbox, would wait that long (the largest wait of two
    daemons on two mailboxes in bench/daemon.py). A contact kept by a batch that fails harms
    nothing. Its commit does not wait for the disk: the batch's own commit, later in
    the log, flushes it too. One statement in autocommit, so one round trip (BEGIN,
    SET LOCAL, INSERT and COMMIT were four); while a batch is filed, on a connection
    it keeps for its new contacts (`batchreads.Ahead.apart`), not one checked out of
    the pool, and pinged, for each.
    """
    if ahead is None:
        with engine.connect() as conn:
            return _insert_apart(conn.execution_options(isolation_level="AUTOCOMMIT"),
                                 address, name, now)
    if ahead.apart is None:
        ahead.apart = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    return _insert_apart(ahead.apart, address, name, now)


def _insert_apart(conn: Connection, address: str, name: str, now: datetime) -> tuple[int, str]:
    new_id = conn.execute(_insert_contact_or_nothing(), {
        "address": address, "name": name, "created_at": now}).scalar_one_or_none()
    if new_id is not None:
        return int(new_id), name
    # Another writer's, committed (ON CONFLICT waited for it if it was not yet).
    row = conn.execute(select(_contacts.c.id, _contacts.c.name)
                       .where(_contacts.c.address == address)).one()
    return int(row[0]), row[1] or ""


@functools.cache
def _insert_contact_or_nothing() -> Any:
    # set_config(..., is_local => true) lasts until the end of the statement's own
    # transaction, whose commit reads it before resetting it.
    lazy = select(func.set_config("synchronous_commit", "off", true())).subquery("lazy")
    columns = _contacts.c
    values = select(*(bindparam(key, type_=columns[key].type)
                      for key in ("address", "name", "created_at"))).select_from(lazy)
    return (dialect_insert("postgresql")(_contacts)
            .from_select(["address", "name", "created_at"], values)
            .on_conflict_do_nothing().returning(columns.id))


@functools.cache
def _add_participant(dialect: str) -> Direct:
    return Direct(dialect_insert(dialect)(schema.participants).on_conflict_do_nothing())


def add_participants(session: Session, ticket_id: int, people: Sequence[tuple[str, str]]) -> None:
    """Record (address, role) pairs as participants of the ticket; known ones are kept as they are.

    ON CONFLICT DO NOTHING, so two daemons adding the same person to a ticket
    at once cannot fail each other's transaction.
    """
    roles: dict[str, str] = {}
    for address, role in people:
        roles.setdefault(address, role)  # the first role given wins
    if not roles:
        return
    conn = session.connection()
    rows = [{"ticket_id": ticket_id, "address": a, "role": r} for a, r in roles.items()]
    _add_participant(conn.dialect.name).executemany(conn, rows)


def held_quarantine_by_hash(session: Session, sha256: str) -> QuarantineItem | None:
    """The quarantined copy of these exact bytes that is still held, if any."""
    return session.scalars(
        select(QuarantineItem)
        .where(QuarantineItem.content_sha256 == sha256, QuarantineItem.state == "held")
        .limit(1)
    ).first()


def ticket_tags(session: Session, ticket_id: int) -> list[str]:
    return list(
        session.scalars(select(TicketTag.tag).where(TicketTag.ticket_id == ticket_id)).all()
    )


def export_ticket_ids(
    session: Session, *, ticket_id: int | None = None, since: datetime | None = None
) -> list[int]:
    """The tickets an export covers, in id order: one ticket, those active since, or all."""
    query = select(Ticket.id).order_by(Ticket.id)
    if ticket_id is not None:
        query = query.where(Ticket.id == ticket_id)
    if since is not None:
        query = query.where(Ticket.updated_at >= since)
    return list(session.scalars(query))


@dataclass(frozen=True)
class RawMail:
    """A stored mail's bytes as received or sent, with who sent it and when."""

    ticket_id: int
    message_row_id: int
    sender: str
    when: datetime
    raw: bytes


def raw_mails(session: Session, ticket_ids: Sequence[int]) -> Iterator[RawMail]:
    """The raw mails of these tickets, ticket by ticket, each in arrival order (no notes)."""
    query = (
        select(Message.ticket_id, Message.id, Message.from_address, Message.received_at,
               Message.raw)
        .where(Message.ticket_id.in_(list(ticket_ids)), Message.raw.is_not(None))
        .order_by(Message.ticket_id, Message.id)
        .execution_options(yield_per=50)
    )
    for ticket_id, row_id, sender, when, raw in session.execute(query):
        yield RawMail(ticket_id, row_id, sender, when, raw or b"")


def tickets_with_history(session: Session, ticket_ids: Sequence[int]) -> list[Ticket]:
    """These tickets with their messages and attachments' metadata (no bytes), in id order."""
    return list(session.scalars(
        select(Ticket)
        .where(Ticket.id.in_(list(ticket_ids)))
        .options(
            selectinload(Ticket.tags),
            selectinload(Ticket.team),
            selectinload(Ticket.requester),
            selectinload(Ticket.assignee).selectinload(Agent.addresses),
            selectinload(Ticket.messages).options(
                defer(Message.raw),
                selectinload(Message.attachments).options(defer(Attachment.content)),
            ),
        )
        .order_by(Ticket.id)
    ))


def events_of(session: Session, ticket_ids: Sequence[int]) -> dict[int, list[Event]]:
    """The events of these tickets, oldest first, by ticket."""
    found: dict[int, list[Event]] = {i: [] for i in ticket_ids}
    for e in session.scalars(select(Event).where(Event.ticket_id.in_(list(ticket_ids)))
                             .order_by(Event.id)):
        found[e.ticket_id].append(e)
    return found


def participants_of(
    session: Session, ticket_ids: Sequence[int]
) -> dict[int, list[tuple[str, str]]]:
    """(address, role) of the participants of these tickets, by ticket."""
    found: dict[int, list[tuple[str, str]]] = {i: [] for i in ticket_ids}
    for ticket_id, address, role in session.execute(
            select(Participant.ticket_id, Participant.address, Participant.role)
            .where(Participant.ticket_id.in_(list(ticket_ids)))
            .order_by(Participant.ticket_id, Participant.address)):
        found[ticket_id].append((address, role))
    return found
