"""`helpdesk ingest`: files, stdin (an MTA pipe), a Maildir or an mbox into tickets."""

from __future__ import annotations

import functools
import itertools
import mailbox
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from helpdesk.cli import AppContext, TempFailure, pass_app
from helpdesk.cli.output import emit_json
from helpdesk.errors import ConfigError, SchemaOutdated
from helpdesk.ingest import ingest as ingest_message
from helpdesk.values import Origin, OutcomeKind

# Show a progress bar when there is more than a screenful of mail to go through.
PROGRESS_THRESHOLD = 20

RawSource = Callable[[], bytes]


def _from_files(paths: tuple[str, ...]) -> Iterator[tuple[RawSource, Origin]]:
    for name in paths:
        if name == "-":
            yield (lambda: sys.stdin.buffer.read()), Origin(source="stdin")
        else:
            path = Path(name)
            yield path.read_bytes, Origin(source="file", path=str(path))


def _from_maildir(root: Path) -> Iterator[tuple[RawSource, Origin]]:
    # Read-only import: `cur/` and `new/` alike. Moving new/ to cur/ after commit
    # is the job of the Maildir source in the daemon.
    for sub in ("cur", "new"):
        folder = root / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                yield path.read_bytes, Origin(source="maildir", path=str(path))


def _from_mbox(path: Path) -> tuple[int, Iterator[tuple[RawSource, Origin]]]:
    box = mailbox.mbox(str(path), create=False)

    def each() -> Iterator[tuple[RawSource, Origin]]:
        try:
            for key in box.iterkeys():
                yield functools.partial(box.get_bytes, key), Origin("mbox", path=f"{path}#{key}")
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
@pass_app
def ingest(
    app: AppContext, files: tuple[str, ...], maildir: Path | None, mbox: Path | None, as_json: bool
) -> None:
    """Turn mail into tickets: FILE ..., `-` or nothing for one message on stdin.

    Exits 75 (EX_TEMPFAIL) when the store is unavailable, so an MTA retries.
    Unparseable mail is quarantined, not rejected: see `helpdesk quarantine list`.
    """
    total = 0
    sources: list[Iterator[tuple[RawSource, Origin]]] = []
    if files:
        total += len(files)
        sources.append(_from_files(files))
    if maildir:
        listed = list(_from_maildir(maildir))
        total += len(listed)
        sources.append(iter(listed))
    if mbox:
        count, each = _from_mbox(mbox)
        total += count
        sources.append(each)
    if not sources:
        if sys.stdin.isatty():
            raise click.UsageError("no input: give FILE ..., `-`, --maildir or --mbox")
        total = 1
        sources.append(_from_files(("-",)))

    try:
        counts = _run(app, itertools.chain.from_iterable(sources), total)
    except (ConfigError, SchemaOutdated) as exc:
        if "-" in files or (not files and not maildir and not mbox):
            # An MTA bounces mail on any exit but 75: a broken config or an
            # un-upgraded database is ours to fix, not the sender's problem.
            raise TempFailure(str(exc)) from exc
        raise
    summary = {
        "new_tickets": counts[OutcomeKind.NEW_TICKET],
        "replies": counts[OutcomeKind.REPLY],
        "duplicates": counts[OutcomeKind.DUPLICATE],
        "quarantined": counts[OutcomeKind.QUARANTINED],
    }
    if as_json:
        emit_json(summary)
    else:
        click.echo(
            f"{summary['new_tickets']} new tickets, {summary['replies']} replies, "
            f"{summary['duplicates']} duplicates, {summary['quarantined']} quarantined"
        )


def _run(
    app: AppContext, items: Iterator[tuple[RawSource, Origin]], total: int
) -> Counter[OutcomeKind]:
    factory = app.sessions()
    ctx = app.ingest_context()
    counts: Counter[OutcomeKind] = Counter()
    with click.progressbar(
        items,
        length=total,
        label="Ingesting",
        file=sys.stderr,
        hidden=total < PROGRESS_THRESHOLD or not sys.stderr.isatty(),
    ) as bar:
        for read, origin in bar:
            try:
                raw = read()
            except OSError as exc:
                raise click.FileError(origin.path or origin.source, str(exc)) from exc
            # One message, one transaction: a crash loses at most the one in hand.
            with factory.begin() as session:
                outcome = ingest_message(session, raw, origin, ctx)
            counts[outcome.kind] += 1
    return counts
