"""`helpdesk export`: tickets as an mbox of their raw mails, or as JSON.

The export reads one consistent snapshot of the store that never blocks the
daemon (`store.db.snapshot`), ticket by ticket in batches, so memory stays
flat however big the store is. Written to `-o FILE` it goes to a temporary
file renamed into place at the end: an interrupted export leaves no file
that looks complete.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

import click
from sqlalchemy.orm import Session

from helpdesk import __version__
from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import to_jsonable
from helpdesk.cli.ticket_json import delivery_json, event_json, message_json, ticket_json
from helpdesk.errors import NotFound
from helpdesk.mail.mbox import mbox_entry
from helpdesk.store import detail, queries
from helpdesk.store.db import snapshot
from helpdesk.store.models import Message, utcnow

BATCH = 100  # tickets read at a time
PROGRESS_FROM = 200  # tickets; smaller exports finish before a bar would help


@click.command("export")
@click.option("--ticket", "ticket_id", type=int, help="Only this ticket.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M",
                                              "%Y-%m-%dT%H:%M:%S"]),
              help="Only tickets with activity on or after this date (UTC).")
@click.option("--format", "fmt", type=click.Choice(["mbox", "json"]), required=True,
              help="mbox: the raw mails; json: tickets, messages, events, attachments' metadata.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE (default: standard output).")
@pass_app
def export(app: AppContext, ticket_id: int | None, since: datetime | None, fmt: str,
           output: Path | None) -> None:
    """Export tickets: all of them, one (--ticket), or those active since a date (--since).

    mbox holds every mail of each ticket in arrival order: incoming mail as
    received, outgoing mail as sent (internal notes are not mail; they are in
    the JSON). JSON holds the tickets with their messages, events, outgoing
    mail and attachments' metadata.
    """
    if ticket_id is not None and since is not None:
        raise click.UsageError("give --ticket or --since, not both")
    after = since.replace(tzinfo=UTC) if since is not None else None
    app.sessions()  # the schema check and its clear message come first
    with snapshot(app.engine) as session:
        ids = queries.export_ticket_ids(session, ticket_id=ticket_id, since=after)
        if ticket_id is not None and not ids:
            raise NotFound("ticket", ticket_id)
        write = _mbox if fmt == "mbox" else _json
        with _destination(output) as out, _progress(len(ids), sys.stderr) as advance:
            write(app, session, ids, out, advance)
    if output is not None:
        click.echo(f"exported {len(ids)} tickets to {output}", err=True)


def _batches(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start:start + BATCH]


def _mbox(app: AppContext, session: Session, ids: list[int], out: IO[bytes],
          advance: Callable[[int], None]) -> None:
    for batch in _batches(ids):
        for mail in queries.raw_mails(session, batch):
            out.write(mbox_entry(mail.raw, sender=mail.sender, when=mail.when))
        advance(len(batch))


def _json(app: AppContext, session: Session, ids: list[int], out: IO[bytes],
          advance: Callable[[int], None]) -> None:
    """One JSON document, written ticket by ticket."""
    head = {"format": "helpdesk-export", "version": 1, "helpdesk": __version__,
            "exported_at": utcnow()}
    out.write(_dumps(head)[:-1].encode() + b', "tickets": [')
    first = True
    for batch in _batches(ids):
        events = queries.events_of(session, batch)
        people = queries.participants_of(session, batch)
        for ticket in queries.tickets_with_history(session, batch):
            record = {
                **ticket_json(app, ticket),
                "participants": [{"address": a, "role": r} for a, r in people[ticket.id]],
                "messages": [_message(m) for m in ticket.messages],
                "events": [event_json(e) for e in events[ticket.id]],
                "outgoing": [delivery_json(d)
                             for d in detail.deliveries(session, ticket.id)],
            }
            out.write((b"\n" if first else b",\n") + _dumps(record).encode())
            first = False
        session.expunge_all()  # what was written is not needed again
        advance(len(batch))
    out.write(b"\n]}\n")


def _message(m: Message) -> dict[str, Any]:
    return {**message_json(m), "mail_class": m.mail_class, "in_reply_to": m.in_reply_to,
            "references": m.references.split(), "size": m.size, "html": m.html,
            "origin": m.origin_source}


def _dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), ensure_ascii=False)


@contextmanager
def _destination(output: Path | None) -> Iterator[IO[bytes]]:
    if output is None:
        stream = sys.stdout.buffer
        yield stream
        stream.flush()
        return
    partial = output.with_name(f".{output.name}.partial")
    try:
        with partial.open("wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def _progress(total: int, stream: TextIO) -> Iterator[Callable[[int], None]]:
    """A progress bar on `stream` for big exports, only on a terminal (never in a pipe or log)."""
    hidden = total < PROGRESS_FROM or not stream.isatty()
    with click.progressbar(length=total, label="Exporting tickets", file=stream,
                           hidden=hidden) as bar:
        yield bar.update
