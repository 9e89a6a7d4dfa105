"""The tables of design.md §3, in SQLAlchemy Core: what the ORM models map.

Defined without the ORM so that read-only commands (`tickets list`) can query
the store without importing `sqlalchemy.orm` (about a third of a command's
start-up). Conventions: timestamps are stored as timezone-aware UTC; e-mail
addresses are stored lower-cased; raw mail is kept byte for byte. Schema
changes go through Alembic (`helpdesk/store/migrations`), never `create_all`
outside tests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
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

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# Named constraints make Alembic migrations portable between SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


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


def connection_of(reader: Connection | Session) -> Connection:
    """The Core connection to read through: a reading command's own, or a session's."""
    return reader if isinstance(reader, Connection) else reader.connection()


# `tickets.timer_due_at` holds this when the ticket changed since its timer deadline was
# computed: "look at it on the next timer pass". A date long past, so that one indexed
# range (`timer_due_at <= now`) finds both the stale and the due tickets. Database
# triggers (migration 0009) write it on every change of a ticket or its tags, whoever
# makes the change (ORM, Core, raw SQL), so no writer can forget it.
TIMER_STALE = datetime(1970, 1, 1, tzinfo=UTC)


def _id() -> Column[int]:
    return Column("id", Id, primary_key=True)


def _when(name: str, *, required: bool = True, **options: object) -> Column[datetime]:
    """A UTC timestamp column; NOT NULL unless `required` is false."""
    return Column(name, UTCDateTime(), nullable=not required, **options)  # type: ignore[arg-type]


def _str(name: str, length: int | None = None, *, required: bool = True,
         **options: object) -> Column[str]:
    """A String(length) (Text without a length) column; NOT NULL unless `required` is false."""
    kind = String(length) if length is not None else Text()
    return Column(name, kind, nullable=not required, **options)  # type: ignore[arg-type]


def _int(name: str, kind: type[Integer] = Integer, *, required: bool = True,
         **options: object) -> Column[int]:
    return Column(name, kind(), nullable=not required, **options)  # type: ignore[arg-type]


def _flag(name: str, default: bool) -> Column[bool]:
    return Column(name, Boolean(), nullable=False, default=default)


def _ref(name: str, target: str, *, ondelete: str | None = None, required: bool = False,
         **options: object) -> Column[int]:
    """A foreign key to `target` ("table.column"); its type is the target's."""
    return Column(name, ForeignKey(target, ondelete=ondelete), nullable=not required,
                  **options)  # type: ignore[arg-type]


contacts = Table(
    "contacts", metadata,
    _id(),
    _str("address", 320, unique=True),
    _str("name", 200, default=""),
    _when("created_at", default=utcnow),
)

teams = Table(
    "teams", metadata,
    _id(),
    _str("name", 100, unique=True),
    _str("address", 320, required=False),
    # Where escalations go (time-driven rules); the team address when unset.
    _str("lead_address", 320, required=False),
    _when("created_at", default=utcnow),
)

agents = Table(
    "agents", metadata,
    _id(),
    _str("name", 200),
    _flag("active", True),
    _flag("notify", True),
    _when("created_at", default=utcnow),
)

# One address an agent writes from; an address belongs to one agent only.
agent_addresses = Table(
    "agent_addresses", metadata,
    _id(),
    _ref("agent_id", "agents.id", ondelete="CASCADE", required=True),
    _str("address", 320, unique=True),
)

team_members = Table(
    "team_members", metadata,
    _ref("team_id", "teams.id", ondelete="CASCADE", required=True, primary_key=True),
    _ref("agent_id", "agents.id", ondelete="CASCADE", required=True, primary_key=True),
)

tickets = Table(
    "tickets", metadata,
    _id(),
    _str("subject", default=""),
    _str("status", 20),
    _str("priority", 20, default="normal"),
    _ref("team_id", "teams.id"),
    _ref("assignee_id", "agents.id"),
    _ref("requester_id", "contacts.id"),
    _ref("merged_into_id", "tickets.id"),
    # Indexed (ix_tickets_created_at) with PostgreSQL options: see `dialect_indexes()`.
    _when("created_at", default=utcnow),
    _when("updated_at", default=utcnow),
    _when("first_response_at", required=False),
    _when("resolved_at", required=False),
    # When the timer pass must look at this ticket next (helpdesk.desk.timers): the earliest
    # time one of the `[[timer]]` rules could fire, NULL when none can, TIMER_STALE
    # after a change. Written by the timer pass and the triggers only.
    _when("timer_due_at", required=False, default=TIMER_STALE),
    # `tickets list` orders by (updated_at, id) newest first and narrows by one of
    # these columns: each index answers its filter in order, without a sort.
    Index("ix_tickets_updated", "updated_at", "id"),
    Index("ix_tickets_status_updated", "status", "updated_at", "id"),
    Index("ix_tickets_priority_updated", "priority", "updated_at", "id"),
    Index("ix_tickets_team_updated", "team_id", "updated_at", "id"),
    Index("ix_tickets_assignee_updated", "assignee_id", "updated_at", "id"),
    Index("ix_tickets_requester_updated", "requester_id", "updated_at", "id"),
    # Three more, with PostgreSQL options, come with `dialect_indexes()`.
)


def dialect_indexes() -> None:
    """Add the indexes that carry PostgreSQL options to the tables (once; `events` is
    declared below, and this runs after the module is loaded).

    Declaring such an index makes SQLAlchemy load its PostgreSQL dialect, every
    driver's module of it (~25 ms of a command's start-up), and no command
    needs them: the migrations create them. Alembic's environment calls this,
    and so does the test that compares the migrations with the schema.
    """
    if "ix_tickets_subject_trgm" in {ix.name for ix in tickets.indexes}:
        return
    # `stats` counts a window of tickets by creation time, grouped by requester,
    # team and tags: on PostgreSQL the index carries those columns, so that the
    # window is read from the index alone, not from the table (migration 0013).
    Index("ix_tickets_created_at", tickets.c.created_at,
          postgresql_include=["id", "requester_id", "team_id", "merged_into_id"])
    # Only tickets with a deadline (or a stale one) are indexed: closed tickets,
    # the vast majority, have none, and the timer pass reads a short range, in
    # the index's order (whatever the planner's statistics say).
    Index("ix_tickets_timer_due_at", tickets.c.timer_due_at, tickets.c.id,
          postgresql_where=text("timer_due_at IS NOT NULL"),
          sqlite_where=text("timer_due_at IS NOT NULL"))
    # `--subject` on PostgreSQL: trigrams of the lower-cased subject (pg_trgm, created
    # by migration 0009 where the extension can be had; SQLite has no such index).
    Index("ix_tickets_subject_trgm", func.lower(tickets.c.subject).label("subject_lower"),
          postgresql_using="gin", postgresql_ops={"subject_lower": "gin_trgm_ops"})
    # Status changes by time: the backlog in `stats` reads those of its window. Partial:
    # the other events, most of them, do not pay for the index (migration 0012).
    Index("ix_events_status_changes", events.c.created_at, events.c.ticket_id,
          postgresql_where=text("kind = 'status.changed'"),
          sqlite_where=text("kind = 'status.changed'"))

# A free-form label on a ticket; a table, so that stats can group by it.
ticket_tags = Table(
    "ticket_tags", metadata,
    _ref("ticket_id", "tickets.id", ondelete="CASCADE", required=True, primary_key=True),
    _str("tag", 100, primary_key=True),
    # By tag, then ticket: `--tag` finds its tickets from the index alone.
    Index("ix_ticket_tags_tag_ticket", "tag", "ticket_id"),
)

# Who may write on a ticket: requester, people copied, agents who answered.
participants = Table(
    "participants", metadata,
    _ref("ticket_id", "tickets.id", ondelete="CASCADE", required=True, primary_key=True),
    _str("address", 320, primary_key=True),
    _str("role", 20, default="cc"),
)

messages = Table(
    "messages", metadata,
    _id(),
    _ref("ticket_id", "tickets.id", ondelete="CASCADE", required=True, index=True),
    _str("direction", 3),
    _str("kind", 20),
    _str("message_id", 998, index=True),
    _flag("message_id_synthetic", False),
    _str("content_hash", 64),
    _str("in_reply_to", default=""),
    _str("references", default=""),
    _str("from_address", 320, default=""),
    _str("from_name", 200, default=""),
    _str("to_addresses", default=""),
    _str("cc_addresses", default=""),
    _str("subject", default=""),
    _when("sent_at", required=False),
    _when("received_at", default=utcnow),
    _str("text", default=""),
    _str("new_text", default=""),
    _str("html", required=False),
    _int("size", default=0),
    _str("defects", default=""),
    # The Thread-Index header as received (Outlook's conversation index, MS-OXOMSG);
    # our mails on the ticket continue it. "" when the mail had none.
    _str("thread_index", 1000, default="", server_default=""),
    # human, auto_reply, bounce, list or own (helpdesk.mail.classify).
    _str("mail_class", 20, default="human"),
    _str("origin_source", 20, default=""),
    _str("origin_mailbox", 200, required=False),
    _int("origin_uidvalidity", BigInteger, required=False),
    _int("origin_uid", BigInteger, required=False),
    _str("origin_path", required=False),
    # Last, also in the table (migration 0010): SQLite streams a large mail into a
    # trailing zeroblob without building the row in memory (helpdesk.store.blobs).
    # A migration that adds a column to messages must move raw last again.
    Column("raw", Blob, nullable=True),
    # The dedupe guarantee: the same mail (id and content) is stored once, even when
    # two daemons race on PostgreSQL. Outgoing copies have their own unique ids.
    UniqueConstraint("message_id", "content_hash", name="uq_messages_message_id_content"),
    Index("ix_messages_origin", "origin_mailbox", "origin_uidvalidity", "origin_uid"),
)

attachments = Table(
    "attachments", metadata,
    _id(),
    _ref("message_id", "messages.id", ondelete="CASCADE", required=True, index=True),
    _str("filename", 255),
    _str("content_type", 255),
    _int("size", BigInteger),
    _str("sha256", 64, index=True),
    _flag("inline", False),
    _str("content_id", 998, required=False),
    Column("content", Blob, nullable=False),
)

# The audit trail: who (a person, a rule, the system) did what to which ticket.
events = Table(
    "events", metadata,
    _id(),
    _ref("ticket_id", "tickets.id", ondelete="CASCADE", required=True, index=True),
    _ref("message_row_id", "messages.id", ondelete="SET NULL"),
    _when("created_at", default=utcnow),
    _str("actor", 320),
    _str("kind", 50),
    Column("detail", JSON(), nullable=False, default=dict),
    # And a partial index of status changes, with `dialect_indexes()`.
)

# A mail to send: written in the transaction that caused it, sent by the sender edge.
outbox = Table(
    "outbox", metadata,
    _id(),
    _ref("ticket_id", "tickets.id", ondelete="SET NULL", index=True),
    _str("message_id", 998, unique=True),
    _str("envelope_from", 320),
    Column("envelope_to", JSON(), nullable=False),
    Column("raw", Blob, nullable=False),
    _str("kind", 20, default="system"),
    _str("state", 10, default="pending"),
    _int("attempts", default=0),
    _int("permanent_failures", default=0),
    # Follows a message from the mail that caused it to the mail it causes, in logs.
    _str("correlation_id", 998, required=False),
    _when("next_attempt_at", default=utcnow),
    _str("last_error", required=False),
    _when("created_at", default=utcnow),
    _when("sent_at", required=False),
    _str("claimed_by", 200, required=False),
    _when("claimed_until", required=False),
    # For `outbox list`; NULL on rows queued before revision 0005 without a ticket.
    _str("subject", required=False),
    Index("ix_outbox_due", "state", "next_attempt_at"),
)

# One envelope recipient of an outbox row: its own state, because a relay answers
# RCPT per recipient (a greylisted Cc is retried, the others are not sent again).
outbox_recipients = Table(
    "outbox_recipients", metadata,
    _id(),
    _ref("outbox_id", "outbox.id", ondelete="CASCADE", required=True),
    _str("address", 320),
    # pending (to be sent), sent (a 250 for it), failed (dead-lettered after 5xx or too old)
    _str("state", 10, default="pending"),
    _int("attempts", default=0),
    _int("permanent_failures", default=0),
    # The relay's last answer about this recipient, e.g. "450 4.2.0 greylisted".
    _str("last_reply", required=False),
    _when("sent_at", required=False),
    _when("updated_at", required=False),
    UniqueConstraint("outbox_id", "address"),
)

# One delivery attempt of an outbox row, for `outbox show`.
outbox_attempts = Table(
    "outbox_attempts", metadata,
    _id(),
    _ref("outbox_id", "outbox.id", ondelete="CASCADE", required=True, index=True),
    _when("at", default=utcnow),
    _str("holder", 200),
    # sent, partial, deferred, refused
    _str("outcome", 20),
    _str("detail", default=""),
    _when("next_attempt_at", required=False),
)

# What the sender last saw of our SMTP relay (`outbox list`, `helpdesk status`). Problems
# of the relay itself (unreachable, TLS, AUTH, MAIL FROM refused) are not the mail's
# fault; they live here instead of on each outbox row.
relay_state = Table(
    "relay_state", metadata,
    _str("relay", 300, primary_key=True),
    # ok or failing
    _str("state", 10),
    _str("problem", 50, required=False),
    _str("error", required=False),
    _when("since"),
    _when("checked_at"),
    _when("next_try_at", required=False),
    _str("holder", 200),
)

# Per mailbox: how far ingestion got, who holds the lease, and counters.
mailbox_state = Table(
    "mailbox_state", metadata,
    _str("name", 200, primary_key=True),
    _int("uidvalidity", BigInteger, required=False),
    _int("last_uid", BigInteger, default=0),
    _str("lease_holder", 200, required=False),
    _when("lease_expires_at", required=False),
    _when("last_poll_at", required=False),
    Column("counters", JSON(), nullable=False, default=dict),
    # ok, login failed, unreachable, folder missing, store unavailable, ... (`mailbox list`).
    _str("health", 30, default="ok", server_default="ok"),
    _str("last_error", required=False),
    # Since when the current problem lasts; None while healthy.
    _when("problem_since", required=False),
)

# A message the IMAP server would not return (FETCH answered NO), and how often.
# Counted in the store so that the bound on retries holds across restarts.
imap_fetch_failures = Table(
    "imap_fetch_failures", metadata,
    _str("mailbox", 200, primary_key=True),
    _int("uidvalidity", BigInteger, primary_key=True),
    _int("uid", BigInteger, primary_key=True),
    _int("attempts", default=0),
    _str("last_error", default=""),
    _when("updated_at", default=utcnow),
)

# The last firing of one `[[timer]]` on one ticket (see models.TimerFiring).
timer_firings = Table(
    "timer_firings", metadata,
    _ref("ticket_id", "tickets.id", ondelete="CASCADE", required=True, primary_key=True),
    _str("timer", 200, primary_key=True),
    _str("state", 200),
    _str("left_state", 200, required=False),
    _when("fired_at"),
)

# A running daemon's heartbeat: live while `expires_at` (the database's clock) is ahead.
daemons = Table(
    "daemons", metadata,
    _str("holder", 200, primary_key=True),
    # Which mailboxes it works (helpdesk.flow.mailboxes.pool_key): daemons share leases
    # with the daemons configured with the same mailboxes only.
    _str("pool", 64, default=""),
    _when("started_at"),
    _when("seen_at"),
    _when("expires_at", index=True),
    # When it last asked for a lease another daemon held (fair sharing hands one over).
    _when("wants_at", required=False),
)

# A mail that could not be ingested, kept with its error (see models.QuarantineItem).
quarantine = Table(
    "quarantine", metadata,
    _id(),
    _when("created_at", default=utcnow, index=True),
    _str("error"),
    _str("detail", default=""),
    Column("raw", Blob, nullable=False),
    _int("size", default=0),
    _str("content_sha256", 64, index=True),
    _str("subject", default=""),
    _str("from_address", 320, default=""),
    _str("state", 10, default="held"),
    _int("retries", default=0),
    _ref("resolved_ticket_id", "tickets.id", ondelete="SET NULL"),
    _str("origin_source", 20, default=""),
    _str("origin_mailbox", 200, required=False),
    _int("origin_uidvalidity", BigInteger, required=False),
    _int("origin_uid", BigInteger, required=False),
    _str("origin_path", required=False),
    _when("decided_at", required=False),
    _str("decided_by", 320, required=False),
    _str("decision_note", default=""),
    _ref("released_message_row_id", "messages.id", ondelete="SET NULL"),
    Index("ix_quarantine_state_decided_at", "state", "decided_at"),
)

# One automatic reply sent to an address; the rate limit counts these.
auto_replies = Table(
    "auto_replies", metadata,
    _id(),
    _str("address", 320),
    _ref("ticket_id", "tickets.id", ondelete="SET NULL"),
    _when("sent_at", default=utcnow),
    Index("ix_auto_replies_address_sent", "address", "sent_at"),
)

# No automatic mail to this address until a time: it bounced permanently.
suppressions = Table(
    "suppressions", metadata,
    _str("address", 320, primary_key=True),
    _when("until"),
    _str("reason", default=""),
    _ref("ticket_id", "tickets.id", ondelete="SET NULL"),
    _when("created_at", default=utcnow),
)

# Small values the help desk keeps for itself, such as a generated signing key.
store_values = Table(
    "store_values", metadata,
    _str("key", 100, primary_key=True),
    _str("value"),
)
