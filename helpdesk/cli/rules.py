"""`helpdesk rules check|list|test`: the admin's view of routing and auto-reply rules."""

from __future__ import annotations

import email
import email.policy
import json
import re
import shutil
import sys
import textwrap
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk import context
from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import emit_json
from helpdesk.errors import SchemaOutdated, StoreUnavailable
from helpdesk.rules import RuleSet
from helpdesk.store.db import isolate_sequences
from helpdesk.store.models import Event, Message, OutboxItem
from helpdesk.thread import format_tag
from helpdesk.values import Origin


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


# --- `rules list`: the rules in the TOML's own words --------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: object) -> str:
    """`value` written as TOML writes it, so `rules list` quotes the files' own words."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def toml_string(value: str) -> str:
    """Regexes as our rule files write them: literal strings, backslashes single.

    A multi-line string (a verbose `(?x)` regex) is shown on one line, its
    lines joined by a space: in a verbose regex that means the same; `--json`
    has the exact text.
    """
    if "\n" in value and "'''" not in value:
        joined = " ".join(line.strip() for line in value.splitlines() if line.strip())
        return f"'''{joined}'''"
    if "\\" in value and "'" not in value and "\n" not in value:
        return f"'{value}'"
    return json.dumps(value, ensure_ascii=False)


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def toml_pairs(table: dict[str, Any]) -> str:
    """`a = 1, b = "x"`: the keys of a table as they would be written in it."""
    return ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items())


@dataclass(frozen=True)
class Listed:
    """One `[[rule]]` or `[[timer]]` as the file says it."""

    kind: str
    name: str
    file: str
    description: str
    stop: bool
    when: dict[str, Any]
    then: dict[str, Any]

    def json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "file": self.file,
                "description": self.description, "stop": self.stop,
                "when": self.when, "then": self.then}

    def text(self) -> str:
        when = toml_pairs(self.when) if self.when else "always"
        return f"when {when}  then {toml_pairs(self.then)}"


_TIMER_CONDITIONS = ("status", "idle_days", "no_response_hours")
# The narrowest the WHEN / THEN column may be beside the others; else it goes below them.
MIN_WRAP_WIDTH = 40


def listed(rule_set: RuleSet) -> list[Listed]:
    """Every rule, then every timer, of a validated rule set, with its tables as written."""
    tables: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in rule_set.files:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
        for kind in ("rule", "timer"):
            for table in document.get(kind, []):
                tables[(kind, path.name, str(table.get("name", "")).strip())] = table
    found = [("rule", r.name, r.path.name) for r in rule_set.rules]
    found += [("timer", t.name, t.path.name) for t in rule_set.timers]
    result = []
    for kind, name, file in found:
        table = tables.get((kind, file, name), {})
        if kind == "rule":
            when = dict(table.get("when", {}))
        else:
            when = {k: table[k] for k in _TIMER_CONDITIONS if k in table}
        result.append(Listed(
            kind=kind, name=name, file=file, description=str(table.get("description", "")),
            stop=bool(table.get("stop", False)), when=when, then=dict(table.get("then", {})),
        ))
    return result


@rules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List the rules in evaluation order, then the timers, as their files write them."""
    items = listed(_configured(app).rules)
    if as_json:
        emit_json([item.json() for item in items])
        return
    if not items:
        click.echo(f"No rules in {app.settings.rules.dir}.")
        return
    rows = [(item.file, item.name + (" (timer)" if item.kind == "timer" else ""),
             "stop" if item.stop else "", item.text()) for item in items]
    wrapped_table(("FILE", "RULE", "STOP", "WHEN / THEN"), rows)


def wrapped_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Aligned columns, the last one wrapped (never cut) to the terminal's width.

    When the terminal leaves the last column too little room, each row's last
    cell goes on indented lines below it instead.
    """
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers[:-1])]
    columns = shutil.get_terminal_size((120, 24)).columns
    indent = sum(widths) + 2 * len(widths)
    beside = columns - indent >= MIN_WRAP_WIDTH
    if not beside:
        indent = 4

    def head(values: Sequence[str]) -> str:
        return "".join(v.ljust(w + 2) for v, w in zip(values, widths, strict=False))

    title = head(headers) + headers[-1] if beside else head(headers)
    click.echo(click.style(title.rstrip(), bold=True))
    for row in rows:
        lines = textwrap.wrap(row[-1], max(columns - indent, 20), break_on_hyphens=False)
        if beside:
            click.echo(head(row) + (lines[0] if lines else ""))
            lines = lines[1:]
        else:
            click.echo(head(row).rstrip())
        for line in lines:
            click.echo(" " * indent + line)


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
    daemon would produce. Not even an id is used up: on PostgreSQL the id
    sequences are made transactional for the dry run (store.db.isolate_sequences).
    """

    from helpdesk.flow.ingest import ingest

    raw = sys.stdin.buffer.read() if str(message) == "-" else message.read_bytes()
    ctx = app.ingest_context()
    factory = app.sessions()
    session: Session = factory()
    try:
        with session.begin():
            isolated = isolate_sequences(session.connection())
            if reply_to is not None:
                raw = _as_reply(session, raw, reply_to)
            origin = Origin(source="rules-test", mailbox=mailbox, path=str(message))
            outcome = ingest(session, raw, origin, ctx)
            report = _report(app, session, outcome)
            if not isolated:
                report["note"] = ("the database role does not own the id sequences, so this "
                                  "dry run used up ids (ticket numbers will have a gap)")
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
    if report.get("note"):
        click.echo(click.style("Note:           ", bold=True) + report["note"])
    if not report["mails"]:
        click.echo(click.style("\nNo mail would be sent.", bold=True))
    for mail in report["mails"]:
        click.echo(click.style(f"\nWould send ({mail['kind']}) to {', '.join(mail['to'])}:",
                               bold=True))
        click.echo(mail["text"])
