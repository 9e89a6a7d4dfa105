"""How tickets and their mail are printed: JSON for scripts, a few words for people.

Shared by `tickets` (list, show and the commands that change a ticket) and
`export`; the rows come from the ORM or from Core reads (`store.listing`,
`store.detail`), which carry the same fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from helpdesk.cli import AppContext
from helpdesk.cli.output import when
from helpdesk.names import format_tag

if TYPE_CHECKING:
    from helpdesk.store.detail import Delivery, EventRow, MessageRow, TicketHead
    from helpdesk.store.listing import TicketSummary
    from helpdesk.store.models import Event, Message, Ticket


def reference(app: AppContext, ticket_id: int) -> str:
    return format_tag(ticket_id, app.tag_prefix)


def summary_json(app: AppContext, s: TicketSummary) -> dict[str, Any]:
    return {
        "id": s.id,
        "reference": reference(app, s.id),
        "subject": s.subject,
        "status": s.status,
        "priority": s.priority,
        "team": s.team,
        "assignee": s.assignee,
        "requester": s.requester,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "message_count": s.message_count,
    }


def ticket_json(app: AppContext, ticket: Ticket) -> dict[str, Any]:
    """A ticket loaded through the ORM, as `head_json` shows it."""
    from helpdesk.store.detail import TicketHead

    return head_json(app, TicketHead(
        id=ticket.id, subject=ticket.subject, status=ticket.status, priority=ticket.priority,
        team=ticket.team.name if ticket.team else None,
        assignee=ticket.assignee.primary_address if ticket.assignee else None,
        requester=ticket.requester.address if ticket.requester else None,
        tags=tuple(sorted(t.tag for t in ticket.tags)),
        created_at=ticket.created_at, updated_at=ticket.updated_at,
        first_response_at=ticket.first_response_at, resolved_at=ticket.resolved_at,
        merged_into_id=ticket.merged_into_id, message_count=len(ticket.messages),
    ))


def head_json(app: AppContext, ticket: TicketHead) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "reference": reference(app, ticket.id),
        "subject": ticket.subject,
        "status": ticket.status,
        "priority": ticket.priority,
        "team": ticket.team,
        "assignee": ticket.assignee,
        "requester": ticket.requester,
        "tags": sorted(ticket.tags),
        "created_at": ticket.created_at,
        "updated_at": ticket.updated_at,
        "first_response_at": ticket.first_response_at,
        "resolved_at": ticket.resolved_at,
        "merged_into": ticket.merged_into_id,
        "message_count": ticket.message_count,
    }


def message_json(m: Message | MessageRow) -> dict[str, Any]:
    return {
        "id": m.id,
        "kind": m.kind,
        "direction": m.direction,
        "from": m.from_address,
        "from_name": m.from_name,
        "to": m.to_addresses,
        "cc": m.cc_addresses,
        "date": m.sent_at or m.received_at,
        "received_at": m.received_at,
        "subject": m.subject,
        "message_id": m.message_id,
        "text": m.text,
        "new_text": m.new_text,
        "defects": [d for d in m.defects.split(", ") if d],
        "attachments": [
            {"id": a.id, "filename": a.filename, "content_type": a.content_type,
             "size": a.size, "sha256": a.sha256, "inline": a.inline}
            for a in m.attachments
        ],
    }


def event_json(e: Event | EventRow) -> dict[str, Any]:
    return {"id": e.id, "at": e.created_at, "actor": e.actor, "kind": e.kind, "detail": e.detail}


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "outbox_id": d.outbox_id,
        "message_id": d.message_id,
        "kind": d.kind,
        "subject": d.subject,
        "state": d.state,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "next_attempt_at": d.next_attempt_at if d.state == "pending" else None,
        "created_at": d.created_at,
        "sent_at": d.sent_at,
        "recipients": [{"address": r.address, "state": r.state} for r in d.recipients],
    }


def delivery_words(d: Delivery) -> str:
    """`sent`, `failed: 550 …`, `pending (2 attempts: 451 …)`: the state in a few words."""
    tries = f"{d.attempts} attempt{'s' if d.attempts != 1 else ''}"
    if d.state == "sent":
        return f"sent {when(d.sent_at)}"
    if d.state == "failed":
        return f"failed after {tries}: {d.last_error or 'no error recorded'}"
    if d.attempts:
        error = f": {d.last_error}" if d.last_error else ""
        return f"pending, {tries}, next {when(d.next_attempt_at)}{error}"
    return "pending"


def recipient_words(d: Delivery) -> str:
    # A recipient whose own state differs from the mail's is named with it.
    return ", ".join(r.address if r.state == d.state else f"{r.address} ({r.state})"
                     for r in d.recipients)
