"""`helpdesk rules check|list|test`: the admin's view of routing and auto-reply rules."""

from __future__ import annotations

import email
import email.policy
import re
import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk import context
from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import emit_json, table
from helpdesk.errors import SchemaOutdated, StoreUnavailable
from helpdesk.ingest import ingest
from helpdesk.rules import Rule
from helpdesk.rules.schema import AnyOf, Condition, ConditionGroup
from helpdesk.store.models import Event, Message, OutboxItem
from helpdesk.thread import format_tag
from helpdesk.values import Action, Origin


@click.group()
def rules() -> None:
    """Routing and auto-reply rules (rules/*.toml) and their templates."""


def _configured(app: AppContext) -> context.Configured:
    """Rules and templates, checked against the store's teams and agents when it is there."""
    try:
        return app.configured()
    except (SchemaOutdated, StoreUnavailable):
        # `rules check` must work on a machine without a database (a CI job
        # linting the rule files): then only the config's teams and agents count.
        return context.load_configured(None, app.settings)


@rules.command("check")
@pass_app
def check(app: AppContext) -> None:
    """Validate every rule and template; exit 1 listing every problem."""
    configured = _configured(app)
    settings = app.settings
    click.echo(
        f"{len(configured.rules)} rules in {len(configured.rules.files)} files "
        f"({settings.rules.dir}), {len(configured.templates.names)} templates "
        f"({settings.templates.dir}): OK"
    )


def describe_condition(item: Condition | AnyOf) -> str:
    if isinstance(item, AnyOf):
        return "any(" + " | ".join(describe_group(g) for g in item.groups) + ")"
    value = item.value
    if isinstance(value, re.Pattern):
        shown: Any = value.pattern
    elif isinstance(value, tuple | list | frozenset | set):
        shown = ",".join(str(v.pattern if isinstance(v, re.Pattern) else v) for v in value)
    else:
        shown = value
    return f"{item.key}={shown}"


def describe_group(group: ConditionGroup) -> str:
    return " & ".join(describe_condition(i) for i in group.items) or "always"


def describe_action(action: Action) -> str:
    name = type(action).__name__
    fields = ", ".join(f"{k}={v}" for k, v in _fields(action).items() if v is not None)
    return f"{name}({fields})"


def _fields(action: Action) -> dict[str, Any]:
    return {slot: getattr(action, slot) for slot in action.__slots__}


def rule_json(rule: Rule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "file": rule.file,
        "description": rule.description,
        "when": describe_group(rule.when),
        "then": [describe_action(a) for a in rule.actions],
        "stop": rule.stop,
    }


@rules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List the rules in evaluation order."""
    data = [rule_json(r) for r in _configured(app).rules]
    if as_json:
        emit_json(data)
        return
    if not data:
        click.echo(f"No rules in {app.settings.rules.dir}.")
        return
    table(
        ["FILE", "RULE", "STOP", "THEN", "WHEN"],
        [[d["file"], d["name"], "stop" if d["stop"] else "", "; ".join(d["then"]), d["when"]]
         for d in data],
    )


@rules.command("test")
@click.argument("message", type=click.Path(exists=True, dir_okay=False, allow_dash=True,
                                           path_type=Path))
@click.option("--as-reply-to", "reply_to", type=int, metavar="TICKET_ID",
              help="Treat the mail as a reply on this ticket.")
@click.option("--mailbox", help="Pretend the mail arrived through this [[mailbox]].")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_app
def test(
    app: AppContext, message: Path, reply_to: int | None, mailbox: str | None, as_json: bool
) -> None:
    """Show what MESSAGE.eml would do: classification, rules, actions, mail; changes nothing.

    The mail is ingested for real inside a transaction that is rolled back,
    so threading, rules, actions and the composed mail are exactly what the
    daemon would produce.
    """
    raw = sys.stdin.buffer.read() if str(message) == "-" else message.read_bytes()
    ctx = app.ingest_context()
    factory = app.sessions()
    session: Session = factory()
    try:
        with session.begin():
            if reply_to is not None:
                raw = _as_reply(session, raw, reply_to)
            origin = Origin(source="rules-test", mailbox=mailbox, path=str(message))
            outcome = ingest(session, raw, origin, ctx)
            report = _report(app, session, outcome)
            session.rollback()
    finally:
        session.close()
    if as_json:
        emit_json(report)
        return
    _print_report(report)


def _as_reply(session: Session, raw: bytes, ticket_id: int) -> bytes:
    last = session.scalars(
        select(Message.message_id)
        .where(Message.ticket_id == ticket_id)
        .order_by(Message.id.desc())
        .limit(1)
    ).first()
    if last is None:
        raise click.BadParameter(f"ticket {ticket_id} has no messages", param_hint="--as-reply-to")
    # Headers first in the mail win over any the file has (parse takes the first).
    return f"In-Reply-To: <{last}>\r\nReferences: <{last}>\r\n".encode() + raw


def _report(app: AppContext, session: Session, outcome: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "outcome": outcome.kind.value,
        "ticket": format_tag(outcome.ticket_id, app.settings.helpdesk.tag_prefix)
        if outcome.ticket_id else None,
        "classification": outcome.mail_class,
        "error": outcome.error,
        "events": [],
        "mails": [],
    }
    if outcome.message_row_id is None:
        return report
    events = session.scalars(
        select(Event).where(Event.message_row_id == outcome.message_row_id).order_by(Event.id)
    )
    report["events"] = [{"actor": e.actor, "kind": e.kind, "detail": e.detail} for e in events]
    mails = session.scalars(
        select(OutboxItem).where(OutboxItem.correlation_id == outcome.message_id)
        .order_by(OutboxItem.id)
    )
    report["mails"] = [
        {"kind": m.kind, "to": m.envelope_to, "raw": m.raw.decode("utf-8", "replace"),
         "text": readable(m.raw)}
        for m in mails
    ]
    return report


def readable(raw: bytes) -> str:
    """A composed mail as a person reads it: decoded headers, then the text."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    lines = [f"{name}: {value}" for name, value in msg.items()
             if name.lower() not in ("content-transfer-encoding", "mime-version")]
    body = msg.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    names = [part.get_filename() for part in msg.iter_attachments()]
    attached = [f"[attachment: {n}]" for n in names if n]
    return "\n".join([*lines, "", text.rstrip(), *attached])


def _print_report(report: dict[str, Any]) -> None:
    click.echo(click.style("Outcome:        ", bold=True) + f"{report['outcome']} "
               f"{report['ticket'] or ''}".rstrip())
    click.echo(click.style("Classification: ", bold=True) + report["classification"])
    if report["error"]:
        click.echo(click.style("Error:          ", bold=True) + report["error"])
    click.echo(click.style("\nWhat happens:", bold=True))
    for e in report["events"]:
        detail = e["detail"]
        if e["kind"] == "rule.matched":
            reasons = "; ".join(detail.get("reasons", []))
            click.echo(f"  {e['actor']:<28} matched ({detail.get('file')}): {reasons}")
        else:
            shown = ", ".join(f"{k}={v}" for k, v in detail.items())
            click.echo(f"  {e['actor']:<28} {e['kind']}: {shown}")
    if not report["mails"]:
        click.echo(click.style("\nNo mail would be sent.", bold=True))
    for mail in report["mails"]:
        click.echo(click.style(f"\nWould send ({mail['kind']}) to {', '.join(mail['to'])}:",
                               bold=True))
        click.echo(mail["text"])
