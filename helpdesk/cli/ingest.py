"""`helpdesk ingest`: files, stdin (an MTA pipe), a Maildir or an mbox into tickets.

The mail goes through the same two stages as in the daemon (`helpdesk.intake`):
parsing in forked worker processes under `[intake] message_time_limit`, then
group commits of up to `[intake] batch_max` mails, a savepoint each.

Exit codes, for an MTA pipe (Postfix `pipe`, an alias `|helpdesk ingest`):
0 the mail is stored (or quarantined: kept, a person will look at it);
75 (EX_TEMPFAIL) for anything that is our fault — the database down, locked,
full, not upgraded, a broken configuration, a bug — so the MTA keeps the mail
and retries; 1 only for a mail that is itself unacceptable (over
`max_message_bytes`), which the MTA then bounces to its sender.
"""

from __future__ import annotations

import functools
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from helpdesk.cli import AppContext, Failure, TempFailure, handoff, pass_app
from helpdesk.cli.output import emit_json
from helpdesk.errors import ConfigError, SchemaOutdated, StoreUnavailable
from helpdesk.values import Incoming, Origin, OutcomeKind

if TYPE_CHECKING:
    import mailbox

# Show a progress bar when there is more than a screenful of mail to go through.
PROGRESS_THRESHOLD = 20

RawSource = Callable[[int], bytes]
"""Reads one mail, given the size limit; raises _TooLarge beyond it."""


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


@dataclass
class _Tally:
    counts: Counter[OutcomeKind] = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)


def _read_stdin(limit: int) -> bytes:
    raw = sys.stdin.buffer.read(limit + 1)
    if len(raw) > limit:
        rest = len(raw)
        while chunk := sys.stdin.buffer.read(1 << 20):  # drain, to report the real size
            rest += len(chunk)
        raise _TooLarge(rest)
    return raw


def _read_file(path: Path, limit: int) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise _TooLarge(size)
    return path.read_bytes()


def _read_mbox(box: mailbox.mbox, key: str, limit: int) -> bytes:
    raw = box.get_bytes(key)
    if len(raw) > limit:
        raise _TooLarge(len(raw))
    return raw


def _from_files(paths: tuple[str, ...], recipient: str | None = None,
                stdin: bytes | None = None) -> Iterator[tuple[RawSource, Origin]]:
    for name in paths:
        if name == "-":
            read = _read_stdin if stdin is None else functools.partial(_given, stdin)
            yield read, Origin(source="stdin", recipient=recipient)
        else:
            path = Path(name)
            yield functools.partial(_read_file, path), Origin(source="file", path=str(path))


def _from_maildir(root: Path) -> Iterator[tuple[RawSource, Origin]]:
    # Read-only import: `cur/` and `new/` alike. Moving new/ to cur/ after commit
    # is the job of the Maildir source in the daemon.
    for sub in ("cur", "new"):
        folder = root / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                yield functools.partial(_read_file, path), Origin(source="maildir", path=str(path))


def _given(raw: bytes, limit: int) -> bytes:
    if len(raw) > limit:
        raise _TooLarge(len(raw))
    return raw


def _from_mbox(path: Path) -> tuple[int, Iterator[tuple[RawSource, Origin]]]:
    import mailbox

    box = mailbox.mbox(str(path), create=False)

    def each() -> Iterator[tuple[RawSource, Origin]]:
        try:
            for key in box.iterkeys():
                yield (functools.partial(_read_mbox, box, key),
                       Origin("mbox", path=f"{path}#{key}"))
        finally:
            box.close()

    return len(box), each()


@click.command()
@click.argument("files", nargs=-1, type=click.Path(allow_dash=True))
@click.option(
    "--maildir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Import every message of a Maildir (cur/ and new/; nothing is moved).",
)
@click.option(
    "--mbox",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Import every message of an mbox file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@click.option(
    "--sender",
    "envelope_sender",
    envvar="SENDER",
    help="Envelope sender (MAIL FROM) of the mail on stdin, a last resort when its headers "
    "name none; Postfix's local(8) sets $SENDER for a pipe.",
)
@click.option(
    "--recipient",
    envvar=["ORIGINAL_RECIPIENT", "RECIPIENT"],
    help="Envelope recipient of the mail on stdin (rules' `recipient`); Postfix's local(8) "
    "sets $ORIGINAL_RECIPIENT. With it, and the daemon listening on [lmtp] socket, the mail "
    "is handed to the daemon instead of opening the store here.",
)
@pass_app
def ingest(
    app: AppContext, files: tuple[str, ...], maildir: Path | None, mbox: Path | None,
    as_json: bool, envelope_sender: str | None, recipient: str | None,
) -> None:
    """Turn mail into tickets: FILE ..., `-` or nothing for one message on stdin.

    Exits 75 (EX_TEMPFAIL) when the store is unavailable or the configuration
    is broken, so an MTA retries; 1 for a message over [intake]
    max_message_bytes. Unparseable mail is quarantined, not rejected: see
    `helpdesk quarantine list`.
    """
    piped_only = files in ((), ("-",)) and not maildir and not mbox
    stdin: bytes | None = None
    if piped_only and recipient and not sys.stdin.isatty():
        where = handoff.target(app.config_path, os.environ)
        if where is not None:
            try:
                stdin = _read_stdin(where.max_message_bytes)
            except _TooLarge as exc:
                raise Failure(f"-: too large ({exc.size} bytes; the limit is "
                              f"{where.max_message_bytes} bytes, [intake] max_message_bytes): "
                              "not ingested") from exc
            answer = handoff.hand_over(where, stdin, envelope_sender, recipient)
            if answer is not None:
                _report_answer(answer, as_json)
                return
    total = 0
    sources: list[Iterator[tuple[RawSource, Origin]]] = []
    if files:
        total += len(files)
        sources.append(_from_files(files, recipient, stdin))
    if maildir:
        listed = list(_from_maildir(maildir))
        total += len(listed)
        sources.append(iter(listed))
    if mbox:
        count, each = _from_mbox(mbox)
        total += count
        sources.append(each)
    piped = "-" in files or not sources
    if not sources:
        if stdin is None and sys.stdin.isatty():
            raise click.UsageError("no input: give FILE ..., `-`, --maildir or --mbox")
        total = 1
        sources.append(_from_files(("-",), recipient, stdin))
    _report(_ingest_here(app, sources, total, envelope_sender if piped else None, piped),
            as_json)


def _ingest_here(
    app: AppContext, sources: list[Iterator[tuple[RawSource, Origin]]], total: int,
    envelope_sender: str | None, piped: bool,
) -> _Tally:
    """Open the store in this process and ingest everything; the exit codes of an MTA pipe."""
    from sqlalchemy.exc import DBAPIError

    try:
        return _run(app, sources, total, envelope_sender)
    except StoreUnavailable:
        raise  # exit 75, in the root group
    except (ConfigError, SchemaOutdated) as exc:
        if piped:
            # An MTA bounces mail on any exit but 75: a broken config or an
            # un-upgraded database is ours to fix, not the sender's problem.
            raise TempFailure(str(exc)) from exc
        raise
    except DBAPIError as exc:
        raise TempFailure(f"store unavailable, try again later: {exc.orig}") from exc
    except (click.ClickException, click.exceptions.Exit):
        raise
    except Exception as exc:
        if piped:  # our bug must not bounce the mail: let the MTA keep it
            raise TempFailure(f"internal error, try again later: {exc!r}") from exc
        raise


def _report_answer(answer: handoff.Answer, as_json: bool) -> None:
    """The daemon's answer to a handed-over mail, as `_report` says what `ingest` did."""
    if 400 <= answer.code < 500:
        raise TempFailure(f"the daemon answered {answer.code} {answer.text}")
    if answer.code != 250:
        raise Failure(f"-: the daemon refused it: {answer.code} {answer.text}")
    tally = _Tally()
    tally.counts[_KINDS[handoff.outcome_of(answer)]] += 1
    _report(tally, as_json)


_KINDS = {"new_tickets": OutcomeKind.NEW_TICKET, "replies": OutcomeKind.REPLY,
          "duplicates": OutcomeKind.DUPLICATE, "quarantined": OutcomeKind.QUARANTINED}


def _report(tally: _Tally, as_json: bool) -> None:
    counts = tally.counts
    summary = {
        "new_tickets": counts[OutcomeKind.NEW_TICKET],
        "replies": counts[OutcomeKind.REPLY],
        "duplicates": counts[OutcomeKind.DUPLICATE],
        "quarantined": counts[OutcomeKind.QUARANTINED],
        "refused": len(tally.refused),
    }
    if as_json:
        emit_json(summary)
    else:
        click.echo(
            f"{summary['new_tickets']} new tickets, {summary['replies']} replies, "
            f"{summary['duplicates']} duplicates, {summary['quarantined']} quarantined"
            + (f", {len(tally.refused)} refused" if tally.refused else "")
        )
    if tally.refused:
        raise Failure("\n".join(tally.refused))


def _run(
    app: AppContext, sources: list[Iterator[tuple[RawSource, Origin]]], total: int,
    envelope_sender: str | None,
) -> _Tally:
    from helpdesk.intake import PreparePool, store_in_batches

    settings = app.settings.intake
    factory = app.sessions()
    ctx = app.ingest_context()
    tally = _Tally()
    workers = max(1, min(settings.workers or os.cpu_count() or 1, total))
    # fork: this command has no threads of its own yet (start_all comes first),
    # and forking costs a few milliseconds where a fresh interpreter costs 100+.
    with click.progressbar(
        length=total,
        label="Ingesting",
        file=sys.stderr,
        hidden=total < PROGRESS_THRESHOLD or not sys.stderr.isatty(),
    ) as bar, PreparePool(workers, time_limit=settings.message_time_limit,
                          start_method="fork").start_all() as pool:
        incoming = _incoming(sources, settings.max_message_bytes, tally, envelope_sender)
        for batch, outcomes in store_in_batches(factory, ctx, incoming, pool,
                                                 batch_max=settings.batch_max):
            tally.counts.update(outcome.kind for outcome in outcomes)
            bar.update(len(batch))
    return tally


def _incoming(sources: list[Iterator[tuple[RawSource, Origin]]], limit: int,
              tally: _Tally, envelope_sender: str | None) -> Iterator[Incoming]:
    for source in sources:
        for read, origin in source:
            try:
                raw = read(limit)
            except _TooLarge as exc:
                where = origin.path or origin.source
                tally.refused.append(f"{where}: too large ({exc.size} bytes; the limit is "
                                     f"{limit} bytes, [intake] max_message_bytes): not ingested")
                continue
            except OSError as exc:
                raise click.FileError(origin.path or origin.source, str(exc)) from exc
            sender = envelope_sender if origin.source == "stdin" else None
            yield Incoming(raw, origin, envelope_sender=sender)
