"""`helpdesk tickets list|show|search|assign|status|priority|tag|reply|note|merge`."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

import click

from helpdesk.cli import AppContext, Failure, pass_app
from helpdesk.cli.filters import ticket_filter_options
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.cli.ticket_json import (
    delivery_json,
    delivery_words,
    event_json,
    head_json,
    message_json,
    recipient_words,
    reference,
    summary_json,
    ticket_json,
)
from helpdesk.names import Priority, TicketStatus
from helpdesk.store.schema import utcnow

# Only `list` is imported with the module: the other commands import the ORM, the
# desk services and the queries they use when they run (`tickets list` start-up).
if TYPE_CHECKING:
    from helpdesk.desk.actions import ActionContext
    from helpdesk.store.models import Message, Ticket

STATUSES = [s.value for s in TicketStatus]
PRIORITIES = [p.value for p in Priority]
CLI_ACTOR = "cli"


@click.group()
def tickets() -> None:
    """Inspect and change tickets."""


@tickets.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only these statuses (repeatable).")
@click.option("--team", help="Only tickets of this team.")
@click.option("--assignee", metavar="EMAIL", help="Only tickets assigned to this agent.")
@click.option("--requester", metavar="EMAIL", help="Only tickets from this requester.")
@ticket_filter_options
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(
    app: AppContext,
    statuses: tuple[str, ...],
    team: str | None,
    assignee: str | None,
    requester: str | None,
    tags: tuple[str, ...],
    priority: str | None,
    since: datetime | None,
    unassigned: bool,
    subject: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tickets, most recently updated first (--since: updated since then)."""
    if unassigned and assignee:
        raise click.UsageError("--unassigned and --assignee exclude each other")
    from helpdesk.store.listing import TicketFilter, list_tickets

    flt = TicketFilter(
        status=statuses or None, team=team, assignee=assignee, requester=requester,
        tags=tags, priority=priority, since=since, unassigned=unassigned, subject=subject,
        limit=limit,
    )
    with app.reading() as conn:
        rows = list_tickets(conn, flt)
    if as_json:
        emit_json([summary_json(app, r) for r in rows])
        return
    if not rows:
        click.echo("No tickets.")
        return
    table(
        ["REF", "STATUS", "PRIO", "TEAM", "ASSIGNEE", "REQUESTER", "MSGS", "UPDATED", "SUBJECT"],
        [
            [reference(app, r.id), r.status, r.priority, r.team, r.assignee, r.requester,
             r.message_count, when(r.updated_at), r.subject]
            for r in rows
        ],
    )


@tickets.command("show")
@click.argument("ticket_id", type=int)
@click.option("--full", is_flag=True, help="Show each message's full text, quotes included.")
@click.option("--json", "as_json", is_flag=True, help="Print the ticket as JSON.")
@pass_app
def show(app: AppContext, ticket_id: int, full: bool, as_json: bool) -> None:
    """Show a ticket: its thread (oldest first), its outgoing mail and its events.

    An agent's mail that was relayed to the requester is shown once, marked
    relayed, with the delivery state of the relayed copy.
    """
    from helpdesk.errors import NotFound
    from helpdesk.store import detail

    with app.reading() as conn:
        view = detail.conversation(conn, ticket_id)
    if view is None:
        raise NotFound("ticket", ticket_id)
    ticket = view.ticket
    data = head_json(app, ticket)
    data["messages"] = [
        {**message_json(e.message), "relayed": e.relayed,
         "delivery": delivery_json(e.delivery) if e.delivery else None}
        for e in view.entries
    ]
    data["outgoing"] = [delivery_json(d) for d in view.deliveries]
    data["events"] = [event_json(e) for e in view.events]
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
    for entry, m in zip(view.entries, data["messages"], strict=True):
        click.echo()
        who = f"{m['from_name']} <{m['from']}>" if m["from_name"] else m["from"]
        head = f"── #{m['id']} {m['kind']} from {who} · {when(m['date'])}"
        if m["direction"] == "out" and not entry.relayed:
            head += f" · to {m['to']}"
        if entry.relayed:
            head += " · relayed"
        if entry.delivery is not None:
            head += f" · {delivery_words(entry.delivery)}"
        click.echo(click.style(head, fg="cyan"))
        click.echo((m["text"] if full else m["new_text"] or m["text"]).rstrip() or "(no text)")
        for a in m["attachments"]:
            click.echo(f"  📎 {a['filename']} ({a['content_type']}, {a['size']} bytes)")
    if view.deliveries:
        click.echo()
        click.echo(click.style("Outgoing mail", bold=True))
        table(["OUTBOX", "KIND", "STATE", "TRIES", "TO", "DELIVERY"],
              [[d.outbox_id, d.kind, d.state, d.attempts, recipient_words(d), delivery_words(d)]
               for d in view.deliveries])
    click.echo()
    click.echo(click.style("Events", bold=True))
    for e in data["events"]:
        said = ", ".join(f"{k}={v}" for k, v in e["detail"].items())
        click.echo(f"  {when(e['at'])}  {e['kind']:<22} {e['actor']}  {said}")


@tickets.command("search")
@click.argument("query")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only tickets with these statuses (repeatable).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def search(app: AppContext, query: str, statuses: tuple[str, ...], limit: int,
           as_json: bool) -> None:
    """Find tickets by the words of their mail: subject, text and sender, best match first.

    QUERY is words (all must occur), "a phrase", `or` between alternatives and
    -word to exclude, e.g. `tickets search 'drucker "3. stock" -toner'` (a query
    that starts with "-" goes after `--`).
    """
    from helpdesk.store import search as full_text

    parsed = full_text.parse_query(query)
    with app.reading() as conn:
        hits = full_text.search(conn, parsed, statuses=statuses, limit=limit)
    if as_json:
        emit_json([{"id": h.ticket_id, "reference": reference(app, h.ticket_id),
                    "subject": h.subject, "status": h.status, "priority": h.priority,
                    "updated_at": h.updated_at, "score": round(h.score, 6),
                    "message_row_id": h.message_row_id, "snippet": h.snippet} for h in hits])
        return
    if not hits:
        click.echo("No tickets match.")
        return
    for h in hits:
        click.echo(f"{click.style(reference(app, h.ticket_id), bold=True)} {h.status:<8} "
                   f"{when(h.updated_at)}  {h.subject}")
        click.echo(f"    {h.snippet}")


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
    from helpdesk.desk import tickets as ticket_service

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
@click.option("--quiet", is_flag=True,
              help="Resolve without mailing the requester the resolution notice.")
@click.option("--json", "as_json", is_flag=True, help="Print the updated ticket as JSON.")
@pass_app
def status(app: AppContext, ticket_id: int, status: str, quiet: bool, as_json: bool) -> None:
    """Change a ticket's status; resolving it mails the requester the resolution notice."""
    from helpdesk.desk import tickets as ticket_service
    from helpdesk.desk.notices import Notice  # mail composition: only status changes need it

    notice = None
    if status == TicketStatus.RESOLVED and not quiet:
        notice = Notice(_mail_context(app))
    elif status == TicketStatus.RESOLVED:
        notice = Notice(None, quiet="--quiet")
    with app.transaction() as session:
        before = [e.id for e in ticket_service.events(session, ticket_id)]
        ticket = ticket_service.set_status(session, ticket_id, status, actor=CLI_ACTOR,
                                           notice=notice)
        data = ticket_json(app, ticket)
        told = [e for e in ticket_service.events(session, ticket_id)
                if e.id not in before and e.kind.startswith("notice.")]
        data["notice"] = event_json(told[-1]) if told else None
    if as_json:
        emit_json(data)
        return
    click.echo(f"{data['reference']} is now {data['status']}{_notice_words(data['notice'])}")


def _mail_context(app: AppContext) -> ActionContext | None:
    """What the resolution notice needs: the templates (a broken one is an error before
    anything changes), not the rules, so that a rule file being edited does not stop it."""
    from helpdesk import context
    from helpdesk.rules import RuleSet
    from helpdesk.templates import TemplateSet, load_templates

    directory = app.settings.templates.dir
    templates = load_templates(directory) if directory.exists() else TemplateSet()
    with app.transaction() as session:
        return context.ingest_context(session, app.settings,
                                      context.Configured(RuleSet(), templates)).actions


def _notice_words(notice: dict[str, Any] | None) -> str:
    if notice is None:
        return ""
    detail = notice["detail"]
    if notice["kind"] == "notice.queued":
        return f"; resolution notice queued to {detail['to']}"
    return f"; no resolution notice ({detail.get('reason')})"


@tickets.command("priority")
@click.argument("ticket_id", type=int)
@click.argument("priority", type=click.Choice(PRIORITIES))
@click.option("--json", "as_json", is_flag=True, help="Print the updated ticket as JSON.")
@pass_app
def priority(app: AppContext, ticket_id: int, priority: str, as_json: bool) -> None:
    """Set a ticket's priority (as `#priority` does by mail)."""
    from helpdesk.desk import tickets as ticket_service

    with app.transaction() as session:
        ticket = ticket_service.get_unmerged(session, ticket_id)
        changed = ticket_service.change_priority(session, ticket, Priority(priority),
                                                 actor=CLI_ACTOR, now=utcnow())
        session.flush()
        data = ticket_json(app, ticket)
    if as_json:
        emit_json(data)
    elif changed:
        click.echo(f"{data['reference']} priority is now {data['priority']}")
    else:
        click.echo(f"{data['reference']} priority was already {data['priority']}")


@tickets.command("tag")
@click.argument("ticket_id", type=int)
@click.argument("tags", nargs=-1, required=True)
@click.option("--remove", is_flag=True, help="Remove these tags instead of adding them.")
@click.option("--json", "as_json", is_flag=True, help="Print the updated ticket as JSON.")
@pass_app
def tag(app: AppContext, ticket_id: int, tags: tuple[str, ...], remove: bool,
        as_json: bool) -> None:
    """Add tags to a ticket (as `#tag` does by mail), or remove them with --remove."""
    from helpdesk.desk import tickets as ticket_service

    wanted = ticket_service.clean_tags(tags)
    with app.transaction() as session:
        ticket = ticket_service.get_unmerged(session, ticket_id)
        change = ticket_service.remove_tags if remove else ticket_service.add_tags
        changed = change(session, ticket, wanted, actor=CLI_ACTOR, now=utcnow())
        session.flush()
        data = {**ticket_json(app, ticket), "changed": changed}
    if as_json:
        emit_json(data)
        return
    verb = "removed" if remove else "added"
    did = f"{verb} {', '.join(changed)}" if changed else f"nothing {verb}"
    click.echo(f"{data['reference']} tags: {', '.join(data['tags']) or '-'} ({did})")


# Git's scissors line: everything below it in the editor is ignored.
SCISSORS = "# ------------------------ >8 ------------------------"


def _editor_template(app: AppContext, ticket: Ticket, heading: str, last: Message | None) -> str:
    """What $EDITOR opens with: room to write, the scissors, and the customer's last mail."""
    lines = ["", "", SCISSORS, "# Do not modify or remove the line above.",
             "# Everything below it is ignored.", "#",
             f"# {heading} {reference(app, ticket.id)} {ticket.subject}"]
    if ticket.requester is not None:
        lines.append(f"# Requester: {ticket.requester.address}")
    if last is not None:
        who = f"{last.from_name} <{last.from_address}>" if last.from_name else last.from_address
        lines += ["#", f"# {who} wrote on {when(last.sent_at or last.received_at)}:"]
        text = (last.new_text or last.text).rstrip()
        lines += [f"> {line}".rstrip() for line in text.splitlines()] or [">"]
    return "\n".join(lines) + "\n"


def cut_at_scissors(edited: str) -> str:
    """The text above the scissors line (all of it when the line was removed), trimmed."""
    kept: list[str] = []
    for line in edited.splitlines():
        if line.rstrip() == SCISSORS:
            break
        kept.append(line.rstrip())
    return "\n".join(kept).strip("\n")


def _text(
    message: str | None,
    file: TextIO | None,
    template: str | None,
    what: str,
) -> str:
    """The text from -m, --file or the editor; exit 1 when it is empty."""
    if message is not None:
        text = "\n".join(line.rstrip() for line in message.splitlines()).strip("\n")
    elif file is not None:
        text = "\n".join(line.rstrip() for line in file.read().splitlines()).strip("\n")
    else:
        edited = click.edit(template or "", extension=".txt")
        text = cut_at_scissors(edited) if edited is not None else ""
    if not text.strip():
        raise Failure(f"empty {what}: nothing was changed")
    return text


def _check_text_options(message: str | None, file: TextIO | None) -> None:
    if message is not None and file is not None:
        raise click.UsageError("give -m TEXT or --file PATH, not both")


_AS_OPTION = click.option("--as", "agent_address", required=True, metavar="AGENT_EMAIL",
                          help="The agent writing; must exist and be active.")
_MESSAGE_OPTION = click.option("-m", "--message", metavar="TEXT",
                               help="The text (else --file, else $EDITOR opens).")
_FILE_OPTION = click.option("--file", type=click.File("r", encoding="utf-8"), metavar="PATH",
                            help="Read the text from PATH ('-' for stdin).")


@tickets.command("reply")
@click.argument("ticket_id", type=int)
@_AS_OPTION
@_MESSAGE_OPTION
@_FILE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print what was queued as JSON.")
@pass_app
def reply(
    app: AppContext,
    ticket_id: int,
    agent_address: str,
    message: str | None,
    file: TextIO | None,
    as_json: bool,
) -> None:
    """Reply to a ticket as an agent: the mail goes to the requester and the people copied.

    The reply is sent from the support address with the ticket tag, continues
    the requester's thread, and goes through the outbox. Without -m or --file,
    $EDITOR opens with the requester's last mail quoted below a marker line.
    """
    from helpdesk.desk import staff
    from helpdesk.desk import tickets as ticket_service
    from helpdesk.flow import relay  # templates and mail composition: only replies need them
    from helpdesk.values import Address

    _check_text_options(message, file)
    template = None
    with app.transaction() as session:
        ticket = ticket_service.get_unmerged(session, ticket_id)
        agent = staff.active_agent(session, agent_address)
        if message is None and file is None:
            last = ticket_service.last_customer_message(session, ticket_id)
            template = _editor_template(app, ticket, f"Reply as {agent.name} to", last)
    # Rules and templates first: a broken file must not cost a written reply.
    actions = app.ingest_context().actions
    assert actions is not None  # ingest_context() with rules always has them
    # The editor runs outside any transaction, so the store is never locked meanwhile.
    text = _text(message, file, template, "reply")
    with app.transaction() as session:
        ticket_service.get_unmerged(session, ticket_id)
        agent = staff.active_agent(session, agent_address)
        author = Address(agent_address.strip().lower(), agent.name)
        item = relay.agent_reply(session, ticket_id=ticket_id, agent=author, text=text,
                                 ctx=actions, now=utcnow())
        if item is None:
            # Raising rolls the transaction back: nothing is recorded as answered.
            raise Failure(f"{reference(app, ticket_id)} has no requester or copied person to "
                          "reply to; nothing was queued (use `tickets note` to record text)")
        data: dict[str, Any] = {
            "ticket_id": ticket_id,
            "reference": reference(app, ticket_id),
            "outbox_id": item.id,
            "message_id": item.message_id,
            "from": agent.name,
            "to": item.envelope_to[0],
            "cc": item.envelope_to[1:],
        }
    if as_json:
        emit_json(data)
        return
    cc = f", cc {', '.join(data['cc'])}" if data["cc"] else ""
    click.echo(f"{data['reference']} reply queued as outbox item {data['outbox_id']}: "
               f"to {data['to']}{cc}")


@tickets.command("note")
@click.argument("ticket_id", type=int)
@_AS_OPTION
@_MESSAGE_OPTION
@_FILE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the stored note as JSON.")
@pass_app
def note(
    app: AppContext,
    ticket_id: int,
    agent_address: str,
    message: str | None,
    file: TextIO | None,
    as_json: bool,
) -> None:
    """Add an internal note to a ticket; it is never sent to the requester."""
    from helpdesk.desk import staff
    from helpdesk.desk import tickets as ticket_service
    from helpdesk.values import Address

    _check_text_options(message, file)
    template = None
    with app.transaction() as session:
        ticket = ticket_service.get_unmerged(session, ticket_id)
        agent = staff.active_agent(session, agent_address)
        if message is None and file is None:
            last = ticket_service.last_customer_message(session, ticket_id)
            template = _editor_template(
                app, ticket, f"Internal note (never sent to the requester) by {agent.name} on",
                last)
    text = _text(message, file, template, "note")
    with app.transaction() as session:
        agent = staff.active_agent(session, agent_address)
        row = ticket_service.add_note(
            session, ticket_id, author=Address(agent_address.strip().lower(), agent.name),
            text=text, domain=app.settings.helpdesk.domain, now=utcnow(),
        )
        data: dict[str, Any] = {"ticket_id": ticket_id,
                                "reference": reference(app, ticket_id), **message_json(row)}
    if as_json:
        emit_json(data)
    else:
        click.echo(f"{data['reference']} note {data['id']} added by {data['from']}")


@tickets.command("merge")
@click.argument("ticket_id", type=int)
@click.argument("into_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print both tickets as JSON.")
@pass_app
def merge(app: AppContext, ticket_id: int, into_id: int, as_json: bool) -> None:
    """Merge ticket TICKET_ID into INTO_ID: closed, and its later mail goes to INTO_ID.

    Its messages stay where they are; its participants and tags are copied.
    INTO_ID must not itself be merged.
    """
    from helpdesk.desk import tickets as ticket_service

    with app.transaction() as session:
        merged = ticket_service.merge(session, ticket_id, into_id, actor=CLI_ACTOR)
        data: dict[str, Any] = {
            "merged": ticket_json(app, merged.source),
            "into": ticket_json(app, merged.target),
            "participants_added": list(merged.participants),
            "tags_added": list(merged.tags),
        }
    if as_json:
        emit_json(data)
        return
    copied = []
    if merged.participants:
        copied.append(f"participants {', '.join(merged.participants)}")
    if merged.tags:
        copied.append(f"tags {', '.join(merged.tags)}")
    also = f"; copied {' and '.join(copied)}" if copied else ""
    click.echo(f"{data['merged']['reference']} merged into {data['into']['reference']} "
               f"and closed{also}")
