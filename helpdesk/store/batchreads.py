"""What a batch of mail will look up, read before the batch is filed: one query per kind.

Why (issue 13): every mail asked the database, each in a round trip of its own,
whether it was stored before (by its server copy, then by Message-ID and
content), which tickets the ids it answers are on, who its sender is (for a new
ticket), and whether its sender may get an automatic reply (suppressed after a
bounce, or over the rate limit). On PostgreSQL a round trip
costs more than these indexed lookups themselves, and most of a writer's time
is spent waiting for them; across a network, more so. `read_ahead` asks for the
whole batch at once and keeps the answers in the session (`session.info`) while
the batch is filed in its one savepoint; `queries.message_by_origin`,
`message_by_content`, `tickets_by_message_ids`, `contact` and
`notices.why_no_automatic_mail` answer from them.

The answers must stay what the database would say at that point of the batch:

* a lookup the batch did not announce goes to the database, as before;
* what the batch itself writes is added as it is written (`stored`, `contact`,
  `auto_replied`, `suppressed`), so a second copy of a mail in the same batch is
  still a duplicate of the first, and a sender's second mail in it counts the
  automatic reply to the first;
* they are dropped when the batch's savepoint ends, whatever happened: after a
  rollback the mails are filed again one by one, each asking the database.

A row another writer commits after `read_ahead` is not seen, as it would not
have been seen a moment earlier: its unique key makes our insert fail, the batch
is filed again mail by mail, and the mail is found to be a duplicate then.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from helpdesk.store import schema
from helpdesk.values import Direction, Origin

__all__ = ["Ahead", "Copy", "Wanted", "ahead_of", "auto_replied", "kept", "origin_key",
           "read_ahead", "stored", "suppressed"]

_KEY = "helpdesk.batch_reads"
# Bound parameters per query, as in queries.tickets_by_message_ids.
_PER_QUERY = 500

_messages, _contacts = schema.messages, schema.contacts
_auto_replies, _suppressions = schema.auto_replies, schema.suppressions
_BY_MESSAGE_IDS = select(
    _messages.c.id, _messages.c.ticket_id, _messages.c.message_id, _messages.c.content_hash,
    _messages.c.direction,
).where(_messages.c.message_id.in_(bindparam("keys", expanding=True)))
_BY_UIDS = select(
    _messages.c.id, _messages.c.ticket_id, _messages.c.message_id, _messages.c.origin_uid,
).where(
    _messages.c.origin_mailbox == bindparam("mailbox"),
    _messages.c.origin_uidvalidity == bindparam("uidvalidity"),
    _messages.c.origin_uid.in_(bindparam("keys", expanding=True)),
)
_CONTACTS = select(_contacts.c.address, _contacts.c.id, _contacts.c.name).where(
    _contacts.c.address.in_(bindparam("keys", expanding=True)))
_SUPPRESSIONS = select(_suppressions.c.address, _suppressions.c.until).where(
    _suppressions.c.address.in_(bindparam("keys", expanding=True)))
_AUTO_REPLIES = select(_auto_replies.c.address, _auto_replies.c.sent_at).where(
    _auto_replies.c.address.in_(bindparam("keys", expanding=True)),
    _auto_replies.c.sent_at > bindparam("since"))

ServerCopy = tuple[str, int, int]  # mailbox, UIDVALIDITY, UID
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Wanted:
    """What the mails of a batch will look up."""

    # The mails' own ids and the ids they answer, as stored (rows.storable_id).
    message_ids: frozenset[str] = frozenset()
    origins: frozenset[ServerCopy] = frozenset()
    addresses: frozenset[str] = frozenset()  # senders, as contacts are keyed
    # The senders' automatic replies sent after this time, and their suppressions,
    # are read too (None: neither is: no automatic mail can follow).
    auto_replies_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    """A stored message, as the duplicate checks compare it."""

    id: int
    ticket_id: int
    message_id: str
    content_hash: str
    outgoing: bool


@dataclass(slots=True)
class Ahead:
    """The answers read ahead for one batch, and what the batch wrote since."""

    wanted: Wanted
    copies: dict[str, list[Copy]] = field(default_factory=dict)  # by Message-ID
    origins: dict[ServerCopy, Copy] = field(default_factory=dict)
    # address -> (id, name); an address of `wanted` missing here has no contact yet.
    contacts: dict[str, tuple[int, str]] = field(default_factory=dict)
    # The autocommit connection that new contacts are committed on (PostgreSQL,
    # `queries.contact`): checked out once for the batch, not once (and pinged) a contact.
    apart: Connection | None = None
    # For `wanted.addresses`, with `wanted.auto_replies_since`: until when automatic
    # mail to an address is suppressed, and when automatic replies went to it.
    suppressions: dict[str, datetime] = field(default_factory=dict)
    auto_replies: dict[str, list[datetime]] = field(default_factory=dict)

    def knows_message_id(self, message_id: str) -> bool:
        return message_id in self.wanted.message_ids

    def knows_origin(self, origin: ServerCopy) -> bool:
        return origin in self.wanted.origins

    def knows_address(self, address: str) -> bool:
        return address in self.wanted.addresses

    def by_content(self, message_id: str, content_hash: str) -> Copy | None:
        """`queries.message_by_content`'s answer: the same content, or our own mail's id."""
        found = [c for c in self.copies.get(message_id, ())
                 if c.content_hash == content_hash or c.outgoing]
        return min(found, key=lambda c: c.id) if found else None

    def tickets_by_message_ids(self, message_ids: Iterable[str]) -> dict[str, int]:
        """`queries.tickets_by_message_ids`' answer: the first stored copy's ticket, by id."""
        found = {}
        for message_id in message_ids:
            copies = self.copies.get(message_id)
            if copies:
                found[message_id] = min(copies, key=lambda c: c.id).ticket_id
        return found

    def guards(self, address: str, since: datetime) -> tuple[datetime | None, int] | None:
        """`address`'s suppression and automatic replies after `since`, if read ahead."""
        read_since = self.wanted.auto_replies_since
        if read_since is None or since < read_since or not self.knows_address(address):
            return None
        sent = sum(1 for at in self.auto_replies.get(address, ()) if at > since)
        return self.suppressions.get(address), sent


def read_ahead(conn: Connection, wanted: Wanted) -> Ahead:
    """Read what `wanted` names: a query per kind (and per 500 keys)."""
    ahead = Ahead(wanted)
    for chunk in _chunks(wanted.message_ids):
        for row_id, ticket_id, message_id, content_hash, direction in conn.execute(
                _BY_MESSAGE_IDS, {"keys": chunk}):
            ahead.copies.setdefault(message_id, []).append(Copy(
                row_id, ticket_id, message_id, content_hash,
                direction == Direction.OUTGOING.value))
    by_box: dict[tuple[str, int], set[int]] = {}
    for mailbox, uidvalidity, uid in wanted.origins:
        by_box.setdefault((mailbox, uidvalidity), set()).add(uid)
    for (mailbox, uidvalidity), uids in by_box.items():
        for some in _chunks(uids):
            for row_id, ticket_id, message_id, uid in conn.execute(_BY_UIDS, {
                    "mailbox": mailbox, "uidvalidity": uidvalidity, "keys": some}):
                key = (mailbox, uidvalidity, uid)
                known = ahead.origins.get(key)
                if known is None or row_id < known.id:
                    ahead.origins[key] = Copy(row_id, ticket_id, message_id, "", False)
    for chunk in _chunks(wanted.addresses):
        for address, contact_id, name in conn.execute(_CONTACTS, {"keys": chunk}):
            ahead.contacts[address] = (int(contact_id), name or "")
    if wanted.auto_replies_since is not None:
        _read_guards(conn, ahead, wanted.auto_replies_since)
    return ahead


def _read_guards(conn: Connection, ahead: Ahead, since: datetime) -> None:
    for chunk in _chunks(ahead.wanted.addresses):
        for address, until in conn.execute(_SUPPRESSIONS, {"keys": chunk}):
            ahead.suppressions[address] = until
        for address, sent_at in conn.execute(_AUTO_REPLIES, {"keys": chunk, "since": since}):
            ahead.auto_replies.setdefault(address, []).append(sent_at)


@contextmanager
def kept(session: Session, ahead: Ahead) -> Iterator[Ahead]:
    """Let the lookups in `session` answer from `ahead` until the block ends."""
    session.info[_KEY] = ahead
    try:
        yield ahead
    finally:
        session.info.pop(_KEY, None)
        if ahead.apart is not None:
            ahead.apart.close()
            ahead.apart = None


def origin_key(origin: Origin) -> ServerCopy | None:
    """The server copy a mail came from (mailbox, UIDVALIDITY, UID), if it came from one."""
    if origin.mailbox is None or origin.uidvalidity is None or origin.uid is None:
        return None
    return origin.mailbox, origin.uidvalidity, origin.uid


def ahead_of(session: Session) -> Ahead | None:
    """The answers read ahead for the batch being filed in `session`, if any."""
    return session.info.get(_KEY)


def stored(session: Session, copy: Copy, origin: ServerCopy | None) -> None:
    """Tell the batch's answers that a message was written, so later lookups see it."""
    ahead = ahead_of(session)
    if ahead is None:
        return
    if ahead.knows_message_id(copy.message_id):
        ahead.copies.setdefault(copy.message_id, []).append(copy)
    if origin is not None and ahead.knows_origin(origin) and origin not in ahead.origins:
        ahead.origins[origin] = copy


def auto_replied(session: Session, address: str, sent_at: datetime) -> None:
    """Tell the batch's answers that an automatic reply to `address` was recorded."""
    ahead = ahead_of(session)
    if ahead is not None and ahead.knows_address(address):
        ahead.auto_replies.setdefault(address, []).append(sent_at)


def suppressed(session: Session, address: str, until: datetime) -> None:
    """Tell the batch's answers that automatic mail to `address` is suppressed until `until`."""
    ahead = ahead_of(session)
    if ahead is not None and ahead.knows_address(address):
        known = ahead.suppressions.get(address)
        if known is None or known < until:
            ahead.suppressions[address] = until


def _chunks(keys: Iterable[K]) -> Iterator[Sequence[K]]:
    listed = list(keys)
    for start in range(0, len(listed), _PER_QUERY):
        yield listed[start:start + _PER_QUERY]
