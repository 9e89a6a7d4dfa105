"""Ticket use cases shared by the CLI, e-mail commands, rules and timers.

Show, assign, status (and the resolution notice), priority, tags, note,
merge, search. Each function works inside the caller's transaction and
records an event for every change, naming the actor.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from helpdesk.errors import InvalidInput, NotFound
from helpdesk.store import queries
from helpdesk.store import search as full_text
from helpdesk.store.events import INSERT_EVENT
from helpdesk.store.models import Event, Message, Participant, Ticket, TicketTag, utcnow
from helpdesk.values import Address, Direction, MessageKind, Priority, TicketStatus

if TYPE_CHECKING:
    from helpdesk.desk.notices import Notice



def get(session: Session, ticket_id: int) -> Ticket:
    """The ticket with its messages and attachments loaded, or NotFound."""
    ticket = session.scalars(
        select(Ticket)
        .where(Ticket.id == ticket_id)
        .options(selectinload(Ticket.messages).selectinload(Message.attachments))
    ).first()
    if ticket is None:
        raise NotFound("ticket", ticket_id)
    return ticket


def get_unmerged(session: Session, ticket_id: int) -> Ticket:
    """The ticket, or InvalidInput naming the ticket it was merged into (work happens there)."""
    ticket = get(session, ticket_id)
    if ticket.merged_into_id is not None:
        raise InvalidInput(
            f"ticket {ticket_id} was merged into ticket {ticket.merged_into_id}; use that one"
        )
    return ticket


def events(session: Session, ticket_id: int) -> list[Event]:
    """The audit trail of a ticket, oldest first."""
    return list(
        session.scalars(
            select(Event).where(Event.ticket_id == ticket_id).order_by(Event.id)
        )
    )


def search(
    session: Session, query: str, *, statuses: Sequence[str] = (), limit: int = 20
) -> list[full_text.SearchHit]:
    """Tickets whose mail matches `query` (words, "phrases", or, -word), best first.

    InvalidInput when the query holds nothing to look for; SearchUnavailable
    when the database cannot search (SQLite without FTS5).
    """
    return full_text.search(session, full_text.parse_query(query), statuses=statuses,
                            limit=limit)


def assign(
    session: Session,
    ticket_id: int,
    *,
    agent: str | None = None,
    team: str | None = None,
    actor: str,
    now: datetime | None = None,
) -> Ticket:
    """Assign the ticket to an agent (by address) and/or a team (by name)."""
    if agent is None and team is None:
        raise InvalidInput("give an agent address, a team, or both")
    ticket = get(session, ticket_id)
    when = now or utcnow()
    if team is not None:
        team_row = queries.team_by_name(session, team)
        if team_row is None:
            raise NotFound("team", team)
        if ticket.team_id != team_row.id:
            before = ticket.team.name if ticket.team else None
            ticket.team = team_row
            _log(session, ticket, actor, "team.changed", {"from": before, "to": team}, when)
    if agent is not None:
        agent_row = queries.agent_by_address(session, agent)
        if agent_row is None:
            raise NotFound("agent", agent)
        if not agent_row.active:
            raise InvalidInput(f"agent {agent} is disabled")
        if ticket.assignee_id != agent_row.id:
            before = ticket.assignee.primary_address if ticket.assignee else None
            ticket.assignee = agent_row
            _log(
                session,
                ticket,
                actor,
                "assignee.changed",
                {"from": before, "to": agent_row.primary_address},
                when,
            )
    ticket.updated_at = when
    session.flush()
    return ticket


def set_status(
    session: Session,
    ticket_id: int,
    status: str,
    *,
    actor: str,
    now: datetime | None = None,
    notice: Notice | None = None,
    message_row_id: int | None = None,
) -> Ticket:
    """Move the ticket to `status` (a word people type); see `change_status`."""
    try:
        new = TicketStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in TicketStatus)
        raise InvalidInput(f"unknown status {status!r}; use one of {allowed}") from None
    ticket = get(session, ticket_id)
    change_status(session, ticket, new, actor=actor, now=now or utcnow(), notice=notice,
                  message_row_id=message_row_id)
    session.flush()
    return ticket


def change_status(
    session: Session,
    ticket: Ticket,
    status: TicketStatus,
    *,
    actor: str,
    now: datetime,
    notice: Notice | None = None,
    message_row_id: int | None = None,
) -> bool:
    """Move a loaded ticket to `status` with an event; False when it already had it.

    Every path that changes a status comes here: the CLI, `#status`, rules
    and timers. A move *into* `resolved` is a resolution: with a `notice` it
    mails the requester the resolution notice (`resolution_notice`), so a
    ticket resolved, reopened and resolved again announces each resolution
    once, and setting `resolved` on a resolved ticket announces nothing.
    `closed` is final and administrative (merges close tickets): no notice.
    """
    if ticket.status == status.value:
        return False
    before = ticket.status
    for column, value in status_columns(status, ticket.resolved_at, now).items():
        setattr(ticket, column, value)
    _log(session, ticket, actor, "status.changed", {"from": before, "to": status.value}, now,
         message_row_id)
    if status is TicketStatus.RESOLVED and notice is not None:
        # Imported here: mail composition is only needed when a ticket is resolved,
        # and `helpdesk tickets list` should not pay for loading it.
        from helpdesk.desk.notices import resolution_notice

        resolution_notice(session, ticket, notice, actor=actor, now=now,
                          message_row_id=message_row_id)
    return True


def status_columns(
    status: TicketStatus, resolved_at: datetime | None, now: datetime
) -> dict[str, object]:
    """The columns a move to `status` sets; a finished ticket keeps its resolution time."""
    finished = status in (TicketStatus.RESOLVED, TicketStatus.CLOSED)
    return {"status": status.value, "resolved_at": (resolved_at or now) if finished else None,
            "updated_at": now}


def last_customer_message(session: Session, ticket_id: int) -> Message | None:
    """The newest mail a customer sent on the ticket, if any."""
    return session.scalars(
        select(Message)
        .where(
            Message.ticket_id == ticket_id,
            Message.kind == MessageKind.CUSTOMER.value,
            Message.direction == Direction.INCOMING.value,
        )
        .order_by(Message.id.desc())
        .limit(1)
    ).first()


def add_note(
    session: Session,
    ticket_id: int,
    *,
    author: Address,
    text: str,
    domain: str,
    now: datetime | None = None,
    origin: str = "cli",
) -> Message:
    """Store an internal note by `author` on the ticket; a note is never relayed to anyone.

    The note gets a synthetic Message-ID on our `domain` (``note.<uuid>@domain``),
    unique, so that it can never collide with real mail or be taken for the
    requester's thread anchor.
    """
    body = text.strip()
    if not body:
        raise InvalidInput("a note needs some text")
    ticket = get_unmerged(session, ticket_id)
    when = now or utcnow()
    message_id = f"note.{uuid.uuid4().hex}@{domain}"
    note = Message(
        ticket_id=ticket.id,
        direction=Direction.INCOMING.value,
        kind=MessageKind.NOTE.value,
        message_id=message_id,
        message_id_synthetic=True,
        content_hash=hashlib.sha256(body.encode("utf-8")).hexdigest(),
        from_address=author.address.lower(),
        from_name=author.name[:200],
        subject=ticket.subject,
        sent_at=when,
        received_at=when,
        text=body,
        new_text=body,
        size=len(body.encode("utf-8")),
        origin_source=origin,
    )
    session.add(note)
    session.flush()
    ticket.updated_at = when
    session.add(Event(ticket_id=ticket.id, message_row_id=note.id, actor=author.address.lower(),
                      kind="note.added", detail={"message_id": message_id}, created_at=when))
    session.flush()
    return note


@dataclass(frozen=True)
class Merged:
    """What a merge did: both tickets, and what was copied onto the surviving one."""

    source: Ticket
    target: Ticket
    participants: tuple[str, ...]
    tags: tuple[str, ...]


def merge(
    session: Session, ticket_id: int, into_id: int, *, actor: str, now: datetime | None = None
) -> Merged:
    """Merge ticket `ticket_id` into `into_id`.

    Nothing moves: the merged ticket keeps its messages, points at the other
    with `merged_into_id` and is closed; its participants and tags are copied
    over, so that later mail to its tag threads onto `into_id` (threading
    follows `merged_into`) and its requester hears the replies there.

    Refused when merging a ticket into itself, merging a ticket twice, or
    merging into a ticket that is itself merged: the person names the ticket
    that lives on, and chains stay as short as merges made them.
    """
    if ticket_id == into_id:
        raise InvalidInput(f"cannot merge ticket {ticket_id} into itself")
    source = get(session, ticket_id)
    target = get(session, into_id)
    if source.merged_into_id is not None:
        raise InvalidInput(
            f"ticket {ticket_id} is already merged into ticket {source.merged_into_id}"
        )
    if target.merged_into_id is not None:
        raise InvalidInput(
            f"ticket {into_id} is itself merged into ticket {target.merged_into_id}; "
            f"merge into ticket {target.merged_into_id} instead"
        )
    when = now or utcnow()

    people: dict[str, str] = {}
    if source.requester is not None:
        people[source.requester.address] = "cc"
    for address, role in session.execute(
        select(Participant.address, Participant.role).where(Participant.ticket_id == source.id)
    ):
        # The merged ticket's requester is copied on the surviving ticket; the
        # surviving ticket keeps its own requester.
        people.setdefault(address, "cc" if role == "requester" else role)
    known = set(
        session.scalars(select(Participant.address).where(Participant.ticket_id == target.id))
    )
    if target.requester is not None:
        known.add(target.requester.address)
    added_people = sorted(a for a in people if a not in known)
    queries.add_participants(session, target.id, [(a, people[a]) for a in added_people])

    have = {t.tag for t in target.tags}
    added_tags = sorted({t.tag for t in source.tags} - have)
    for tag in added_tags:
        target.tags.append(TicketTag(tag=tag))

    before = source.status
    source.merged_into_id = target.id
    source.status = TicketStatus.CLOSED.value
    source.resolved_at = source.resolved_at or when
    source.updated_at = when
    target.updated_at = when
    _log(session, source, actor, "ticket.merged", {"into": target.id}, when)
    if before != TicketStatus.CLOSED.value:
        _log(session, source, actor, "status.changed",
             {"from": before, "to": TicketStatus.CLOSED.value,
              "reason": f"merged into ticket {target.id}"}, when)
    _log(session, target, actor, "ticket.merged",
         {"from": source.id, "participants": added_people, "tags": added_tags}, when)
    session.flush()
    return Merged(source, target, tuple(added_people), tuple(added_tags))


def change_priority(
    session: Session,
    ticket: Ticket,
    priority: Priority,
    *,
    actor: str,
    now: datetime,
    message_row_id: int | None = None,
) -> bool:
    """Set the priority of a loaded ticket, with an event; False when it already had it."""
    if ticket.priority == priority.value:
        return False
    _log(session, ticket, actor, "priority.changed",
         {"from": ticket.priority, "to": priority.value}, now, message_row_id)
    ticket.priority = priority.value
    ticket.updated_at = now
    return True


# The length of the ticket_tags.tag column.
MAX_TAG_LENGTH = 100


def tag_problem(tags: Sequence[str]) -> str | None:
    """Why these tags cannot be stored, or None: each must fit the tag column."""
    too_long = next((tag for tag in tags if len(tag) > MAX_TAG_LENGTH), None)
    if too_long is not None:
        return f"tag {too_long[:20]!r}... is longer than {MAX_TAG_LENGTH} characters"
    return None


def add_tags(
    session: Session,
    ticket: Ticket,
    tags: Sequence[str],
    *,
    actor: str,
    now: datetime,
    message_row_id: int | None = None,
) -> list[str]:
    """Add tags to a loaded ticket, with one event; returns the ones it did not have.

    Linear in the ticket's tags plus `tags`: callers with many tags (an
    agent's `#tag` lines) pass them in one call, not one call each. Raises
    InvalidInput for a tag longer than the tag column (`tag_problem`).
    """
    problem = tag_problem(tags)
    if problem:
        raise InvalidInput(problem)
    have = {t.tag for t in ticket.tags}
    new = [tag for tag in dict.fromkeys(tags) if tag and tag not in have]
    for tag in new:
        ticket.tags.append(TicketTag(tag=tag))
    if new:
        _log(session, ticket, actor, "tags.added", {"tags": new}, now, message_row_id)
        ticket.updated_at = now
    return new


def remove_tags(
    session: Session,
    ticket: Ticket,
    tags: Sequence[str],
    *,
    actor: str,
    now: datetime,
    message_row_id: int | None = None,
) -> list[str]:
    """Remove tags from a loaded ticket, with one event; returns the ones it had."""
    gone = set(tags)
    removed = [t.tag for t in ticket.tags if t.tag in gone]
    if removed:
        ticket.tags = [t for t in ticket.tags if t.tag not in gone]
        _log(session, ticket, actor, "tags.removed", {"tags": removed}, now, message_row_id)
        ticket.updated_at = now
    return removed


MAX_TAG_LENGTH = 100  # TicketTag.tag


def clean_tags(tags: Sequence[str]) -> list[str]:
    """Tags as people type them, checked: one word each (as `#tag` splits them), not too long."""
    cleaned: list[str] = []
    for raw in tags:
        tag = raw.strip()
        if not tag or any(ch.isspace() or ch == "," for ch in tag):
            raise InvalidInput(f"a tag is one word without commas (got {raw!r})")
        if len(tag) > MAX_TAG_LENGTH:
            raise InvalidInput(f"a tag has at most {MAX_TAG_LENGTH} characters (got {len(tag)})")
        cleaned.append(tag)
    return list(dict.fromkeys(cleaned))


def _log(
    session: Session,
    ticket: Ticket,
    actor: str,
    kind: str,
    detail: dict[str, object],
    when: datetime,
    message_row_id: int | None = None,
) -> None:
    # Core, not a pending ORM object: the event is written at once (no flush of
    # its own), which matters inside ingest's group commit.
    INSERT_EVENT.execute(session.connection(), {
        "ticket_id": ticket.id, "message_row_id": message_row_id, "actor": actor,
        "kind": kind, "detail": detail, "created_at": when})

