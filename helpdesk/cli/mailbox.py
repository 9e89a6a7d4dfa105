"""`helpdesk mailbox list|check`: the configured mailboxes and how far ingestion got."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from helpdesk import mailboxes as mailbox_service
from helpdesk.cli import AppContext, Failure, pass_app
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.errors import NotFound
from helpdesk.sources.imap import ImapSource
from helpdesk.values import Incoming, IngestOutcome


@click.group()
def mailbox() -> None:
    """The IMAP mailboxes helpdesk watches."""


@mailbox.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """Each mailbox with its counters, lease holder and last poll."""
    rows: list[dict[str, Any]] = []
    with app.transaction() as session:
        for box in app.settings.mailboxes:
            state = mailbox_service.find_state(session, box.name)
            rows.append({
                "name": box.name,
                "server": f"{box.host}:{box.port} ({box.tls})",
                "folder": box.folder,
                "uidvalidity": state.uidvalidity if state else None,
                "last_uid": state.last_uid if state else 0,
                "last_poll_at": state.last_poll_at if state else None,
                "lease_holder": state.lease_holder if state else None,
                "lease_expires_at": state.lease_expires_at if state else None,
                "counters": dict(state.counters or {}) if state else {},
            })
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No [[mailbox]] configured.")
        return
    table(
        ["NAME", "SERVER", "FOLDER", "LAST UID", "LAST POLL", "HOLDER", "COUNTERS"],
        [[r["name"], r["server"], r["folder"], r["last_uid"], when(r["last_poll_at"]),
          r["lease_holder"], " ".join(f"{k}={v}" for k, v in sorted(r["counters"].items()))]
         for r in rows],
    )


@mailbox.command("check")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@pass_app
def check(app: AppContext, name: str | None, as_json: bool) -> None:
    """Connect, log in, and show capabilities, folders, UIDVALIDITY and progress."""
    boxes = [b for b in app.settings.mailboxes if name is None or b.name == name]
    if name is not None and not boxes:
        raise NotFound("mailbox", name)
    if not boxes:
        raise Failure("no [[mailbox]] configured")
    factory = app.sessions()
    results = []
    failed = False
    for box in boxes:
        source = ImapSource(box, _no_sink, factory, holder="cli-check")
        try:
            result: dict[str, Any] = {"name": box.name, "ok": True, **source.check()}
        except Exception as exc:  # noqa: BLE001 - a check reports every failure, it never dies
            result = {"name": box.name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            failed = True
        finally:
            source.close()
        results.append(result)
    if as_json:
        emit_json(results)
    else:
        for result in results:
            _print_check(result)
    if failed:
        raise click.exceptions.Exit(1)


def _no_sink(incoming: Sequence[Incoming]) -> list[IngestOutcome]:
    raise AssertionError("mailbox check never ingests")


def _print_check(result: dict[str, Any]) -> None:
    click.echo(click.style(f"Mailbox {result['name']}", bold=True))
    if not result["ok"]:
        click.echo(f"  FAILED: {result['error']}")
        return
    skip = ("name", "ok", "folders", "state")
    pairs = [(k, v) for k, v in result.items() if k not in skip]
    fields([(k, " ".join(map(str, v)) if isinstance(v, list | tuple) else v) for k, v in pairs])
    state = result.get("state") or {}
    click.echo(f"  ingested so far: uidvalidity {state.get('uidvalidity')}, "
               f"last uid {state.get('last_uid')}, last poll {state.get('last_poll_at')}")
    for folder in result.get("folders", []):
        counts = " ".join(f"{k}={v}" for k, v in folder.items() if k != "name")
        click.echo(f"  folder {folder.get('name')}: {counts}")
