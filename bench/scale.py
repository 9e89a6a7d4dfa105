"""PostgreSQL at a million tickets: every command a person runs, timed as a whole process.

What it does:

1. a throwaway PostgreSQL cluster in a temporary directory on disk (default
   settings, fsync on: a production server's figures, not the test
   fixtures'), or `--url` of an empty database you give it;
2. fills it by SQL (INSERT ... SELECT generate_series, not the ingest path;
   bench/scale_fill.py) with `--tickets` tickets (1,000,000) and about three
   messages each, one ticket with 50 messages, tags, participants, an event
   per ticket, sent mail in the outbox and some quarantine; then VACUUM
   ANALYZE, as autovacuum would have;
3. times, median of `--runs` whole `helpdesk` processes each (start-up
   included, as a person waits for it): `tickets list` unfiltered and with
   each filter, `tickets show` of the 50-message ticket, `tickets search`
   (when the command exists), `stats` piped and `stats --json` (which, like
   `stats` at a terminal, adds the day-by-day series), `quarantine list`,
   `outbox list`;
   the ticket list's query alone in-process too (start-up is another
   helper's work and hides it); a timer pass (`timers.run` with the shipped
   timers, in a child process; the first pass after the fill computes every
   open ticket's deadline and is shown apart); and `helpdesk ingest` of 200
   new mails (a third reply to messages deep in the table) into the big store
   and into an empty one in the same cluster;
4. with `--baseline SRC` (a tree of the code to compare with, e.g.
   `git archive main | tar -x -C /tmp/main-src`), clones the filled database,
   migrates the clone down to that code's schema and times the same commands
   with that code, in the same run: the two sides take turns, process by
   process, so that the machine's moods fall on both alike (a command that
   code lacks shows its exit instead of a time).

Every figure is printed beside its target: each command under 0.5 s at a
million tickets; ingest at least 200 msg/s and at least 0.8 of its rate into
an empty store. The exit code does not depend on them.

    .venv/bin/python bench/scale.py [--tickets 1000000] [--runs 5] [--url URL]
                                    [--baseline /tmp/main-src] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/scale.py`
    sys.path.insert(0, str(ROOT))

from bench._common import byte_compile  # noqa: E402
from bench.scale_fill import (  # noqa: E402
    INGEST_MAILS,
    Cluster,
    create_database,
    fill,
    ingest_mails,
    write_config,
)

TARGET_SECONDS = 0.5
TARGET_INGEST_RATE = 200.0
TARGET_INGEST_RATIO = 0.8


# -- child processes -----------------------------------------------------------------------


def child_env(source: str | None) -> dict[str, str]:
    """The environment of a child running `source`'s helpdesk (None: this tree's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELPDESK_")}
    env["PYTHONPATH"] = source or str(ROOT)
    return env


def helpdesk(config: Path, args: Sequence[str], *, source: str | None
             ) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """One `helpdesk --config CONFIG ARGS...` process: its wall time and result."""
    cmd = [sys.executable, "-m", "helpdesk", "--config", str(config), *args]
    started = time.perf_counter()
    # cwd outside any source tree: `-m` puts the working directory first on sys.path.
    done = subprocess.run(cmd, capture_output=True, env=child_env(source),
                          cwd=tempfile.gettempdir())
    return time.perf_counter() - started, done


def python(code: str, args: Sequence[str], *, source: str | None) -> Any:
    """Run `code` in a child with `source`'s helpdesk; the JSON on its last output line."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=child_env(source), cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise RuntimeError(f"child failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def migrate_and_sync(config: Path, source: str | None = None) -> None:
    """The schema at the code's head and the directory mirrored, by that code's CLI."""
    for args in (("db", "upgrade"), ("teams", "list")):
        _, done = helpdesk(config, args, source=source)
        if done.returncode != 0:
            raise RuntimeError(f"helpdesk {' '.join(args)}: {done.stderr.decode()[-500:]}")


HEAD_REVISION = "from helpdesk.store.db import head_revision; import json; " \
                "print(json.dumps(head_revision()))"

TIMER_PASSES = """
import json, sys, time
from helpdesk import context
from helpdesk.desk import timers
from helpdesk.settings import load_settings
from helpdesk.store.db import make_engine, make_session_factory
from helpdesk.store.models import utcnow
settings = load_settings(sys.argv[1], {})
sessions = make_session_factory(make_engine(settings.database.url))
with sessions.begin() as session:
    ctx = context.ingest_context(session, settings, context.load_configured(session, settings))
results = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    with sessions.begin() as session:
        fired = timers.run(session, ctx.rules.timers, ctx.actions, utcnow())
    results.append([time.perf_counter() - started, len(fired)])
print(json.dumps(results))
"""

LIST_QUERIES = """
import json, statistics, sys, time
from datetime import datetime
from helpdesk.settings import load_settings
try:
    from helpdesk.store import listing
except ImportError:  # a baseline from before the listing had a module of its own
    from helpdesk.store import queries as listing
from helpdesk.store.db import make_engine, make_session_factory
settings = load_settings(sys.argv[1], {})
sessions = make_session_factory(make_engine(settings.database.url))
out = {}
for label, kwargs in json.loads(sys.argv[3]).items():
    if "since" in kwargs:
        kwargs["since"] = datetime.fromisoformat(kwargs["since"])
    try:
        chosen = listing.TicketFilter(**kwargs)
    except TypeError:  # a baseline whose listing has no such filter
        continue
    times = []
    for _ in range(int(sys.argv[2]) + 1):  # the first warms the cache
        started = time.perf_counter()
        with sessions() as session:
            rows = listing.list_tickets(session, chosen)
        times.append(time.perf_counter() - started)
    out[label] = [statistics.median(times[1:]), len(rows)]
print(json.dumps(out))
"""


# -- what is timed -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A command; `filters`: the same as `listing.TicketFilter` keywords for the SQL alone."""

    label: str
    args: tuple[str, ...]
    filters: Mapping[str, Any] | None = None

    @property
    def listing(self) -> bool:
        return self.filters is not None


def list_case(label: str, args: tuple[str, ...], filters: dict[str, Any]) -> Case:
    return Case(label, ("tickets", "list", *args), filters)


def cases(tickets: int, search: bool) -> list[Case]:
    week = (datetime.now(UTC) - timedelta(days=7)).isoformat()
    listing = [
        list_case("tickets list", (), {}),
        list_case("tickets list --status new --status open", (
            "--status", "new", "--status", "open"), {"status": ["new", "open"]}),
        list_case("tickets list --team networking", ("--team", "networking"),
                  {"team": "networking"}),
        list_case("tickets list --assignee agent3@...", ("--assignee", "agent3@example.com"),
                  {"assignee": "agent3@example.com"}),
        list_case("tickets list --requester user77@...",
                  ("--requester", "user77@dept77.example.com"),
                  {"requester": "user77@dept77.example.com"}),
        list_case("tickets list --tag vpn", ("--tag", "vpn"), {"tags": ["vpn"]}),
        list_case("tickets list --tag vpn --tag remote", ("--tag", "vpn", "--tag", "remote"),
                  {"tags": ["vpn", "remote"]}),
        list_case("tickets list --tag mfa (rarer)", ("--tag", "mfa"), {"tags": ["mfa"]}),
        list_case("tickets list --priority urgent", ("--priority", "urgent"),
                  {"priority": "urgent"}),
        list_case("tickets list --since 7d", ("--since", "7d"), {"since": week}),
        list_case("tickets list --unassigned", ("--unassigned",), {"unassigned": True}),
        list_case("tickets list --subject printer", ("--subject", "printer"),
                  {"subject": "printer"}),
        list_case("tickets list --subject (no match)",
                  ("--subject", "no such words"), {"subject": "no such words"}),
        list_case("tickets list --status pending --unassigned --priority high",
                  ("--status", "pending", "--unassigned", "--priority", "high"),
                  {"status": ["pending"], "unassigned": True, "priority": "high"}),
    ]
    others = [
        Case("tickets show (50 messages)", ("tickets", "show", str(tickets // 2))),
        Case("stats", ("stats",)),
        # At a terminal (and with --json or --html) stats draws the day-by-day series too.
        Case("stats --json (as at a terminal)", ("stats", "--json")),
        Case("stats --tag vpn --since 7d", ("stats", "--tag", "vpn", "--since", "7d")),
        Case("quarantine list", ("quarantine", "list")),
        Case("outbox list", ("outbox", "list")),
    ]
    if search:
        others.insert(1, Case("tickets search vpn", ("tickets", "search", "vpn")))
    return listing + others


@dataclass(frozen=True)
class Timing:
    median: float | None
    note: str = ""


def time_commands(sides: Sequence[tuple[Path, str | None]], args: Sequence[str],
                  runs: int) -> list[Timing]:
    """Median wall time of `runs` processes on each side (config, source), after one each
    that warms the caches; the sides take turns, so that the machine's moods (this VM's
    speed moves by 10-15% within minutes) fall on both alike."""
    for config, source in sides:
        helpdesk(config, args, source=source)
    times: list[list[float]] = [[] for _ in sides]
    notes = [""] * len(sides)
    for _ in range(runs):
        for index, (config, source) in enumerate(sides):
            if notes[index]:
                continue
            seconds, done = helpdesk(config, args, source=source)
            if done.returncode != 0:
                reason = (done.stderr or done.stdout).decode(errors="replace").strip()
                last = reason.splitlines()[-1][:60] if reason else ""
                notes[index] = f"exit {done.returncode}: {last}"
            times[index].append(seconds)
    return [Timing(None, note) if note else Timing(statistics.median(taken))
            for taken, note in zip(times, notes, strict=True)]


@dataclass
class Figures:
    """Everything measured for one code tree."""

    startup: Timing | None = None
    commands: dict[str, Timing] = field(default_factory=dict)
    queries: dict[str, tuple[float, int]] = field(default_factory=dict)
    passes: list[tuple[float, int]] = field(default_factory=list)
    ingest: tuple[float, float] | None = None  # seconds into the big store, the empty one


def measure_commands(sides: Sequence[tuple[Path, str | None]], runs: int, search: bool,
                     tickets: int) -> list[Figures]:
    """Start-up and every command, on each side (config, source) by turns."""
    figures = [Figures() for _ in sides]
    for side, timing in zip(figures, time_commands(sides, ("--version",), runs), strict=True):
        side.startup = timing
    for case in cases(tickets, search):
        for side, timing in zip(figures, time_commands(sides, case.args, runs), strict=True):
            side.commands[case.label] = timing
        print(f"  timed: {case.label}", flush=True)
    return figures


def measure(figures: Figures, config: Path, empty: Path, paths: Sequence[Path], runs: int,
            source: str | None, search: bool, tickets: int) -> Figures:
    """The rest, for one side: the list queries in-process, timer passes, ingest."""
    filters = {c.label: dict(c.filters) for c in cases(tickets, search)
               if c.filters is not None}
    figures.queries = {k: (v[0], v[1]) for k, v in python(
        LIST_QUERIES, [str(config), str(runs), json.dumps(filters)], source=source).items()}
    figures.passes = [(s, n) for s, n in python(TIMER_PASSES, [str(config), str(runs + 1)],
                                                 source=source)]
    big, _ = helpdesk(config, ("ingest", "--json", *map(str, paths)), source=source)
    small, _ = helpdesk(empty, ("ingest", "--json", *map(str, paths)), source=source)
    figures.ingest = (big, small)
    return figures


# -- the run -------------------------------------------------------------------------------


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5, help="processes per figure (median)")
    parser.add_argument("--url", help="an empty PostgreSQL database to fill (default: a "
                        "throwaway cluster); its server must allow CREATE DATABASE")
    parser.add_argument("--baseline", metavar="SRC",
                        help="source tree of the code to compare with, timed in the same run")
    parser.add_argument("--workdir", type=Path, help="where the cluster lives (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster and files")
    return parser.parse_args(argv)


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[tuple[str, Path]]:
    """The big store's URL, and a working directory."""
    workdir = Path(tempfile.mkdtemp(prefix="helpdesk-scale-", dir=args.workdir))
    cluster = None
    try:
        if args.url:
            url = args.url
        else:
            cluster = Cluster(workdir)
            cluster.start()
            url = cluster.url("big")
            create_database(url)
        yield url, workdir
    finally:
        if cluster is not None and not args.keep:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept: {workdir}")


def sibling(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def prepare_baseline(url: str, workdir: Path, source: str) -> tuple[Path, Path]:
    """A clone of the filled store at the baseline's schema, and an empty one; their configs."""
    from alembic import command

    from helpdesk.store.db import alembic_config, make_engine

    clone = sibling(url, "baseline")
    create_database(clone, template=url.rsplit("/", 1)[1])
    engine = make_engine(clone)
    command.downgrade(alembic_config(engine), python(HEAD_REVISION, [], source=source))
    engine.dispose()
    empty = sibling(url, "baseline_empty")
    create_database(empty)
    configs = (write_config(workdir, "baseline", clone),
               write_config(workdir, "baseline_empty", empty))
    migrate_and_sync(configs[1], source)
    return configs


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    with database(args) as (url, workdir):
        big = write_config(workdir, "big", url)
        print(f"PostgreSQL {url.rsplit('@', 1)[1]}, {args.tickets:,} tickets", flush=True)
        migrate_and_sync(big)
        print(f"filled in {fill(url, args.tickets):.0f} s", flush=True)
        paths = ingest_mails(url, args.tickets, workdir)
        empty_url = sibling(url, "empty")
        create_database(empty_url)
        empty = write_config(workdir, "empty", empty_url)
        migrate_and_sync(empty)
        byte_compile(ROOT)
        if args.baseline:
            byte_compile(Path(args.baseline))
        baseline = prepare_baseline(url, workdir, args.baseline) if args.baseline else None
        _, done = helpdesk(big, ("tickets", "--help"), source=None)
        search = "  search " in done.stdout.decode(errors="replace")
        sides: list[tuple[Path, str | None]] = [(big, None)]
        if baseline:
            sides.append((baseline[0], args.baseline))
        timed = measure_commands(sides, args.runs, search, args.tickets)
        after = measure(timed[0], big, empty, paths, args.runs, None, search, args.tickets)
        before = (measure(timed[1], baseline[0], baseline[1], paths, args.runs, args.baseline,
                          search, args.tickets) if baseline else None)
        report(args, after, before, search)
    return 0


# -- the report ----------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return f"{value:8.3f} s" if value is not None else "       -  "


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(args: argparse.Namespace, after: Figures, before: Figures | None,
           search: bool) -> None:
    print()
    print(f"{args.tickets:,} tickets on PostgreSQL; whole processes, median of {args.runs}; "
          f"target under {TARGET_SECONDS} s each")
    print(f"{'command':<58}{'this code':>11}{'baseline' if before else '':>11}   target")
    assert after.startup is not None
    base_start = before.startup.median if before and before.startup else None
    print(f"{'helpdesk --version (start-up alone, no target here)':<58}"
          f"{_s(after.startup.median)}{_s(base_start) if before else ''}")
    for label, timing in after.commands.items():
        old = before.commands.get(label) if before else None
        shown = _s(old.median) if old else "   (none) "
        ok = timing.median is not None and timing.median < TARGET_SECONDS
        notes = [timing.note, f"baseline {old.note}" if old and old.note else ""]
        print(f"{label:<58}{_s(timing.median)}{shown if before else ''}   "
              f"{_verdict(ok)} {'; '.join(n for n in notes if n)}")
    if not search:
        print("tickets search: not timed, this code has no such command")

    print()
    print("The ticket list's query alone (listing.list_tickets in-process, median of "
          f"{args.runs}, after a warm-up): rows, seconds")
    for label, (seconds, rows) in after.queries.items():
        kept = before.queries.get(label) if before else None
        base = f"{_s(kept[0])}" if kept else ("   (none) " if before else "")
        print(f"{label:<58}{_s(seconds)}{base}   {rows} rows")

    first, steady = after.passes[0], after.passes[1:]
    steady_s = statistics.median(s for s, _ in steady)
    print()
    print("Timer pass: timers.run over the store with the shipped timers, in one transaction")
    print(f"  first pass after the fill (computes every open ticket's deadline): "
          f"{first[0]:.3f} s, {first[1]} fired")
    line = f"  steady pass, median of {len(steady)}: {steady_s:.3f} s"
    if before and before.passes:
        base_steady = statistics.median(s for s, _ in before.passes[1:] or before.passes)
        line += f"; baseline (reads every candidate ticket): {base_steady:.3f} s"
    print(f"{line}   {_verdict(steady_s < TARGET_SECONDS)} (target {TARGET_SECONDS} s)")

    print()
    print(f"helpdesk ingest of {INGEST_MAILS} mails (a third reply deep in the table): one "
          "process each, start-up included")
    for name, figures in (("this code", after), ("baseline", before)):
        if figures is None or figures.ingest is None:
            continue
        big, empty = figures.ingest
        rate, empty_rate = INGEST_MAILS / big, INGEST_MAILS / empty
        print(f"  {name}: big store {rate:6.1f} msg/s "
              f"{_verdict(rate >= TARGET_INGEST_RATE)} (target {TARGET_INGEST_RATE:.0f}); "
              f"empty store {empty_rate:6.1f} msg/s; ratio {rate / empty_rate:.2f} "
              f"{_verdict(rate / empty_rate >= TARGET_INGEST_RATIO)} "
              f"(target {TARGET_INGEST_RATIO})")


if __name__ == "__main__":
    sys.exit(main())
