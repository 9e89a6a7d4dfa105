"""The listings of read-only commands (`tickets list`, `quarantine list`; the filters
`stats` shares), in Core alone.

No ORM here: `tickets list` runs on a plain connection, so that the command
does not pay for importing `sqlalchemy.orm` and mapping the models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, Row, String, func, literal, select

from helpdesk.store.schema import agent_addresses as _agent_addresses
from helpdesk.store.schema import connection_of
from helpdesk.store.schema import contacts as _contacts
from helpdesk.store.schema import messages as _messages
from helpdesk.store.schema import quarantine as _quarantine
from helpdesk.store.schema import teams as _teams
from helpdesk.store.schema import ticket_tags as _tags
from helpdesk.store.schema import tickets as _tickets

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True)
class TicketFilter:
    """What `tickets list` (and `stats`) narrow by; None, empty or False means any.

    `tags`: tickets carrying every one of them. `since`: tickets with activity
    (`updated_at`) since then. `subject`: a case-insensitive substring.
    """

    status: Sequence[str] | None = None
    team: str | None = None
    assignee: str | None = None
    requester: str | None = None
    tags: Sequence[str] = ()
    priority: str | None = None
    since: datetime | None = None
    unassigned: bool = False
    subject: str | None = None
    limit: int = 50

    def describe(self) -> tuple[str, ...]:
        """The filters in force, as `key=value` words for people (the limit aside)."""
        words = [f"status={','.join(self.status)}"] if self.status else []
        for key in ("team", "assignee", "requester", "priority", "subject"):
            value = getattr(self, key)
            if value:
                words.append(f"{key}={value}")
        words += [f"tag={tag}" for tag in self.tags]
        if self.unassigned:
            words.append("unassigned")
        if self.since is not None:
            words.append(f"since={self.since.isoformat(timespec='minutes')}")
        return tuple(words)


@dataclass(frozen=True)
class TicketSummary:
    """One row of a ticket listing."""

    id: int
    subject: str
    status: str
    priority: str
    team: str | None
    assignee: str | None
    requester: str | None
    created_at: datetime
    updated_at: datetime
    message_count: int


def ticket_conditions(flt: TicketFilter) -> list[ColumnElement[bool]]:
    """The WHERE terms of `flt` on the tickets table, `since` aside (callers differ on it).

    Names (team, agent and requester addresses, tags) become subqueries on
    their own indexes, so each filter is an index range on tickets.
    """
    t = _tickets.c
    terms: list[ColumnElement[bool]] = []
    if flt.status:
        terms.append(t.status.in_(list(flt.status)))
    if flt.team:
        terms.append(t.team_id == select(_teams.c.id).where(_teams.c.name == flt.team)
                     .scalar_subquery())
    if flt.assignee:
        terms.append(t.assignee_id == select(_agent_addresses.c.agent_id)
                     .where(_agent_addresses.c.address == flt.assignee.strip().lower())
                     .scalar_subquery())
    if flt.unassigned:
        terms.append(t.assignee_id.is_(None))
    if flt.requester:
        terms.append(t.requester_id == select(_contacts.c.id)
                     .where(_contacts.c.address == flt.requester.strip().lower())
                     .scalar_subquery())
    if flt.priority:
        terms.append(t.priority == flt.priority)
    for tag in dict.fromkeys(flt.tags):
        terms.append(t.id.in_(select(_tags.c.ticket_id)
                              .where(_tags.c.tag == tag)))
    if flt.subject:
        terms.append(_contains_folded(t.subject, flt.subject))
    return terms


def _contains_folded(column: ColumnElement[str], text: str) -> ColumnElement[bool]:
    # Both sides lower-cased by the database, so its idea of case (ASCII only on
    # SQLite) applies to both and a non-ASCII pattern still matches itself.
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = func.lower(literal(f"%{escaped}%", String()))
    return func.lower(column).like(pattern, escape="\\")


def list_tickets(conn: Connection | Session, flt: TicketFilter) -> list[TicketSummary]:
    """Tickets matching `flt`, most recently updated first.

    The page of tickets is chosen first (an index range in (updated_at, id)
    order, LIMIT applied), and only then are names joined and messages counted,
    for those rows alone: counting before the LIMIT took seconds at a million
    tickets.
    """
    t = _tickets.c
    terms = ticket_conditions(flt)
    if flt.since is not None:
        terms.append(t.updated_at >= flt.since)
    page = (
        select(t.id, t.subject, t.status, t.priority, t.team_id, t.assignee_id,
               t.requester_id, t.created_at, t.updated_at)
        .where(*terms)
        .order_by(t.updated_at.desc(), t.id.desc())
        .limit(flt.limit)
        .subquery("page")
    )
    messages = (
        select(func.count()).select_from(_messages)
        .where(_messages.c.ticket_id == page.c.id)
        .scalar_subquery()
    )
    assignee = (  # the agent's primary address: their first one
        select(_agent_addresses.c.address)
        .where(_agent_addresses.c.agent_id == page.c.assignee_id)
        .order_by(_agent_addresses.c.id)
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(page, _teams.c.name.label("team"), _contacts.c.address.label("requester"),
               assignee.label("assignee"), messages.label("message_count"))
        .select_from(page)
        .outerjoin(_teams, _teams.c.id == page.c.team_id)
        .outerjoin(_contacts, _contacts.c.id == page.c.requester_id)
        .order_by(page.c.updated_at.desc(), page.c.id.desc())
    )
    return [
        TicketSummary(
            id=row.id, subject=row.subject, status=row.status, priority=row.priority,
            team=row.team, assignee=row.assignee, requester=row.requester,
            created_at=row.created_at, updated_at=row.updated_at,
            message_count=int(row.message_count),
        )
        for row in connection_of(conn).execute(query)
    ]


# Every column but the mail's bytes and the traceback: a list of a hundred large
# quarantined mails must not read them all into memory.
_QUARANTINE_LISTED = [c for c in _quarantine.c if c.name not in ("raw", "detail")]


def quarantined(conn: Connection | Session, *, state: str | None = "held",
                limit: int = 100) -> list[Row[Any]]:
    """Quarantined items, newest first, without their bytes; `state=None`: every state."""
    query = select(*_QUARANTINE_LISTED).order_by(_quarantine.c.id.desc()).limit(limit)
    if state:
        query = query.where(_quarantine.c.state == state)
    return list(connection_of(conn).execute(query))

