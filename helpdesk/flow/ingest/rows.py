"""The rows ingest writes for one mail, and the prebuilt statements that write them.

The write path runs once per message, so it uses prebuilt Core statements
run on the driver's cursor (`store.direct`): the ORM's unit of work cost
about 2 ms a message here, several times the SQL, and Core's execution as
much again as SQLite's own work on these statements.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import bindparam, insert, update

from helpdesk.store import schema
from helpdesk.store.direct import Direct
from helpdesk.store.events import INSERT_EVENT as INSERT_EVENT
from helpdesk.values import (
    AttachmentPart,
    Direction,
    MessageKind,
    Origin,
    OutcomeKind,
    ParsedMessage,
    ThreadMatch,
    TicketStatus,
    Verdict,
)

# Message-IDs longer than this are stored as a digest: some mailers produce
# kilobyte-long ids, and an index entry must stay well under PostgreSQL's limit.
MAX_MESSAGE_ID = 500

TICKETS = schema.tickets
MESSAGES = schema.messages
ATTACHMENTS = schema.attachments
INSERT_TICKET = Direct(insert(TICKETS).returning(TICKETS.c.id))
TOUCH_TICKET = Direct(
    update(TICKETS)
    .where(TICKETS.c.id == bindparam("ticket_id"))
    .values(updated_at=bindparam("now"))
)
REOPEN_TICKET = Direct(
    update(TICKETS)
    .where(TICKETS.c.id == bindparam("ticket_id"))
    .values(status=TicketStatus.OPEN.value, resolved_at=None, updated_at=bindparam("now"))
)


def storable_id(message_id: str) -> str:
    """The Message-ID as stored: itself, or a digest when it is too long to index."""
    if len(message_id) <= MAX_MESSAGE_ID:
        return message_id
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{digest}@long-id.helpdesk.invalid"


def message_values(
    msg: ParsedMessage,
    raw: bytes,
    origin: Origin,
    message_id: str,
    ticket_id: int,
    kind: MessageKind,
    verdict: Verdict,
    now: datetime,
) -> dict[str, object]:
    """The `messages` row of an incoming mail."""
    return {
        "mail_class": verdict.mail_class.value,
        "ticket_id": ticket_id,
        "direction": Direction.INCOMING.value,
        "kind": kind.value,
        "message_id": message_id,
        "message_id_synthetic": msg.message_id_synthetic,
        "content_hash": msg.content_hash,
        "in_reply_to": " ".join(msg.in_reply_to),
        "references": " ".join(msg.references),
        "from_address": msg.from_.address if msg.from_ else "",
        "from_name": (msg.from_.name if msg.from_ else "")[:200],
        "to_addresses": ", ".join(str(a) for a in msg.to),
        "cc_addresses": ", ".join(str(a) for a in msg.cc),
        "subject": msg.subject,
        "sent_at": msg.date,
        "received_at": now,
        "text": msg.text,
        "new_text": msg.new_text,
        "html": msg.html,
        "raw": raw,
        "size": len(raw),
        "defects": ", ".join(msg.defects),
        "thread_index": (msg.header("Thread-Index") or "").strip()[:999],
        "origin_source": origin.source,
        "origin_mailbox": origin.mailbox,
        "origin_uidvalidity": origin.uidvalidity,
        "origin_uid": origin.uid,
        "origin_path": origin.path,
    }


def attachment_values(row_id: int, part: AttachmentPart) -> dict[str, object]:
    """The `attachments` row of one part of the message `row_id`."""
    return {
        "message_id": row_id,
        "filename": part.filename,
        "content_type": part.content_type[:255],
        "size": part.size,
        "sha256": part.sha256,
        "inline": part.inline,
        "content_id": part.content_id,
        "content": part.content,
    }


def message_events(
    ticket_id: int,
    row_id: int,
    message_id: str,
    msg: ParsedMessage,
    match: ThreadMatch,
    kind: OutcomeKind,
    sender: str,
    now: datetime,
) -> list[dict[str, object]]:
    """The audit events of a stored mail: created or added, threading notes, defects."""
    events = []
    if kind is OutcomeKind.NEW_TICKET:
        detail: dict[str, object] = {"message_id": message_id, "subject": msg.subject}
        if match.related_ticket_id is not None:
            detail["related_ticket_id"] = match.related_ticket_id
        events.append(event(ticket_id, row_id, sender, "ticket.created", detail, now))
    else:
        detail = {"message_id": message_id, "matched_by": match.reason.value}
        events.append(event(ticket_id, row_id, sender, "message.added", detail, now))
    for note in match.notes:
        detail = {"detail": note.detail, "message_id": message_id, "ticket_id": ticket_id}
        events.append(event(ticket_id, row_id, "system", f"thread.{note.kind}", detail, now))
        # The ticket a stranger's tag pointed at gets the warning too, so its
        # agents see that someone tried to write into it. Notes only ever name
        # tickets that threading found, so the row exists.
        if note.ticket_id != ticket_id and note.kind != "unknown_tag":
            events.append(
                event(note.ticket_id, None, "system", f"thread.{note.kind}", detail, now)
            )
    if msg.defects:
        detail = {"defects": list(msg.defects)}
        events.append(event(ticket_id, row_id, "system", "message.defects", detail, now))
    return events


def event(
    ticket_id: int,
    message_row_id: int | None,
    actor: str,
    kind: str,
    detail: dict[str, object],
    now: datetime,
) -> dict[str, object]:
    """One `events` row."""
    return {
        "ticket_id": ticket_id,
        "message_row_id": message_row_id,
        "actor": actor,
        "kind": kind,
        "detail": detail,
        "created_at": now,
    }
