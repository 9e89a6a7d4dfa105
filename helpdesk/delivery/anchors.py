"""Which mail our mail answers, and the conversation headers that follow from it.

Every mail we send on a ticket continues a conversation with its recipient:
an acknowledgement, a command answer, a team forward or a notification
continues the incoming mail that caused it; a relayed agent reply and the
auto-resolve notice continue the requester's latest mail; an escalation
continues our forward to the team. From that parent come:

* In-Reply-To: the parent's Message-ID (none when we made it up ourselves);
* References: RFC 5322 section 3.6.4 (`helpdesk.mail.conversation`);
* the parent's conversation index, which compose extends by one child
  block for Outlook's Thread-Index: the index the parent carried when it has
  one (an Outlook requester's, or one we wrote), else the ticket's root: the
  header block of the requester's first Thread-Index on the ticket, so that
  our mail stays in the requester's own Outlook conversation, or, when the
  requester never sent one, a root of our own (the ticket's creation time
  and a GUID derived from the ticket).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from helpdesk.mail.conversation import (
    HEADER_SIZE,
    parse_index,
    reply_references,
    root_index,
    thread_guid,
)
from helpdesk.store import schema
from helpdesk.store.direct import Direct
from helpdesk.store.models import Message, Ticket
from helpdesk.values import Direction, MessageKind, ParsedMessage

# The requester's first mails are searched this far for a Thread-Index.
_ROOT_SEARCH = 5
# Headers past this many bytes are not read (a stored mail may be megabytes).
_MAX_HEADER_BLOCK = 256 * 1024


@dataclass(frozen=True)
class TicketRef:
    """What the conversation headers need of a ticket, for callers that hold no ORM object."""

    id: int
    created_at: datetime
    requester: str | None
    # Opened by the mail being answered: no earlier mail of the requester is on
    # it, so the root is our own and needs no query.
    fresh: bool = False


def ref_of(ticket: Ticket | TicketRef) -> TicketRef:
    """`ticket` as a `TicketRef`."""
    if isinstance(ticket, TicketRef):
        return ticket
    requester = ticket.requester.address if ticket.requester is not None else None
    return TicketRef(ticket.id, ticket.created_at, requester)


@dataclass(frozen=True)
class Continuation:
    """The threading headers of a mail that answers (or follows) a parent mail."""

    in_reply_to: str | None
    references: tuple[str, ...]
    parent_thread_index: bytes


def after_message(
    session: Session, ticket: Ticket | TicketRef, msg: ParsedMessage, loop_id: str
) -> Continuation:
    """Continue the conversation of the incoming mail `msg`, which is on `ticket`."""
    mid = None if msg.message_id_synthetic else msg.message_id
    index = parse_index(msg.header("Thread-Index"))
    return Continuation(
        in_reply_to=mid,
        references=reply_references(msg.references, msg.in_reply_to, mid),
        parent_thread_index=index or ticket_root(session, ticket, loop_id),
    )


def after_row(
    session: Session, ticket: Ticket, row: Message | None, loop_id: str
) -> Continuation:
    """Continue the conversation of a stored mail (ours or someone's), or start one."""
    if row is None:
        return Continuation(None, (), ticket_root(session, ticket, loop_id))
    mid = None if row.message_id_synthetic else row.message_id
    if row.direction == Direction.OUTGOING.value:
        references, in_reply_to, index_text = _own_headers(row)
    else:
        references, in_reply_to = row.references.split(), row.in_reply_to.split()
        index_text = row.thread_index
    index = parse_index(index_text)
    return Continuation(
        in_reply_to=mid,
        references=reply_references(references, in_reply_to, mid),
        parent_thread_index=index or ticket_root(session, ticket, loop_id),
    )


def _own_headers(row: Message) -> tuple[list[str], list[str], str]:
    """References, In-Reply-To and Thread-Index of a mail we sent, as written in it."""
    if not row.raw:
        return row.references.split(), row.in_reply_to.split(), ""
    headers = BytesHeaderParser(policy=compat32).parsebytes(header_block(row.raw))

    def ids(name: str) -> list[str]:
        text = " ".join(str(value) for value in headers.get_all(name, []))
        return [part.strip("<>") for part in text.split() if part.startswith("<")]

    return ids("References"), ids("In-Reply-To"), str(headers.get("Thread-Index", ""))


def header_block(raw: bytes) -> bytes:
    """The header section of a raw mail (up to the first empty line), bounded in size."""
    head = raw[:_MAX_HEADER_BLOCK]
    crlf, lf = head.find(b"\r\n\r\n"), head.find(b"\n\n")
    ends = [end for found, end in ((crlf, crlf + 2), (lf, lf + 1)) if found >= 0]
    return head[: min(ends)] if ends else head


# Core, built once: this runs for every acknowledgement, and an ORM select built per
# call cost ~0.2 ms.
_MESSAGES = schema.messages
_STORED_INDEXES = Direct(
    select(_MESSAGES.c.thread_index)
    .where(_MESSAGES.c.ticket_id == bindparam("ticket_id"),
           _MESSAGES.c.direction == Direction.INCOMING.value,
           _MESSAGES.c.from_address == bindparam("requester"),
           _MESSAGES.c.thread_index != "")
    .order_by(_MESSAGES.c.id)
    .limit(_ROOT_SEARCH)
)


def ticket_root(session: Session, ticket: Ticket | TicketRef, loop_id: str) -> bytes:
    """The 22-byte header block every index on `ticket` descends from (module docstring)."""
    ref = ref_of(ticket)
    if ref.requester is not None and not ref.fresh:
        stored = _STORED_INDEXES.all(
            session.connection(), {"ticket_id": ref.id, "requester": ref.requester})
        for text, in stored:
            index = parse_index(text)
            if index is not None:
                return index[:HEADER_SIZE]
    return root_index(ref.created_at, thread_guid(f"ticket:{loop_id}:{ref.id}"))


def requester_anchor(session: Session, ticket: Ticket) -> Message | None:
    """The requester's latest mail on the ticket (else the latest incoming one with a real id)."""
    incoming = (
        select(Message)
        .where(Message.ticket_id == ticket.id, Message.direction == Direction.INCOMING.value,
               Message.message_id_synthetic.is_(False))
        .order_by(Message.id.desc())
        .limit(1)
    )
    if ticket.requester is not None:
        own = session.scalars(
            incoming.where(Message.from_address == ticket.requester.address)
        ).first()
        if own is not None:
            return own
    return session.scalars(incoming).first()


def forward_anchor(session: Session, ticket: Ticket, address: str) -> Message | None:
    """Our latest forward of the ticket to `address` (a team), else to anyone."""
    forwards = (
        select(Message)
        .where(Message.ticket_id == ticket.id, Message.direction == Direction.OUTGOING.value,
               Message.kind == MessageKind.FORWARD.value)
        .order_by(Message.id.desc())
    )
    candidates = list(session.scalars(forwards.limit(20)))
    wanted = address.lower()
    for row in candidates:
        # to_addresses is "Name <address>, address" as outbox wrote it.
        written = row.to_addresses.lower()
        if f"<{wanted}>" in written or wanted in (part.strip() for part in written.split(",")):
            return row
    return candidates[0] if candidates else None
