"""SQLAlchemy 2.x models: the tables of design.md §3.

Conventions: timestamps are stored as timezone-aware UTC; e-mail addresses are
stored lower-cased; raw mail is kept byte for byte. Schema changes go through
Alembic (`helpdesk/store/migrations`), never `create_all` outside tests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints make Alembic migrations portable between SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always aware UTC in Python, whatever the backend keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite hands back naive values; they were written as UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BigInteger ids on PostgreSQL; SQLite autoincrements only a column typed INTEGER.
Id = BigInteger().with_variant(Integer(), "sqlite")
Blob = LargeBinary()


def utcnow() -> datetime:
    """Default for timestamp columns; services pass explicit times where tests need a clock."""
    return datetime.now(UTC)


# `tickets.timer_due_at` holds this when the ticket changed since its timer deadline was
# computed: "look at it on the next timer pass". A date long past, so that one indexed
# range (`timer_due_at <= now`) finds both the stale and the due tickets. Database
# triggers (migration 0009) write it on every change of a ticket or its tags, whoever
# makes the change (ORM, Core, raw SQL), so no writer can forget it.
TIMER_STALE = datetime(1970, 1, 1, tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base with portable constraint names."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class Contact(Base):
    """Anyone who writes to us or is copied on a ticket."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Team(Base):
    """A group of agents with an optional forward address."""

    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    address: Mapped[str | None] = mapped_column(String(320))
    # Where escalations go (time-driven rules); the team address when unset.
    lead_address: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Agent(Base):
    """IT staff; an agent may write from several addresses."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    notify: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    addresses: Mapped[list[AgentAddress]] = relationship(
        back_populates="agent", cascade="all, delete-orphan", order_by="AgentAddress.id"
    )
    teams: Mapped[list[Team]] = relationship(secondary="team_members", order_by="Team.name")

    @property
    def primary_address(self) -> str:
        return self.addresses[0].address if self.addresses else ""


class AgentAddress(Base):
    """One address an agent writes from; an address belongs to one agent only."""

    __tablename__ = "agent_addresses"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320), unique=True)

    agent: Mapped[Agent] = relationship(back_populates="addresses")


class TeamMember(Base):
    """Membership of an agent in a team."""

    __tablename__ = "team_members"

    team_id: Mapped[int] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[int] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )


class Ticket(Base):
    """A request from one requester, and everything said about it."""

    __tablename__ = "tickets"
    __table_args__ = (
        # `tickets list` orders by (updated_at, id) newest first and narrows by one of
        # these columns: each index answers its filter in order, without a sort.
        Index("ix_tickets_updated", "updated_at", "id"),
        Index("ix_tickets_status_updated", "status", "updated_at", "id"),
        Index("ix_tickets_priority_updated", "priority", "updated_at", "id"),
        Index("ix_tickets_team_updated", "team_id", "updated_at", "id"),
        Index("ix_tickets_assignee_updated", "assignee_id", "updated_at", "id"),
        Index("ix_tickets_requester_updated", "requester_id", "updated_at", "id"),
        # Only tickets with a deadline (or a stale one) are indexed: closed tickets,
        # the vast majority, have none, and the timer pass reads a short range, in
        # the index's order (whatever the planner's statistics say).
        Index("ix_tickets_timer_due_at", "timer_due_at", "id",
              postgresql_where=text("timer_due_at IS NOT NULL"),
              sqlite_where=text("timer_due_at IS NOT NULL")),
        # `--subject` on PostgreSQL: trigrams of the lower-cased subject (pg_trgm, created
        # by migration 0009 where the extension can be had; SQLite has no such index).
        Index("ix_tickets_subject_trgm", func.lower(text("subject")).label("subject_lower"),
              postgresql_using="gin", postgresql_ops={"subject_lower": "gin_trgm_ops"}),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20))
    priority: Mapped[str] = mapped_column(String(20), default="normal")
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    requester_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    # When the timer pass must look at this ticket next (helpdesk.desk.timers): the earliest
    # time one of the `[[timer]]` rules could fire, NULL when none can, TIMER_STALE
    # after a change. Written by the timer pass and the triggers only.
    timer_due_at: Mapped[datetime | None] = mapped_column(default=TIMER_STALE)

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

    __tablename__ = "ticket_tags"
    # By tag, then ticket: `--tag` finds its tickets from the index alone.
    __table_args__ = (Index("ix_ticket_tags_tag_ticket", "tag", "ticket_id"),)

    ticket_id: Mapped[int] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)


class Participant(Base):
    """Who may write on a ticket: requester, people copied, agents who answered."""

    __tablename__ = "participants"

    ticket_id: Mapped[int] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    role: Mapped[str] = mapped_column(String(20), default="cc")


class Message(Base):
    """Every mail in or out, and every internal note, with its raw bytes."""

    __tablename__ = "messages"
    __table_args__ = (
        # The dedupe guarantee: the same mail (id and content) is stored once, even when
        # two daemons race on PostgreSQL. Outgoing copies have their own unique ids.
        UniqueConstraint("message_id", "content_hash", name="uq_messages_message_id_content"),
        Index("ix_messages_origin", "origin_mailbox", "origin_uidvalidity", "origin_uid"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), index=True
    )
    direction: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(20))
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    message_id_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    content_hash: Mapped[str] = mapped_column(String(64))
    in_reply_to: Mapped[str] = mapped_column(Text, default="")
    references: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str] = mapped_column(String(320), default="")
    from_name: Mapped[str] = mapped_column(String(200), default="")
    to_addresses: Mapped[str] = mapped_column(Text, default="")
    cc_addresses: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    text: Mapped[str] = mapped_column(Text, default="")
    new_text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer, default=0)
    defects: Mapped[str] = mapped_column(Text, default="")
    # The Thread-Index header as received (Outlook's conversation index, MS-OXOMSG);
    # our mails on the ticket continue it. "" when the mail had none.
    thread_index: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    # human, auto_reply, bounce, list or own (helpdesk.mail.classify).
    mail_class: Mapped[str] = mapped_column(String(20), default="human")
    origin_source: Mapped[str] = mapped_column(String(20), default="")
    origin_mailbox: Mapped[str | None] = mapped_column(String(200))
    origin_uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    origin_uid: Mapped[int | None] = mapped_column(BigInteger)
    origin_path: Mapped[str | None] = mapped_column(Text)
    # Last, also in the table (migration 0010): SQLite streams a large mail into a
    # trailing zeroblob without building the row in memory (helpdesk.store.blobs).
    # A migration that adds a column to messages must move raw last again.
    raw: Mapped[bytes | None] = mapped_column(Blob)

    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="Attachment.id"
    )


class Attachment(Base):
    """A decoded attachment of a stored message."""

    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    content_id: Mapped[str | None] = mapped_column(String(998))
    content: Mapped[bytes] = mapped_column(Blob)

    message: Mapped[Message] = relationship(back_populates="attachments")


class Event(Base):
    """The audit trail: who (a person, a rule, the system) did what to which ticket."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), index=True
    )
    message_row_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(50))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class OutboxItem(Base):
    """A mail to send: written in the transaction that caused it, sent by the sender edge."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(
        ForeignKey("tickets.id", ondelete="SET NULL"), index=True
    )
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    envelope_from: Mapped[str] = mapped_column(String(320))
    envelope_to: Mapped[list[str]] = mapped_column(JSON)
    raw: Mapped[bytes] = mapped_column(Blob)
    kind: Mapped[str] = mapped_column(String(20), default="system")
    state: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    permanent_failures: Mapped[int] = mapped_column(Integer, default=0)
    # Follows a message from the mail that caused it to the mail it causes, in logs.
    correlation_id: Mapped[str | None] = mapped_column(String(998))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_until: Mapped[datetime | None]
    # For `outbox list`; NULL on rows queued before revision 0005 without a ticket.
    subject: Mapped[str | None] = mapped_column(Text)
    recipients: Mapped[list[OutboxRecipient]] = relationship(
        back_populates="item", cascade="all, delete-orphan", order_by="OutboxRecipient.id"
    )


class OutboxRecipient(Base):
    """One envelope recipient of an outbox row: its own state, because a relay answers
    RCPT per recipient (a greylisted Cc is retried, the others are not sent again)."""

    __tablename__ = "outbox_recipients"
    __table_args__ = (UniqueConstraint("outbox_id", "address"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    # pending (to be sent), sent (a 250 for it), failed (dead-lettered after 5xx or too old)
    state: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    permanent_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The relay's last answer about this recipient, e.g. "450 4.2.0 greylisted".
    last_reply: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]
    item: Mapped[OutboxItem] = relationship(back_populates="recipients")


class OutboxAttempt(Base):
    """One delivery attempt of an outbox row, for `outbox show`."""

    __tablename__ = "outbox_attempts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(
        ForeignKey("outbox.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    holder: Mapped[str] = mapped_column(String(200))
    # sent, partial, deferred, refused
    outcome: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str] = mapped_column(Text, default="")
    next_attempt_at: Mapped[datetime | None]


class RelayState(Base):
    """What the sender last saw of our SMTP relay (`outbox list`, `helpdesk status`).

    Problems of the relay itself (unreachable, TLS, AUTH, MAIL FROM refused)
    are not the mail's fault; they live here instead of on each outbox row.
    """

    __tablename__ = "relay_state"

    relay: Mapped[str] = mapped_column(String(300), primary_key=True)
    # ok or failing
    state: Mapped[str] = mapped_column(String(10))
    problem: Mapped[str | None] = mapped_column(String(50))
    error: Mapped[str | None] = mapped_column(Text)
    since: Mapped[datetime]
    checked_at: Mapped[datetime]
    next_try_at: Mapped[datetime | None]
    holder: Mapped[str] = mapped_column(String(200))


class MailboxState(Base):
    """Per mailbox: how far ingestion got, who holds the lease, and counters."""

    __tablename__ = "mailbox_state"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_holder: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    last_poll_at: Mapped[datetime | None]
    counters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # ok, login failed, unreachable, folder missing, store unavailable, ... (`mailbox list`).
    health: Mapped[str] = mapped_column(String(30), default="ok", server_default="ok")
    last_error: Mapped[str | None] = mapped_column(Text)
    # Since when the current problem lasts; None while healthy.
    problem_since: Mapped[datetime | None]


class ImapFetchFailure(Base):
    """A message the IMAP server would not return (FETCH answered NO), and how often.

    Counted in the store so that the bound on retries holds across restarts.
    """

    __tablename__ = "imap_fetch_failures"

    mailbox: Mapped[str] = mapped_column(String(200), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    uid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TimerFiring(Base):
    """The last firing of one `[[timer]]` on one ticket: a timer fires once per ticket state.

    `state` is the ticket's state the timer fired in and `left_state` the state the
    timer pass left the ticket in (helpdesk.rules.timers.state_key); the timer does
    not fire again while the ticket is in either. The primary key makes a firing a
    claim: two passes racing on one ticket cannot both record (and so both apply) it.
    """

    __tablename__ = "timer_firings"

    ticket_id: Mapped[int] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    timer: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[str] = mapped_column(String(200))
    left_state: Mapped[str | None] = mapped_column(String(200))
    fired_at: Mapped[datetime]


class DaemonBeat(Base):
    """A running daemon's heartbeat: live while `expires_at` (the database's clock) is ahead."""

    __tablename__ = "daemons"

    holder: Mapped[str] = mapped_column(String(200), primary_key=True)
    # Which mailboxes it works (helpdesk.flow.mailboxes.pool_key): daemons share leases
    # with the daemons configured with the same mailboxes only.
    pool: Mapped[str] = mapped_column(String(64), default="")
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # When it last asked for a lease another daemon held (fair sharing hands one over).
    wants_at: Mapped[datetime | None]


class QuarantineItem(Base):
    """A mail that could not be ingested, kept with its error until someone retries it.

    `state`: ``held`` (waiting for a person), ``resolved`` (a retry ingested it),
    ``released`` (a corrected copy was ingested in its place:
    `released_message_row_id`), ``discarded`` (a person decided it is not
    wanted; kept until `helpdesk quarantine purge`). `decided_by`/`decided_at`
    say who released or discarded it, and when.
    """

    __tablename__ = "quarantine"
    __table_args__ = (Index("ix_quarantine_state_decided_at", "state", "decided_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    error: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[bytes] = mapped_column(Blob)
    size: Mapped[int] = mapped_column(Integer, default=0)
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str] = mapped_column(String(320), default="")
    state: Mapped[str] = mapped_column(String(10), default="held")
    retries: Mapped[int] = mapped_column(Integer, default=0)
    resolved_ticket_id: Mapped[int | None] = mapped_column(
        ForeignKey("tickets.id", ondelete="SET NULL")
    )
    origin_source: Mapped[str] = mapped_column(String(20), default="")
    origin_mailbox: Mapped[str | None] = mapped_column(String(200))
    origin_uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    origin_uid: Mapped[int | None] = mapped_column(BigInteger)
    origin_path: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column()
    decided_by: Mapped[str | None] = mapped_column(String(320))
    decision_note: Mapped[str] = mapped_column(Text, default="")
    released_message_row_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL")
    )


class AutoReplyLog(Base):
    """One automatic reply sent to an address; the rate limit counts these."""

    __tablename__ = "auto_replies"
    __table_args__ = (Index("ix_auto_replies_address_sent", "address", "sent_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"))
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)


class Suppression(Base):
    """No automatic mail to this address until a time: it bounced permanently."""

    __tablename__ = "suppressions"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    until: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text, default="")
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoreValue(Base):
    """Small values the help desk keeps for itself, such as a generated signing key."""

    __tablename__ = "store_values"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def table(model: type[Base]) -> Table:
    """The Core table behind a model, for the hot paths that skip the ORM."""
    return cast(Table, model.__table__)
