"""Daemon throughput and latency: an IMAP backlog into the store, and arrivals through IDLE.

What it measures, against a throwaway Dovecot (tests/servers/dovecot.py; its
directory on /dev/shm where that exists) and realistic generated mail
(bench/mailgen.py, seeded):

1. fill (not timed): INBOX gets N messages by MULTIAPPEND in chunks;
2. backlog: a fresh SQLite file under /tmp (WAL, migrated before timing),
   an `ImapSource` (batch_size as configured, processed mail moved) feeding
   the daemon's sink (`helpdesk.sources.base.ingest_sink`: one transaction per
   message), `run_once()` until INBOX is empty. The rate runs from the first
   FETCH to the end of the pass that moved the last message (progress stored).
   The pass is split into IMAP fetch, parse, the rest of ingest with its
   commit, acknowledging (UID MOVE) and the rest (SEARCH, SELECT, lease and
   progress transactions, the loop);
3. file ingest: the same N messages from memory into another fresh store
   through the same sink, one transaction per message (bench/ingest.py's
   path), and the ratio backlog/file;
4. IDLE latency: `ImapSource.run()` in a thread (IDLE, poll interval at its
   default of 60 s as the safety net) while another connection APPENDs
   messages one by one, each after the previous one was committed; the latency
   is APPEND start to the sink's return (commit), per message. Two series of
   `--idle` messages each: "IDLE", every message appended once the source is
   back in IDLE (Dovecot's notification path), and "busy", every message
   appended right after the previous commit, while the source is still
   acknowledging (reported in the answer to the UID MOVE or behind IDLE's
   continuation, not by a notification).

The ingest context is the daemon's (`helpdesk.context.ingest_context`) with the
shipped rules and templates of this checkout (rules/, templates/) and the demo's
teams, so rules run and acknowledgements are queued in the outbox, as
design.md §8 asks ("rules applied"); `--no-rules` uses bench/ingest.py's bare
context instead. Both stores get the same context. The daemon's parse time
limit (a watchdog thread per message) is not applied in either pass.

Targets (2-core machine): backlog >= 200 msg/s and >= 0.7 of the file rate;
IDLE p95 < 1 s (Dovecot delays IDLE notifications by a fixed ~0.5 s). They
are printed as PASS/MISS information; the exit code does not depend on them.
`--profile` runs the backlog pass under cProfile (its rate is then inflated)
and prints the top 20 functions by cumulative time.

Run from the repository root:

    .venv/bin/python bench/daemon.py [--messages 5000] [--idle 200] [--batch-size 100]
                                     [--seed 1] [--no-rules] [--log] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import io
import pstats
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/daemon.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imapclient import IMAPClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bench import mailgen
from bench.ingest import (
    SUPPORT_ADDRESS,
    TimedParse,
    breakdown,
    configure_quiet_or_json,
    filesystem_of,
    fresh_store,
    percentile,
    phase_peak_mb,
    process_peak_mb,
    report_corpus,
    reset_peak,
    rss_mb,
    verdict,
)
from helpdesk import context
from helpdesk.cli.demo import DEMO_CONFIG
from helpdesk.desk import directory
from helpdesk.flow.ingest import IngestContext
from helpdesk.settings import MailboxSettings, load_settings
from helpdesk.sources.base import Sink, ingest_sink
from helpdesk.sources.imap import ImapSource
from helpdesk.store.models import Message, OutboxItem, QuarantineItem
from helpdesk.values import Direction, IngestOutcome, Origin, OutcomeKind
from tests.servers.dovecot import USERS, DovecotServer, available

TARGET_RATE = 200.0  # backlog messages per second
TARGET_RATIO = 0.7  # backlog rate / file-ingest rate
TARGET_IDLE_P95 = 1.0  # seconds, APPEND to commit
PROFILE_LINES = 20
APPEND_CHUNK = 100  # messages per MULTIAPPEND command
IDLE_WAIT = 120.0  # seconds to wait for one IDLE arrival before calling it lost
USER, PASSWORD = next(iter(USERS.items()))
CHECKOUT = Path(__file__).resolve().parent.parent
# IMAP commands by where their time belongs in the backlog split.
IMAP_CATEGORIES = {
    "fetch": "fetch",
    "move": "ack",
    "copy": "ack",
    "add_flags": "ack",
    "uid_expunge": "ack",
    "expunge": "ack",
    "search": "search+select",
    "select_folder": "search+select",
}


# -- timing -----------------------------------------------------------------------------


@dataclass
class Stopwatch:
    """Seconds per category, and when the first FETCH started."""

    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: Counter[str] = field(default_factory=Counter)
    first_fetch: float | None = None

    def wrap(self, category: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            if category == "fetch" and self.first_fetch is None:
                self.first_fetch = t0
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[category] += time.perf_counter() - t0
                self.calls[category] += 1

        return timed


class TimedImapSource(ImapSource):
    """An ImapSource whose IMAP commands are timed (the connection is wrapped when opened)."""

    def __init__(self, *args: Any, stopwatch: Stopwatch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopwatch = stopwatch

    def _open(self) -> Any:
        client = super()._open()
        for name, category in IMAP_CATEGORIES.items():
            setattr(client, name, self.stopwatch.wrap(category, getattr(client, name)))
        return client


def timed_sink(sink: Sink, stopwatch: Stopwatch) -> Sink:
    def run(raw: bytes, origin: Origin) -> IngestOutcome:
        t0 = time.perf_counter()
        try:
            return sink(raw, origin)
        finally:
            stopwatch.seconds["sink"] += time.perf_counter() - t0
            stopwatch.calls["sink"] += 1

    return run


# -- set-up -----------------------------------------------------------------------------


@contextmanager
def dovecot() -> Iterator[DovecotServer]:
    server = DovecotServer()  # its directory is on /dev/shm when that exists
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.cleanup()


def connect(server: DovecotServer) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=60)
    client.login(USER, PASSWORD)
    return client


def fill(server: DovecotServer, folder: str, raws: Sequence[bytes]) -> str:
    """Append every message to `folder`; how it was done."""
    client = connect(server)
    try:
        if client.has_capability("MULTIAPPEND"):
            for start in range(0, len(raws), APPEND_CHUNK):
                client.multiappend(folder, raws[start:start + APPEND_CHUNK])
            return f"MULTIAPPEND, {APPEND_CHUNK} per command"
    finally:
        client.logout()
    connections = 4

    def append_share(share: Sequence[bytes]) -> None:
        own = connect(server)
        try:
            for raw in share:
                own.append(folder, raw)
        finally:
            own.logout()

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(append_share, [raws[i::connections] for i in range(connections)]))
    return f"APPEND (no MULTIAPPEND) on {connections} connections"


def folder_count(client: IMAPClient, folder: str) -> int:
    if not client.folder_exists(folder):
        return 0
    return int(client.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])


def mailbox_settings(server: DovecotServer, batch_size: int) -> MailboxSettings:
    return MailboxSettings.model_validate({
        "name": "support",
        "host": "127.0.0.1",
        "port": server.port,
        "tls": "none",
        "username": USER,
        "password": PASSWORD,
        "batch_size": batch_size,
    })


def context_factory(workdir: Path, rules: bool) -> tuple[Callable[[sessionmaker[Session]],
                                                                  IngestContext], str]:
    """How to build each store's ingest context, and a description of it."""
    if not rules:
        def bare(_sessions: sessionmaker[Session]) -> IngestContext:
            return IngestContext(is_own_address=lambda a: a == SUPPORT_ADDRESS)

        return bare, "bare (store and thread only, no rules: bench/ingest.py's context)"
    config = workdir / "helpdesk.toml"
    config.write_text(DEMO_CONFIG.format(
        db=(workdir / "unused.db").as_posix(),
        rules=(CHECKOUT / "rules").as_posix(),
        templates=(CHECKOUT / "templates").as_posix(),
    ), encoding="utf-8")
    settings = load_settings(config, {})

    def daemons(sessions: sessionmaker[Session]) -> IngestContext:
        # What `helpdesk run` builds at start-up (helpdesk/daemon.py), per store:
        # the teams are mirrored into it and the signing key is stored in it.
        with sessions.begin() as session:
            directory.sync(session, settings.teams, settings.agents)
        with sessions.begin() as session:
            configured = context.load_configured(session, settings)
            return context.ingest_context(session, settings, configured)

    with fresh_store(workdir / "probe.db").begin() as session:
        count = len(context.load_configured(session, settings).rules.rules)
    return daemons, (f"the daemon's, rules applied: {count} shipped rules from "
                     f"{CHECKOUT / 'rules'}, templates from {CHECKOUT / 'templates'}")


def counts(sessions: sessionmaker[Session]) -> tuple[int, int, int]:
    """Incoming messages stored, quarantined items and outbox rows (mail the rules queued)."""
    with sessions() as session:
        incoming = session.scalar(select(func.count()).select_from(Message)
                                  .where(Message.direction == Direction.INCOMING))
        quarantined = session.scalar(select(func.count()).select_from(QuarantineItem))
        queued = session.scalar(select(func.count()).select_from(OutboxItem))
        return incoming or 0, quarantined or 0, queued or 0


# -- passes -----------------------------------------------------------------------------


@dataclass
class BacklogResult:
    seconds: float  # first FETCH to the end of the last pass that moved mail
    wall_seconds: float  # with connect, login and the final empty pass
    passes: int
    stopwatch: Stopwatch
    parse_seconds: float
    stats: dict[str, object]
    start_rss_mb: float
    peak_rss_mb: float | None
    left_in_inbox: int
    processed: int
    failed: int


def backlog_pass(server: DovecotServer, sessions: sessionmaker[Session], ctx: IngestContext,
                 batch_size: int, profiler: cProfile.Profile | None) -> BacklogResult:
    stopwatch = Stopwatch()
    timed_parse = TimedParse()
    sink = timed_sink(ingest_sink(sessions, dataclasses.replace(ctx, parse=timed_parse)),
                      stopwatch)
    source = TimedImapSource(mailbox_settings(server, batch_size), sink, sessions,
                             holder="bench-backlog", stopwatch=stopwatch)
    gc.collect()
    start_rss = rss_mb()
    can_reset = reset_peak()
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    ended = started
    passes = 0
    try:
        while passes < 100:
            processed = source.run_once()
            passes += 1
            if processed == 0:
                break
            ended = time.perf_counter()
    finally:
        wall = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
        source.close()
    peak = phase_peak_mb() if can_reset else None
    client = connect(server)
    try:
        left = folder_count(client, "INBOX")
        moved = folder_count(client, "Processed")
        failed = folder_count(client, "Failed")
    finally:
        client.logout()
    first_fetch = stopwatch.first_fetch if stopwatch.first_fetch is not None else started
    return BacklogResult(
        seconds=ended - first_fetch, wall_seconds=wall, passes=passes, stopwatch=stopwatch,
        parse_seconds=timed_parse.seconds, stats=source.stats.as_dict(),
        start_rss_mb=start_rss, peak_rss_mb=peak, left_in_inbox=left, processed=moved,
        failed=failed,
    )


@dataclass
class FileResult:
    seconds: float
    parse_seconds: float
    outcomes: Counter[OutcomeKind]


def file_pass(raws: Sequence[bytes], sessions: sessionmaker[Session],
              ctx: IngestContext) -> FileResult:
    timed_parse = TimedParse()
    sink = ingest_sink(sessions, dataclasses.replace(ctx, parse=timed_parse))
    outcomes: Counter[OutcomeKind] = Counter()
    gc.collect()
    started = time.perf_counter()
    for i, raw in enumerate(raws):
        outcomes[sink(raw, Origin(source="bench", path=str(i))).kind] += 1
    return FileResult(time.perf_counter() - started, timed_parse.seconds, outcomes)


class CommitLog:
    """A sink wrapper recording when each UID's transaction committed (the sink returned)."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._done = threading.Condition()
        self.committed: dict[int, float] = {}

    def __call__(self, raw: bytes, origin: Origin) -> IngestOutcome:
        outcome = self._sink(raw, origin)
        now = time.perf_counter()
        with self._done:
            if origin.uid is not None:
                self.committed[origin.uid] = now
            self._done.notify_all()
        return outcome

    def wait(self, uid: int, timeout: float) -> float | None:
        with self._done:
            self._done.wait_for(lambda: uid in self.committed, timeout)
            return self.committed.get(uid)


class WatchedSource(ImapSource):
    """An ImapSource that notes when it entered IDLE and when an IDLE check returned news."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idling = threading.Condition()
        self.idles = 0  # IDLE commands the server accepted
        self.wakes: list[float] = []

    def _open(self) -> Any:
        client = super()._open()
        idle, idle_check = client.idle, client.idle_check

        def entering(*args: Any, **kwargs: Any) -> Any:
            answer = idle(*args, **kwargs)
            with self.idling:
                self.idles += 1
                self.idling.notify_all()
            return answer

        def noting(*args: Any, **kwargs: Any) -> Any:
            responses = idle_check(*args, **kwargs)
            if responses:
                self.wakes.append(time.perf_counter())
            return responses

        client.idle, client.idle_check = entering, noting
        return client

    def wait_idle(self, after: int, timeout: float) -> bool:
        """Wait until the source entered IDLE more than `after` times."""
        with self.idling:
            return self.idling.wait_for(lambda: self.idles > after, timeout)


@dataclass
class Arrivals:
    """One series of messages appended one by one."""

    label: str
    latencies: list[float] = field(default_factory=list)  # APPEND start to commit, seconds
    notified: list[float] = field(default_factory=list)  # APPEND start to an IDLE wake
    appends: list[float] = field(default_factory=list)  # the APPEND command itself
    lost: int = 0


APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")


def idle_pass(server: DovecotServer, sessions: sessionmaker[Session], ctx: IngestContext,
              idling: Sequence[bytes], busy: Sequence[bytes]) -> list[Arrivals]:
    """`run()` in a thread; messages appended one by one, in two series.

    `idling`: each once the previous one was committed and the source is back
    in IDLE, the path the 0.5 s Dovecot notification delay applies to.
    `busy`: each as soon as the previous one was committed, while the source
    is still acknowledging it (UID MOVE, progress): new mail reported in the
    answer to a command, not through IDLE.
    """
    commits = CommitLog(ingest_sink(sessions, ctx))
    source = WatchedSource(mailbox_settings(server, 100), commits, sessions, holder="bench-idle")
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,), name="imap-source", daemon=True)
    thread.start()
    client = connect(server)
    series = [Arrivals("IDLE"), Arrivals("busy")]
    try:
        if not source.wait_idle(0, 30):
            raise RuntimeError("the source did not enter IDLE within 30 s")
        for arrivals, raws in zip(series, (idling, busy), strict=True):
            for raw in raws:
                append_one(client, raw, arrivals, commits, source)
    finally:
        stop.set()
        thread.join(15)
        client.logout()
    return series


def append_one(client: IMAPClient, raw: bytes, arrivals: Arrivals, commits: CommitLog,
               source: WatchedSource) -> None:
    idles = source.idles
    started = time.perf_counter()
    answer = client.append("INBOX", raw)
    appended = time.perf_counter()
    match = APPENDUID.search(answer if isinstance(answer, bytes) else b"")
    if match is None:
        raise RuntimeError(f"no APPENDUID in the APPEND answer: {answer!r}")
    committed = commits.wait(int(match.group(1)), IDLE_WAIT)
    if committed is None:
        arrivals.lost += 1
        return
    arrivals.latencies.append(committed - started)
    arrivals.appends.append(appended - started)
    wakes = [w for w in source.wakes if started <= w <= committed]
    if wakes:
        arrivals.notified.append(wakes[0] - started)
    if arrivals.label == "IDLE":
        # Back in IDLE before the next arrival (it was there before this one).
        source.wait_idle(idles, 10)


# -- reporting --------------------------------------------------------------------------


def report_backlog(result: BacklogResult, n: int, bytes_total: int) -> float:
    rate = n / result.seconds
    sw = result.stopwatch
    print(f"backlog      {rate:8.0f} msg/s  ({n} in {result.seconds:.2f} s from the first FETCH "
          f"to the last commit with its mail moved; {result.wall_seconds:.2f} s with connect, "
          f"login and {result.passes} passes)   target >= {TARGET_RATE:.0f}: "
          f"{verdict(rate >= TARGET_RATE)}")
    print(f"             {bytes_total / 2**20 / result.seconds:.1f} MB/s; "
          f"{sw.calls['fetch']} FETCH commands, {sw.calls['ack']} acknowledgement commands; "
          f"INBOX left {result.left_in_inbox}, Processed {result.processed}, "
          f"Failed {result.failed}")
    stats = result.stats
    print(f"             source counters: fetched {stats['fetched']}, ingested "
          f"{stats['ingested']}, duplicates {stats['duplicates']}, quarantined "
          f"{stats['quarantined']}, errors {stats['errors']}")
    peak = max(process_peak_mb(), result.peak_rss_mb or 0.0)
    line = f"peak RSS     {peak:8.0f} MB  whole process"
    if result.peak_rss_mb is not None:
        line += (f"; {result.peak_rss_mb:.0f} MB during the backlog pass "
                 f"({result.start_rss_mb:.0f} MB at its start, corpus and imports included)")
    print(line)
    return rate


def report_split(result: BacklogResult, n: int) -> None:
    sw = result.stopwatch
    total = result.wall_seconds
    parts = {
        "IMAP FETCH (BODY.PEEK[], batches)": sw.seconds["fetch"],
        "parse (helpdesk.mail.parse inside ingest)": result.parse_seconds,
        "store: rest of ingest + rules + COMMIT": sw.seconds["sink"] - result.parse_seconds,
        "acknowledge (UID MOVE per batch)": sw.seconds["ack"],
        "IMAP SEARCH + SELECT": sw.seconds["search+select"],
    }
    parts["the rest: connect, lease, progress, loop"] = total - sum(parts.values())
    print(f"where the backlog time goes ({total:.2f} s wall, stopwatches around each call):")
    for label, seconds in parts.items():
        print(f"  {label:44} {seconds:7.2f} s  {100 * seconds / total:5.1f}%  "
              f"{1000 * seconds / n:6.2f} ms/msg")


def report_idle(series: Sequence[Arrivals]) -> None:
    explain = {
        "IDLE": "each once the previous one was committed and the source idled again",
        "busy": "each right after the previous commit, the source still acknowledging it",
    }
    for arrivals in series:
        count = len(arrivals.latencies) + arrivals.lost
        if not arrivals.latencies:
            print(f"{arrivals.label + ' ms':12} no arrival committed ({arrivals.lost} lost)")
            continue
        lat = sorted(arrivals.latencies)
        p95 = percentile(lat, 95)
        print(f"{arrivals.label + ' ms':12} p50 {1000 * percentile(lat, 50):.0f}  "
              f"p95 {1000 * p95:.0f}  max {1000 * lat[-1]:.0f}   "
              f"target p95 < {1000 * TARGET_IDLE_P95:.0f}: {verdict(p95 < TARGET_IDLE_P95)}")
        print(f"             APPEND start to commit; {count} appended one by one, "
              f"{explain[arrivals.label]}; {arrivals.lost} not committed within "
              f"{IDLE_WAIT:.0f} s")
        appends = sorted(arrivals.appends)
        line = (f"             the APPEND itself p50 {1000 * percentile(appends, 50):.1f} ms; "
                f"{len(arrivals.notified)} of {len(lat)} woke the source through IDLE")
        if arrivals.notified:
            notified = sorted(arrivals.notified)
            line += (f", APPEND start to notification p50 "
                     f"{1000 * percentile(notified, 50):.0f} ms (Dovecot's fixed ~500 ms)")
        print(line)


def report_profile(profiler: cProfile.Profile) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(PROFILE_LINES)
    print(out.getvalue().rstrip())
    print()
    for line in breakdown(stats):
        print(line.replace("ingest time", "backlog time"))


# -- main -------------------------------------------------------------------------------


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="backlog size (default 5000)")
    parser.add_argument("--idle", type=int, default=200,
                        help="messages appended one by one in each of the two latency "
                             "series (default 200)")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="the mailbox's batch_size (default 100, the configured default)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--no-rules", action="store_true",
                        help="bare ingest context, as bench/ingest.py (default: shipped rules)")
    parser.add_argument("--log", action="store_true", help="render JSON logs to /dev/null")
    parser.add_argument("--profile", action="store_true", help="cProfile the backlog pass")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.idle < 0:
        parser.error("--messages must be at least 1 and --idle at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    if not available():
        print("dovecot not found (apt-get install dovecot-imapd)", file=sys.stderr)
        return 1
    logging_mode = configure_quiet_or_json(args.log)
    rss_before = rss_mb()
    started = time.perf_counter()
    # generate() is sequential: the first N of N + 2 * idle are generate(N).
    everything = mailgen.generate(args.messages + 2 * args.idle, seed=args.seed)
    raws, arrivals = everything[: args.messages], everything[args.messages:]
    report_corpus(raws, time.perf_counter() - started, rss_before)
    workdir = Path(tempfile.mkdtemp(prefix="helpdesk-bench-daemon-", dir="/tmp"))
    try:
        make_context, context_text = context_factory(workdir, not args.no_rules)
        print(f"context      {context_text}")
        print(f"logging      {logging_mode}")
        with dovecot() as server:
            return run(args, server, workdir, raws, arrivals, make_context)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, server: DovecotServer, workdir: Path, raws: list[bytes],
        arrivals: list[bytes], make_context: Callable[[sessionmaker[Session]],
                                                      IngestContext]) -> int:
    n = len(raws)
    t0 = time.perf_counter()
    how = fill(server, "INBOX", raws)
    filled = time.perf_counter() - t0
    print(f"dovecot      port {server.port}, dir {server.dir} on {filesystem_of(server.dir)}")
    print(f"fill         {n} messages into INBOX in {filled:.1f} s ({n / filled:.0f} msg/s, "
          f"{how}; untimed)")
    # Warm the parser's and the ORM's lazy imports and caches for both passes alike.
    warm = fresh_store(workdir / "warm.db")
    file_pass(raws[: min(20, n)], warm, make_context(warm))

    backlog_db = workdir / "backlog.db"
    backlog_store = fresh_store(backlog_db)
    backlog_ctx = make_context(backlog_store)
    print(f"store        {workdir} on {filesystem_of(backlog_db)}; SQLite WAL, one "
          f"transaction per message; batch_size {args.batch_size}")
    profiler = cProfile.Profile() if args.profile else None
    backlog = backlog_pass(server, backlog_store, backlog_ctx, args.batch_size, profiler)
    stored = counts(backlog_store)

    file_store = fresh_store(workdir / "file.db")
    from_file = file_pass(raws, file_store, make_context(file_store))
    file_stored = counts(file_store)

    if profiler is not None:
        print("NOTE         the backlog ran under cProfile: its rate is inflated")
    rate = report_backlog(backlog, n, sum(len(r) for r in raws))
    file_rate = n / from_file.seconds
    print(f"file ingest  {file_rate:8.0f} msg/s  ({n} in {from_file.seconds:.2f} s, from memory, "
          f"same sink and context; parse {1000 * from_file.parse_seconds / n:.2f} ms/msg)")
    ratio = rate / file_rate
    print(f"ratio        {ratio:8.2f}  backlog/file   target >= {TARGET_RATIO}: "
          f"{verdict(ratio >= TARGET_RATIO)}")
    outcomes = ", ".join(f"{k.value} {from_file.outcomes.get(k, 0)}" for k in OutcomeKind)
    print(f"stored       backlog: {stored[0]} incoming messages, {stored[1]} quarantined, "
          f"{stored[2]} mails queued by rules; file: {file_stored[0]}, {file_stored[1]}, "
          f"{file_stored[2]} ({outcomes})")
    report_split(backlog, n)
    if profiler is not None:
        print()
        report_profile(profiler)

    if arrivals:
        print()
        half = len(arrivals) // 2
        report_idle(idle_pass(server, backlog_store, backlog_ctx, arrivals[:half],
                              arrivals[half:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
