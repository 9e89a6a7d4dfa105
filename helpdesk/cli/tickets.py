"""`helpdesk tickets list|show|assign|status`."""

from __future__ import annotations

from typing import Any

import click

from helpdesk import tickets as ticket_service
from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.store import queries
from helpdesk.store.models import Event, Message, Ticket
from helpdesk.thread import format_tag
from helpdesk.values import TicketStatus

STATUSES = [s.value for s in TicketStatus]
CLI_ACTOR = "cli"


@click.group()
def tickets() -> None:
    """Inspect and change tickets."""


def _reference(app: AppContext, ticket_id: int) -> str:
    return format_tag(ticket_id, app.settings.helpdesk.tag_prefix)


def summary_json(app: AppContext, s: queries.TicketSummary) -> dict[str, Any]:
    return {
        "id": s.id,
        "reference": _reference(app, s.id),
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


@tickets.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only these statuses (repeatable).")
@click.option("--team", help="Only tickets of this team.")
@click.option("--assignee", metavar="EMAIL", help="Only tickets assigned to this agent.")
@click.option("--requester", metavar="EMAIL", help="Only tickets from this requester.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(
    app: AppContext,
    statuses: tuple[str, ...],
    team: str | None,
    assignee: str | None,
    requester: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tickets, most recently updated first."""
    flt = queries.TicketFilter(
        status=statuses or None, team=team, assignee=assignee, requester=requester, limit=limit
    )
    with app.transaction() as session:
        rows = queries.list_tickets(session, flt)
    if as_json:
        emit_json([summary_json(app, r) for r in rows])
        return
    if not rows:
        click.echo("No tickets.")
        return
    table(
        ["REF", "STATUS", "PRIO", "TEAM", "ASSIGNEE", "REQUESTER", "MSGS", "UPDATED", "SUBJECT"],
        [
            [_reference(app, r.id), r.status, r.priority, r.team, r.assignee, r.requester,
             r.message_count, when(r.updated_at), r.subject]
            for r in rows
        ],
    )


def ticket_json(app: AppContext, ticket: Ticket) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "reference": _reference(app, ticket.id),
        "subject": ticket.subject,
        "status": ticket.status,
        "priority": ticket.priority,
        "team": ticket.team.name if ticket.team else None,
        "assignee": ticket.assignee.primary_address if ticket.assignee else None,
        "requester": ticket.requester.address if ticket.requester else None,
        "tags": [t.tag for t in ticket.tags],
        "created_at": ticket.created_at,
        "updated_at": ticket.updated_at,
        "first_response_at": ticket.first_response_at,
        "resolved_at": ticket.resolved_at,
        "merged_into": ticket.merged_into_id,
        "message_count": len(ticket.messages),
    }


def message_json(m: Message) -> dict[str, Any]:
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


def event_json(e: Event) -> dict[str, Any]:
    return {"id": e.id, "at": e.created_at, "actor": e.actor, "kind": e.kind, "detail": e.detail}


@tickets.command("show")
@click.argument("ticket_id", type=int)
@click.option("--full", is_flag=True, help="Show each message's full text, quotes included.")
@click.option("--json", "as_json", is_flag=True, help="Print the ticket as JSON.")
@pass_app
def show(app: AppContext, ticket_id: int, full: bool, as_json: bool) -> None:
    """Show a ticket: its thread (oldest first) and its events."""
    with app.transaction() as session:
        ticket = ticket_service.get(session, ticket_id)
        data = ticket_json(app, ticket)
        data["messages"] = [message_json(m) for m in ticket.messages]
        data["events"] = [event_json(e) for e in ticket_service.events(session, ticket_id)]
    if as_json:
        emit_json(data)
        return
    click.echo(click.style(f"{data['reference']} {data['subject']}", bold=True))
    fields([
        ("status", data["status"]),
        ("priority", data["priority"]),
        ("requester", data["requester"]),
        ("team", data["team"]),
        ("assignee", data["assignee"]),
        ("tags", ", ".join(data["tags"])),
        ("created", when(ticket.created_at)),
        ("updated", when(ticket.updated_at)),
    ])
    for m in data["messages"]:
        click.echo()
        who = f"{m['from_name']} <{m['from']}>" if m["from_name"] else m["from"]
        click.echo(click.style(f"── #{m['id']} {m['kind']} from {who} · {when(m['date'])}",
                               fg="cyan"))
        click.echo((m["text"] if full else m["new_text"] or m["text"]).rstrip() or "(no text)")
        for a in m["attachments"]:
            click.echo(f"  📎 {a['filename']} ({a['content_type']}, {a['size']} bytes)")
    click.echo()
    click.echo(click.style("Events", bold=True))
    for e in data["events"]:
        detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items())
        click.echo(f"  {when(e['at'])}  {e['kind']:<22} {e['actor']}  {detail}")


@tickets.command("assign")
@click.argument("ticket_id", type=int)
@click.option("--to", "agent", metavar="AGENT_EMAIL", help="The agent to assign to.")
@click.option("--team", help="The team to assign to.")
@click.option("--json", "as_json", is_flag=True, help="Print the updated ticket as JSON.")
@pass_app
def assign(
    app: AppContext, ticket_id: int, agent: str | None, team: str | None, as_json: bool
) -> None:
    """Assign a ticket to an agent and/or a team."""
    if agent is None and team is None:
        raise click.UsageError("give --to AGENT_EMAIL, --team TEAM, or both")
    with app.transaction() as session:
        ticket = ticket_service.assign(session, ticket_id, agent=agent, team=team, actor=CLI_ACTOR)
        data = ticket_json(app, ticket)
    if as_json:
        emit_json(data)
    else:
        click.echo(f"{data['reference']} assigned: team {data['team'] or '-'}, "
                   f"agent {data['assignee'] or '-'}")


@tickets.command("status")
@click.argument("ticket_id", type=int)
@click.argument("status", type=click.Choice(STATUSES))
@click.option("--json", "as_json", is_flag=True, help="Print the updated ticket as JSON.")
@pass_app
def status(app: AppContext, ticket_id: int, status: str, as_json: bool) -> None:
    """Change a ticket's status."""
    with app.transaction() as session:
        ticket = ticket_service.set_status(session, ticket_id, status, actor=CLI_ACTOR)
        data = ticket_json(app, ticket)
    if as_json:
        emit_json(data)
    else:
        click.echo(f"{data['reference']} is now {data['status']}")
