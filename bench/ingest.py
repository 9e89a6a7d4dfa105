"""Ingest throughput: how many mails per second one process parses and stores.

What it measures, on realistic generated mail (bench/mailgen.py, seeded):

1. generation (not timed): the corpus is held in memory; its size is printed
   so that it can be told apart from the memory ingest itself needs;
2. parse only: `helpdesk.mail.parse.parse(raw)` over every message, one thread;
3. ingest: a fresh SQLite file (by default in a temporary directory under
   /tmp, a real disk, not /dev/shm), migrated before timing starts, then one
   transaction per message, exactly as the daemon does it:
   `with factory.begin() as session: ingest(session, raw, origin, ctx)`.
   Every message is timed on its own (commit included) for the latency
   percentiles, and split into parse (the project's parse, passed in through
   `IngestContext.parse` with a stopwatch around it), the rest of ingest()
   and leaving the transaction (COMMIT, closing the connection).

It prints rates, latencies, outcome counts, the ingest/parse ratio and peak
RSS, each beside its target (300 msg/s, ratio 0.3, 200 MB) as PASS/MISS
information; the exit code does not depend on them.

Logging is quiet by default (info events dropped); `--log` renders the
daemon's JSON line per message to /dev/null, to include its real cost.
`--profile` runs the ingest pass under cProfile (rates are then inflated by
the profiler) and prints the top 25 functions by cumulative time.

Run from the repository root:

    /work/venv/bin/python bench/ingest.py [--messages 5000] [--db PATH] [--seed 1]
                                          [--log] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import structlog

if __package__ in (None, ""):  # run as `python bench/ingest.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.orm import Session, sessionmaker

from bench import mailgen
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.logs import configure_logging
from helpdesk.mail.parse import parse
from helpdesk.store.db import make_engine, make_session_factory, upgrade
from helpdesk.values import Origin, OutcomeKind, ParsedMessage

TARGET_RATE = 300.0  # messages per second
TARGET_RATIO = 0.3  # ingest rate / parse-only rate
TARGET_RSS_MB = 200.0
SUPPORT_ADDRESS = "support@example.com"
PROFILE_LINES = 25


@dataclass(frozen=True)
class IngestResult:
    seconds: float
    latencies_ms: list[float]
    outcomes: Counter[OutcomeKind]
    start_rss_mb: float
    peak_rss_mb: float | None
    parse_seconds: float  # inside ingest()
    commit_seconds: float  # leaving `factory.begin()`: COMMIT and closing the connection


# -- memory -------------------------------------------------------------------------------


def rss_mb() -> float:
    """Current resident set size."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def process_peak_mb() -> float:
    """Peak RSS since the process started (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def phase_peak_mb() -> float:
    """VmHWM: the peak RSS since the last `reset_peak()`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# -- passes -------------------------------------------------------------------------------


def parse_pass(raws: Sequence[bytes]) -> float:
    """Seconds to parse every message once."""
    started = time.perf_counter()
    for raw in raws:
        parse(raw)
    return time.perf_counter() - started


def fresh_store(path: Path) -> sessionmaker[Session]:
    """Migrate a new SQLite file at `path`; returns its session factory."""
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    return make_session_factory(engine)


class TimedParse:
    """The project's parse, counting the seconds spent in it inside ingest()."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, raw: bytes) -> ParsedMessage:
        t0 = time.perf_counter()
        try:
            return parse(raw)
        finally:
            self.seconds += time.perf_counter() - t0


def ingest_pass(raws: Sequence[bytes], db: Path, profiler: cProfile.Profile | None) -> IngestResult:
    factory = fresh_store(db)  # untimed
    timed_parse = TimedParse()
    ctx = IngestContext(is_own_address=lambda a: a == SUPPORT_ADDRESS, parse=timed_parse)
    latencies: list[float] = []
    commit_seconds = 0.0
    outcomes: Counter[OutcomeKind] = Counter()
    gc.collect()
    start_rss = rss_mb()
    can_reset = reset_peak()
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    for i, raw in enumerate(raws):
        t0 = time.perf_counter()
        with factory.begin() as session:
            outcome = ingest(session, raw, Origin(source="bench", path=str(i)), ctx)
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        commit_seconds += t2 - t1
        latencies.append((t2 - t0) * 1000)
        outcomes[outcome.kind] += 1
    seconds = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    peak = phase_peak_mb() if can_reset else None
    return IngestResult(
        seconds, latencies, outcomes, start_rss, peak, timed_parse.seconds, commit_seconds
    )


# -- set-up ---------------------------------------------------------------------------------


def configure_quiet_or_json(log: bool) -> str:
    """Drop info events, or render them as the daemon does (JSON) into /dev/null."""
    if log:
        sink: TextIO = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        configure_logging("json", logging.INFO, stream=sink)
        return "JSON line per message rendered to /dev/null (the daemon's format)"
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return "quiet (info events dropped; use --log for the daemon's JSON logging cost)"


@contextmanager
def database_path(chosen: str | None) -> Iterator[Path]:
    """The store file: `chosen`, or one in a temporary directory under /tmp, removed after."""
    if chosen:
        yield Path(chosen)
        return
    directory = tempfile.mkdtemp(prefix="helpdesk-bench-", dir="/tmp")
    try:
        yield Path(directory) / "helpdesk.db"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def filesystem_of(path: Path) -> str:
    """The mount point and file-system type holding `path`, from /proc/mounts."""
    target = str(path.resolve().parent)
    best_mount, best_type = "", "unknown file system"
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return best_type
    for mount, fstype in mounts:
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best_mount):
            best_mount, best_type = mount, fstype
    return f"{best_type} (mounted on {best_mount})"


# -- reporting ------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil without floats drifting
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def report_corpus(raws: Sequence[bytes], seconds: float, rss_before: float) -> float:
    total_mb = sum(len(r) for r in raws) / 2**20
    sizes = sorted(len(r) for r in raws)
    replies = sum(1 for r in raws if b"\nIn-Reply-To:" in r)
    print(f"generated    {len(raws)} messages, {total_mb:.1f} MB in {seconds:.1f} s (untimed)")
    print(f"             size median {percentile(sizes, 50) / 1024:.1f} KB, "
          f"p90 {percentile(sizes, 90) / 1024:.1f} KB, max {sizes[-1] / 1024:.0f} KB; "
          f"{replies} carry In-Reply-To ({100 * replies / len(raws):.0f}%)")
    print(f"             RSS {rss_before:.0f} MB before generating, {rss_mb():.0f} MB after")
    return total_mb


def report_ingest(result: IngestResult, parse_rate: float, corpus_mb: float) -> None:
    n = len(result.latencies_ms)
    rate = n / result.seconds
    ratio = rate / parse_rate
    lat = sorted(result.latencies_ms)
    print(f"ingest       {rate:8.0f} msg/s  ({n} in {result.seconds:.2f} s)"
          f"   target >= {TARGET_RATE:.0f}: {verdict(rate >= TARGET_RATE)}")
    print(f"latency ms   p50 {percentile(lat, 50):.2f}  p95 {percentile(lat, 95):.2f}  "
          f"p99 {percentile(lat, 99):.2f}  max {lat[-1]:.2f}")
    per_msg = 1000 / n
    other = result.seconds - result.parse_seconds - result.commit_seconds
    print(f"split ms/msg parse {result.parse_seconds * per_msg:.2f}  "
          f"queries+ORM+flush+connect {other * per_msg:.2f}  "
          f"commit+close {result.commit_seconds * per_msg:.2f}")
    counts = ", ".join(f"{kind.value} {result.outcomes.get(kind, 0)}" for kind in OutcomeKind)
    replies = result.outcomes.get(OutcomeKind.REPLY, 0)
    print(f"outcomes     {counts}  (replies {100 * replies / n:.0f}%)")
    print(f"ratio        {ratio:8.2f}  ingest/parse-only"
          f"   target >= {TARGET_RATIO}: {verdict(ratio >= TARGET_RATIO)}")
    peak = max(process_peak_mb(), result.peak_rss_mb or 0.0)
    print(f"peak RSS     {peak:8.0f} MB  whole process, corpus of {corpus_mb:.0f} MB included"
          f"   target < {TARGET_RSS_MB:.0f}: {verdict(peak < TARGET_RSS_MB)}")
    if result.peak_rss_mb is not None:
        growth = result.peak_rss_mb - result.start_rss_mb
        print(f"             {result.peak_rss_mb:8.0f} MB  peak during the ingest pass: "
              f"{result.start_rss_mb:.0f} MB at its start (imports, corpus, parse pass), "
              f"+{growth:.0f} MB for ingesting")


def report_profile(profiler: cProfile.Profile) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(PROFILE_LINES)
    print(out.getvalue().rstrip())
    print()
    for line in breakdown(stats):
        print(line)


StatsKey = tuple[str, int, str]


def breakdown(stats: pstats.Stats) -> list[str]:
    """Split the profiled time into parse, SQLite, SQLAlchemy, logging and the rest."""
    raw: dict[StatsKey, tuple[int, int, float, float, dict[StatsKey, tuple[float, ...]]]] = (
        stats.stats  # type: ignore[attr-defined]
    )
    total: float = stats.total_tt  # type: ignore[attr-defined]

    def entered(inside: Callable[[str], bool]) -> float:
        """Cumulative time of calls into files matching `inside` from elsewhere.

        Calls coming from C built-ins (file "~", e.g. `next()` resuming a
        generator) are not counted as entries, to avoid counting twice.
        """
        seconds = 0.0
        for (file, _line, _name), (_cc, _nc, _tt, _ct, callers) in raw.items():
            if not inside(file):
                continue
            for (caller_file, _l, _n), edge in callers.items():
                if not inside(caller_file) and caller_file != "~":
                    seconds += edge[3]
        return seconds

    sqlite_c = sum(v[2] for (_f, _l, name), v in raw.items() if "sqlite3." in name)
    parts = {
        "parse() and helpdesk.mail": entered(lambda f: "/helpdesk/mail/" in f),
        "SQLAlchemy, Python side (ORM, Core, pool)": (
            entered(lambda f: "sqlalchemy" in f) - sqlite_c
        ),
        "sqlite3 C calls (connect, execute, commit, close)": sqlite_c,
        "logging (structlog, logging)": entered(
            lambda f: "/structlog/" in f or "/logging/" in f
        ),
    }
    parts["the rest: helpdesk ingest/thread/queries glue, bench loop"] = total - sum(
        parts.values()
    )
    lines = [f"where the ingest time goes (under cProfile, {total:.1f} s; approximate):"]
    lines += [
        f"  {label:58} {seconds:7.2f} s  {100 * seconds / total:5.1f}%"
        for label, seconds in parts.items()
    ]
    return lines


# -- main -----------------------------------------------------------------------------------


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="how many (default 5000)")
    parser.add_argument("--db", help="SQLite file to create (default: a temp dir under /tmp)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--log", action="store_true", help="render JSON logs to /dev/null")
    parser.add_argument("--profile", action="store_true", help="cProfile the ingest pass")
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    if args.db and Path(args.db).exists():
        parser.error(f"--db {args.db} exists; the benchmark needs a fresh store")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    logging_mode = configure_quiet_or_json(args.log)
    rss_before = rss_mb()
    started = time.perf_counter()
    raws = mailgen.generate(args.messages, seed=args.seed)
    corpus_mb = report_corpus(raws, time.perf_counter() - started, rss_before)

    gc.collect()
    parse_seconds = parse_pass(raws)
    parse_rate = len(raws) / parse_seconds
    print(f"parse only   {parse_rate:8.0f} msg/s  ({parse_seconds:.2f} s, single thread)")

    profiler = cProfile.Profile() if args.profile else None
    with database_path(args.db) as db:
        result = ingest_pass(raws, db, profiler)
        db_mb = db.stat().st_size / 2**20
        print(f"store        {db} on {filesystem_of(db)}, {db_mb:.0f} MB after the run;"
              " one transaction per message")
    print(f"logging      {logging_mode}")
    if profiler is not None:
        print("NOTE         ingest ran under cProfile: its rate and latencies are inflated")
    report_ingest(result, parse_rate, corpus_mb)
    if profiler is not None:
        print()
        report_profile(profiler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
