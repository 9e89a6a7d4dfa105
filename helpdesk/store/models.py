"""The ORM classes: SQLAlchemy 2.x mappings of the tables in `helpdesk.store.schema`.

The columns, their types, defaults and indexes are defined there, in Core, so
that commands that only read can skip the ORM; each class here adds the typed
attributes and the relationships. Schema changes go through Alembic
(`helpdesk/store/migrations`), never `create_all` outside tests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

from helpdesk.store import schema
from helpdesk.store.schema import NAMING, TIMER_STALE, UTCDateTime, utcnow

__all__ = ["NAMING", "TIMER_STALE", "UTCDateTime", "utcnow"]


class Base(DeclarativeBase):
    """Declarative base over the Core tables' metadata."""

    metadata = schema.metadata


class Contact(Base):
    """Anyone who writes to us or is copied on a ticket."""

    __table__ = schema.contacts

    id: Mapped[int]
    address: Mapped[str]
    name: Mapped[str]
    created_at: Mapped[datetime]


class Team(Base):
    """A group of agents with an optional forward address."""

    __table__ = schema.teams

    id: Mapped[int]
    name: Mapped[str]
    address: Mapped[str | None]
    lead_address: Mapped[str | None]
    created_at: Mapped[datetime]


class Agent(Base):
    """IT staff; an agent may write from several addresses."""

    __table__ = schema.agents

    id: Mapped[int]
    name: Mapped[str]
    active: Mapped[bool]
    notify: Mapped[bool]
    created_at: Mapped[datetime]

    addresses: Mapped[list[AgentAddress]] = relationship(
        back_populates="agent", cascade="all, delete-orphan", order_by="AgentAddress.id"
    )
    teams: Mapped[list[Team]] = relationship(secondary="team_members", order_by="Team.name")

    @property
    def primary_address(self) -> str:
        return self.addresses[0].address if self.addresses else ""


class AgentAddress(Base):
    """One address an agent writes from; an address belongs to one agent only."""

    __table__ = schema.agent_addresses

    id: Mapped[int]
    agent_id: Mapped[int]
    address: Mapped[str]

    agent: Mapped[Agent] = relationship(back_populates="addresses")


class TeamMember(Base):
    """Membership of an agent in a team."""

    __table__ = schema.team_members

    team_id: Mapped[int]
    agent_id: Mapped[int]


class Ticket(Base):
    """A request from one requester, and everything said about it."""

    __table__ = schema.tickets

    id: Mapped[int]
    subject: Mapped[str]
    status: Mapped[str]
    priority: Mapped[str]
    team_id: Mapped[int | None]
    assignee_id: Mapped[int | None]
    requester_id: Mapped[int | None]
    merged_into_id: Mapped[int | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    timer_due_at: Mapped[datetime | None]

    team: Mapped[Team | None] = relationship()
    assignee: Mapped[Agent | None] = relationship()
    requester: Mapped[Contact | None] = relationship()
    tags: Mapped[list[TicketTag]] = relationship(
        cascade="all, delete-orphan", order_by="TicketTag.tag"
    )
    messages: Mapped[list[Message]] = relationship(
        back_populates="ticket", order_by="Message.id", viewonly=True
    )


class TicketTag(Base):
    """A free-form label on a ticket; a table, so that stats can group by it."""

    __table__ = schema.ticket_tags

    ticket_id: Mapped[int]
    tag: Mapped[str]


class Participant(Base):
    """Who may write on a ticket: requester, people copied, agents who answered."""

    __table__ = schema.participants

    ticket_id: Mapped[int]
    address: Mapped[str]
    role: Mapped[str]


class Message(Base):
    """Every mail in or out, and every internal note, with its raw bytes."""

    __table__ = schema.messages

    id: Mapped[int]
    ticket_id: Mapped[int]
    direction: Mapped[str]
    kind: Mapped[str]
    message_id: Mapped[str]
    message_id_synthetic: Mapped[bool]
    content_hash: Mapped[str]
    in_reply_to: Mapped[str]
    references: Mapped[str]
    from_address: Mapped[str]
    from_name: Mapped[str]
    to_addresses: Mapped[str]
    cc_addresses: Mapped[str]
    subject: Mapped[str]
    sent_at: Mapped[datetime | None]
    received_at: Mapped[datetime]
    text: Mapped[str]
    new_text: Mapped[str]
    html: Mapped[str | None]
    size: Mapped[int]
    defects: Mapped[str]
    thread_index: Mapped[str]
    mail_class: Mapped[str]
    origin_source: Mapped[str]
    origin_mailbox: Mapped[str | None]
    origin_uidvalidity: Mapped[int | None]
    origin_uid: Mapped[int | None]
    origin_path: Mapped[str | None]
    raw: Mapped[bytes | None]

    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="Attachment.id"
    )


class Attachment(Base):
    """A decoded attachment of a stored message."""

    __table__ = schema.attachments

    id: Mapped[int]
    message_id: Mapped[int]
    filename: Mapped[str]
    content_type: Mapped[str]
    size: Mapped[int]
    sha256: Mapped[str]
    inline: Mapped[bool]
    content_id: Mapped[str | None]
    content: Mapped[bytes]

    message: Mapped[Message] = relationship(back_populates="attachments")


class Event(Base):
    """The audit trail: who (a person, a rule, the system) did what to which ticket."""

    __table__ = schema.events

    id: Mapped[int]
    ticket_id: Mapped[int]
    message_row_id: Mapped[int | None]
    created_at: Mapped[datetime]
    actor: Mapped[str]
    kind: Mapped[str]
    detail: Mapped[dict[str, Any]]


class OutboxItem(Base):
    """A mail to send: written in the transaction that caused it, sent by the sender edge."""

    __table__ = schema.outbox

    id: Mapped[int]
    ticket_id: Mapped[int | None]
    message_id: Mapped[str]
    envelope_from: Mapped[str]
    envelope_to: Mapped[list[str]]
    raw: Mapped[bytes]
    kind: Mapped[str]
    state: Mapped[str]
    attempts: Mapped[int]
    permanent_failures: Mapped[int]
    correlation_id: Mapped[str | None]
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None]
    claimed_until: Mapped[datetime | None]
    subject: Mapped[str | None]
    recipients: Mapped[list[OutboxRecipient]] = relationship(
        back_populates="item", cascade="all, delete-orphan", order_by="OutboxRecipient.id"
    )


class OutboxRecipient(Base):
    """One envelope recipient of an outbox row: its own state, because a relay answers
    RCPT per recipient (a greylisted Cc is retried, the others are not sent again)."""

    __table__ = schema.outbox_recipients

    id: Mapped[int]
    outbox_id: Mapped[int]
    address: Mapped[str]
    state: Mapped[str]
    attempts: Mapped[int]
    permanent_failures: Mapped[int]
    last_reply: Mapped[str | None]
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]
    item: Mapped[OutboxItem] = relationship(back_populates="recipients")


class OutboxAttempt(Base):
    """One delivery attempt of an outbox row, for `outbox show`."""

    __table__ = schema.outbox_attempts

    id: Mapped[int]
    outbox_id: Mapped[int]
    at: Mapped[datetime]
    holder: Mapped[str]
    outcome: Mapped[str]
    detail: Mapped[str]
    next_attempt_at: Mapped[datetime | None]


class RelayState(Base):
    """What the sender last saw of our SMTP relay (`outbox list`, `helpdesk status`).

    Problems of the relay itself (unreachable, TLS, AUTH, MAIL FROM refused)
    are not the mail's fault; they live here instead of on each outbox row.
    """

    __table__ = schema.relay_state

    relay: Mapped[str]
    state: Mapped[str]
    problem: Mapped[str | None]
    error: Mapped[str | None]
    since: Mapped[datetime]
    checked_at: Mapped[datetime]
    next_try_at: Mapped[datetime | None]
    holder: Mapped[str]


class MailboxState(Base):
    """Per mailbox: how far ingestion got, who holds the lease, and counters."""

    __table__ = schema.mailbox_state

    name: Mapped[str]
    uidvalidity: Mapped[int | None]
    last_uid: Mapped[int]
    lease_holder: Mapped[str | None]
    lease_expires_at: Mapped[datetime | None]
    last_poll_at: Mapped[datetime | None]
    counters: Mapped[dict[str, Any]]
    health: Mapped[str]
    last_error: Mapped[str | None]
    problem_since: Mapped[datetime | None]


class ImapFetchFailure(Base):
    """A message the IMAP server would not return (FETCH answered NO), and how often.

    Counted in the store so that the bound on retries holds across restarts.
    """

    __table__ = schema.imap_fetch_failures

    mailbox: Mapped[str]
    uidvalidity: Mapped[int]
    uid: Mapped[int]
    attempts: Mapped[int]
    last_error: Mapped[str]
    updated_at: Mapped[datetime]


class TimerFiring(Base):
    """The last firing of one `[[timer]]` on one ticket: a timer fires once per ticket state.

    `state` is the ticket's state the timer fired in and `left_state` the state the
    timer pass left the ticket in (helpdesk.rules.timers.state_key); the timer does
    not fire again while the ticket is in either. The primary key makes a firing a
    claim: two passes racing on one ticket cannot both record (and so both apply) it.
    """

    __table__ = schema.timer_firings

    ticket_id: Mapped[int]
    timer: Mapped[str]
    state: Mapped[str]
    left_state: Mapped[str | None]
    fired_at: Mapped[datetime]


class DaemonBeat(Base):
    """A running daemon's heartbeat: live while `expires_at` (the database's clock) is ahead."""

    __table__ = schema.daemons

    holder: Mapped[str]
    pool: Mapped[str]
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    wants_at: Mapped[datetime | None]


class QuarantineItem(Base):
    """A mail that could not be ingested, kept with its error until someone retries it.

    `state`: ``held`` (waiting for a person), ``resolved`` (a retry ingested it),
    ``released`` (a corrected copy was ingested in its place:
    `released_message_row_id`), ``discarded`` (a person decided it is not
    wanted; kept until `helpdesk quarantine purge`). `decided_by`/`decided_at`
    say who released or discarded it, and when.
    """

    __table__ = schema.quarantine

    id: Mapped[int]
    created_at: Mapped[datetime]
    error: Mapped[str]
    detail: Mapped[str]
    raw: Mapped[bytes]
    size: Mapped[int]
    content_sha256: Mapped[str]
    subject: Mapped[str]
    from_address: Mapped[str]
    state: Mapped[str]
    retries: Mapped[int]
    resolved_ticket_id: Mapped[int | None]
    origin_source: Mapped[str]
    origin_mailbox: Mapped[str | None]
    origin_uidvalidity: Mapped[int | None]
    origin_uid: Mapped[int | None]
    origin_path: Mapped[str | None]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None]
    decision_note: Mapped[str]
    released_message_row_id: Mapped[int | None]


class AutoReplyLog(Base):
    """One automatic reply sent to an address; the rate limit counts these."""

    __table__ = schema.auto_replies

    id: Mapped[int]
    address: Mapped[str]
    ticket_id: Mapped[int | None]
    sent_at: Mapped[datetime]


class Suppression(Base):
    """No automatic mail to this address until a time: it bounced permanently."""

    __table__ = schema.suppressions

    address: Mapped[str]
    until: Mapped[datetime]
    reason: Mapped[str]
    ticket_id: Mapped[int | None]
    created_at: Mapped[datetime]


class StoreValue(Base):
    """Small values the help desk keeps for itself, such as a generated signing key."""

    __table__ = schema.store_values

    key: Mapped[str]
    value: Mapped[str]
