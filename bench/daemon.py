"""The daemon as users run it: `helpdesk run` against a real Dovecot and a real relay.

Everything is whole processes: each side's own `helpdesk run` (its console
script, its shipped rules and templates, the demo's teams), a throwaway
Dovecot (tests/servers/dovecot.py), an aiosmtpd relay in a process of its own
that timestamps every mail it accepts (bench/_relay.py), and SQLite on disk
(`--postgres`: a throwaway PostgreSQL cluster, tests/servers/postgres.py).
bench/_daemonrun.py holds one run and its checks.

(a) **Backlog.** N mails (bench/mailgen.py, seeded) wait in a staging folder
    while the daemon starts, handles one warm-up request and settles into
    IDLE; one UID MOVE then puts them all in INBOX. The rate is N over the
    time from that MOVE to the commit completing the backlog (its
    `message.ingested` line), so it includes Dovecot's IDLE notification
    (up to 1 s, `mailbox_idle_check_interval`) in every configuration alike
    and leaves the daemon's start-up out (printed apart: the first mail after
    start). Then every acknowledgement the rules queued must reach the relay:
    the same count to the relay's last acceptance is the end-to-end rate.
    Shipped rules against an empty rules directory, and (new code) the
    default `[intake] workers` (one per core) against one. After each run,
    with the daemons stopped: every backlog Message-ID stored once (SQL on
    the store), every outbox row's Message-ID accepted by the relay exactly
    once. The same backlog through a `[[maildir]]` (shipped rules): written
    to its tmp/ while the daemon starts, renamed into new/ at once; the
    daemon polls it every 0.2 s.
(b) **Arrivals.** With the daemon still running after the shipped-rules
    backlog, requests are appended to INBOX one by one, each from a sender
    who never wrote before, each once the previous one's acknowledgement
    reached the relay and 0.25 s passed (so the daemon is back in IDLE, as a
    real arrival finds it): arrival (APPEND sent) -> commit (its log line)
    and arrival -> acknowledgement accepted by the relay.
(c) **Replies.** Then `helpdesk tickets reply` (a whole process) on some of
    those tickets, one at a time: its start -> the relay accepted the reply.
(d) **Memory.** The largest sum of VmRSS (and of Pss, shared pages counted
    once) over the daemon's process tree (the daemon, its forkserver,
    parsing workers and sender process), sampled every 50 ms from /proc from the release to the
    last acknowledgement, at two backlog sizes (N and `--memory-messages`).
(e) **Scaling** (always PostgreSQL, shipped rules, `[daemon] lease_seconds`
    short so that leases are shared out within seconds): one daemon with
    `[intake] workers = 1` against `workers = 2`, and `--daemons` daemons
    (started one after another) against one, with two mailboxes (half the
    backlog each) and with one; and the one-daemon run again with its relay
    unreachable (the sender finds nothing listening and backs off), to show
    what sending (the daemon's sender process beside its writer) costs
    ingest. Where a ratio misses, the CPU each process tree used says what
    limits it.

With `--baseline DIR` every figure is measured for the old code in the same
run too (its own venv, rules and templates; runs alternate between the two);
what the old code cannot run is printed "n/a" with the reason. Targets
(issues 13 and 14) are printed beside the figures; the exit code never
depends on them. The machine's load is printed: on a shared machine the
figures move with it.

    .venv/bin/python bench/daemon.py [--baseline /work/wt/before] [--messages 2000]
        [--memory-messages 5000] [--arrivals 200] [--replies 10] [--scale-messages 2000]
        [--daemons 2] [--postgres] [--seed 1] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/daemon.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    Row,
    Side,
    generate,
    header,
    load_average,
    new_requests,
    percentile,
    print_table,
    row,
    sides,
)
from bench._daemonrun import Backlog, Bench, Checks, Latencies, Shape, arrivals_then_replies

TARGET_RATE = 250.0  # msg/s, IMAP backlog with the shipped rules (issue 13 §3)
TARGET_RULES_RATIO = 0.8  # of the no-rules rate
TARGET_RSS_MB = 200.0  # issue 13 §7
TARGET_FLAT = 1.1  # peak RSS at the big backlog / at the small one ("flat in backlog size")
TARGET_ACK_P95 = 1000.0  # ms, arrival -> acknowledgement at the relay (issue 14)
TARGET_REPLY = 1.0  # s, `tickets reply` -> relay (issue 14)
TARGET_SCALING = 1.4  # x, on 2 cores (issue 13 §6: 0.7 x N)
SCALE_LEASE = 10.0  # s
QUICK_LEASE = 3.0  # s

Results = dict[str, Backlog]  # by side label


class Figures:
    """Every run's result, kept for the table and the loss/duplicate totals."""

    def __init__(self, sides_: Sequence[Side]) -> None:
        self.sides = list(sides_)
        self.baseline = len(self.sides) > 1
        self.all: list[tuple[str, str, Backlog]] = []  # (side, what, result)

    def keep(self, side: Side, what: str, result: Backlog) -> Backlog:
        self.all.append((side.label, what, result))
        print(f"{side.label:7} {what}: {result.describe()}")
        return result

    def na(self, reason: str) -> str:
        return reason if self.baseline else ""


def pick(results: Results, label: str,
         what: Callable[[Backlog], float | None]) -> float | None:
    return what(results[label]) if label in results else None


def both(results: Results,
         what: Callable[[Backlog], float | None]) -> tuple[float | None, float | None]:
    return pick(results, "now", what), pick(results, "before", what)


# -- (a)-(d): one daemon ----------------------------------------------------------------------


def main_runs(bench: Bench, figures: Figures, raws: list[bytes], arrivals: list[bytes],
              rows: list[Row]) -> None:
    args = bench.args
    n, store = args.messages, "postgres" if args.postgres else "sqlite"
    rules: Results = {}
    bare: Results = {}
    big: Results = {}
    lat: dict[str, Latencies] = {}
    for side in figures.sides:
        after = arrivals_then_replies(bench, side, arrivals, args.replies)
        result, found = bench.backlog(side, raws[:n], Shape(store=store), after)
        rules[side.label] = figures.keep(side, f"backlog {n}, shipped rules", result)
        lat[side.label] = found or Latencies()
        print(f"{side.label:7} {lat[side.label].describe()}")
    for side in figures.sides:
        result = bench.backlog(side, raws[:n], Shape(rules=False, store=store))[0]
        bare[side.label] = figures.keep(side, f"backlog {n}, no rules", result)
    maildir: Results = {}
    for side in figures.sides:
        result = bench.backlog(side, raws[:n], Shape(store=store, maildir=True))[0]
        maildir[side.label] = figures.keep(side, f"Maildir backlog {n}, shipped rules", result)
    one_worker: Results = {}
    for side in figures.sides:
        if side.has_intake:
            result = bench.backlog(side, raws[:n], Shape(store=store, workers=1))[0]
            one_worker[side.label] = figures.keep(side, f"backlog {n}, shipped rules, [intake] "
                                                  "workers = 1", result)
    if args.memory_messages:
        for side in figures.sides:
            result = bench.backlog(side, raws[:args.memory_messages], Shape(store=store))[0]
            big[side.label] = figures.keep(side, f"backlog {args.memory_messages}, shipped "
                                           "rules", result)

    rows.append(row(f"(a) IMAP backlog {n}, shipped rules, {store}: to the last commit (msg/s)",
                    *both(rules, lambda b: b.rate), at_least=TARGET_RATE))
    rows.append(row(f"    IMAP backlog {n}, no rules (msg/s)", *both(bare, lambda b: b.rate)))
    ratios = {label: rules[label].rate / bare[label].rate for label in rules}
    rows.append(row("    shipped rules / no rules", ratios.get("now"), ratios.get("before"),
                    at_least=TARGET_RULES_RATIO, digits=2))
    workers = {label: rules[label].rate / one_worker[label].rate for label in one_worker}
    rows.append(row(f"    [intake] workers = {os.cpu_count()} (default: one per core) / 1",
                    workers.get("now"), workers.get("before"), digits=2,
                    na=figures.na(NO_WORKERS)))
    rows.append(row(f"    Maildir backlog {n}, shipped rules (msg/s)",
                    *both(maildir, lambda b: b.rate)))
    rows.append(row("    shipped rules, to the relay's last acknowledgement (msg/s)",
                    *both(rules, lambda b: b.ack_rate)))
    rows.append(row("    release -> relay accepted every acknowledgement (s)",
                    *both(rules, lambda b: b.ack_seconds), digits=2))
    rows.append(row("    first mail after start: arrival -> commit (ms)",
                    *both(rules, lambda b: b.cold_ms)))
    latency_rows(lat, rows)
    memory_rows(n, rules, args.memory_messages, big, rows)


def latency_rows(lat: dict[str, Latencies], rows: list[Row]) -> None:
    def stat(label: str, values_of: Callable[[Latencies], list[float]],
             q: float | None) -> float | None:
        values = values_of(lat[label]) if label in lat else []
        if not values:
            return None
        return max(values) if q is None else percentile(values, q)

    count = len(lat["now"].commit) + lat["now"].lost
    first = True
    for name, values_of in (("arrival -> commit", lambda f: f.commit),
                            ("arrival -> ack accepted by the relay", lambda f: f.ack)):
        for q, label in ((50, "p50"), (95, "p95"), (None, "max")):
            target = TARGET_ACK_P95 if (name.endswith("relay") and q == 95) else None
            lead = f"(b) {count} arrivals one by one: " if first else "    "
            first = False
            rows.append(row(f"{lead}{name} {label} (ms)", stat("now", values_of, q),
                            stat("before", values_of, q), below=target))
    rows.append(row("(c) tickets reply -> relay accepted it, median (s)",
                    stat("now", lambda f: f.reply, 50), stat("before", lambda f: f.reply, 50),
                    below=TARGET_REPLY, digits=2))
    rows.append(row("    ... max (s)", stat("now", lambda f: f.reply, None),
                    stat("before", lambda f: f.reply, None), digits=2))
    rows.append(row("    ... the command's own run time, median (s)",
                    stat("now", lambda f: f.reply_cli, 50),
                    stat("before", lambda f: f.reply_cli, 50), digits=2))
    rows.append(row("    arrivals and replies lost (not seen in 30 s)",
                    lat["now"].lost, lat["before"].lost if "before" in lat else None, zero=True))


def memory_rows(n: int, small: Results, m: int, big: Results, rows: list[Row]) -> None:
    for size, results in ((n, small), (m, big)):
        if not results:
            continue
        rows.append(row(f"(d) peak memory, daemon tree, backlog {size}: sum of VmRSS (MB)",
                        *both(results, lambda b: b.usage.peak_mb("helpdesk")),
                        below=TARGET_RSS_MB))
        rows.append(row("    ... sum of Pss, shared pages counted once (MB)",
                        *both(results, lambda b: b.usage.pss_mb("helpdesk")),
                        below=TARGET_RSS_MB))
    if big:
        def growth(label: str, of: Callable[[Backlog], float]) -> float | None:
            if label not in big or label not in small or not of(small[label]):
                return None
            return of(big[label]) / of(small[label])

        for name, of in (("VmRSS", lambda b: b.usage.peak_mb("helpdesk")),
                         ("Pss", lambda b: b.usage.pss_mb("helpdesk"))):
            rows.append(row(f"    flat: peak {name} at {m} / at {n}", growth("now", of),
                            growth("before", of), below=TARGET_FLAT, digits=2))


# -- (e): workers and daemons, on PostgreSQL ----------------------------------------------------

SCALING = (  # label, daemons (0: --daemons), mailboxes, workers
    ("1 daemon, 1 mailbox, 1 worker", 1, 1, 1),
    ("1 daemon, 1 mailbox, 2 workers", 1, 1, 2),
    ("D daemons, 1 mailbox, 1 worker each", 0, 1, 1),
    ("1 daemon, 2 mailboxes, 1 worker", 1, 2, 1),
    ("D daemons, 2 mailboxes, 1 worker each", 0, 2, 1),
)
NO_WORKERS = "the old code has no [intake] workers (one process parses and stores)"
# (e) runs the two-worker daemon for this code only, to keep the bench's length.
THIS_CODE_ONLY = "run for this code only ((a) compares [intake] workers on both sides)"


def scaling_runs(bench: Bench, figures: Figures, raws: list[bytes], rows: list[Row]) -> None:
    d = bench.args.daemons
    lease = QUICK_LEASE if bench.args.quick else SCALE_LEASE
    found: dict[tuple[str, str], Backlog] = {}
    labels = [label.replace("D daemons", f"{d} daemons") for label, *_ in SCALING]
    for label, (_l, daemons, boxes, workers) in zip(labels, SCALING, strict=True):
        if daemons == 0 and d < 2:
            continue
        for side in figures.sides:
            if workers == 2 and not side.has_intake:
                continue
            shape = Shape(daemons=daemons or d, mailboxes=boxes, workers=workers,
                          store="postgres", lease=lease)
            found[(label, side.label)] = figures.keep(side, f"PostgreSQL {label}",
                                                      bench.backlog(side, raws, shape)[0])

    def rate(label: str, side: str) -> float | None:
        result = found.get((label, side))
        return result.rate if result else None

    def scale(label: str, base: str, side: str) -> float | None:
        top, bottom = rate(label, side), rate(base, side)
        return top / bottom if top and bottom else None

    # The same as the first run with the sender idle (its relay unreachable): what
    # sending (in a process of its own since issue 13) costs ingest.
    idle = f"{labels[0]}, relay unreachable"
    for side in figures.sides:
        shape = Shape(workers=1 if side.has_intake else None, store="postgres", lease=lease,
                      relay=False)
        found[(idle, side.label)] = figures.keep(side, f"PostgreSQL {idle}",
                                                 bench.backlog(side, raws, shape)[0])

    n = len(raws)
    rows.append(row(f"(e) PostgreSQL backlog {n}, {labels[0]} (msg/s)", rate(labels[0], "now"),
                    rate(labels[0], "before")))
    rows.append(row("    the same, relay unreachable (sender idle) (msg/s)", rate(idle, "now"),
                    rate(idle, "before")))
    rows.append(row("    sending / sender idle", scale(labels[0], idle, "now"),
                    scale(labels[0], idle, "before"), digits=2))
    rows.append(row("    1 daemon, 2 workers / 1 worker", scale(labels[1], labels[0], "now"),
                    None, at_least=TARGET_SCALING, digits=2, na=figures.na(THIS_CODE_ONLY)))
    if d >= 2:
        rows.append(row(f"    {d} daemons / 1, one mailbox", scale(labels[2], labels[0], "now"),
                        scale(labels[2], labels[0], "before"), at_least=TARGET_SCALING,
                        digits=2))
        rows.append(row(f"    PostgreSQL backlog {n}, {labels[3]} (msg/s)",
                        rate(labels[3], "now"), rate(labels[3], "before")))
        rows.append(row(f"    {d} daemons / 1, two mailboxes", scale(labels[4], labels[3], "now"),
                        scale(labels[4], labels[3], "before"), at_least=TARGET_SCALING,
                        digits=2))
    explain_scaling(found)


def explain_scaling(found: dict[tuple[str, str], Backlog]) -> None:
    """What limits a configuration: the busiest process, the machine, or the work split."""
    print()
    print("scaling: where the CPU went (cores; 1.00 = one core busy all the time)")
    for (label, side), result in found.items():
        usage = result.usage
        mains = usage.cores(usage.cpu_roots.get("helpdesk", 0.0))
        per_main = mains / max(1, len(result.per_daemon))
        machine = usage.cores(usage.machine_busy)
        if per_main > 0.85:
            why = (f"each daemon's main process is busy {per_main:.2f} of a core: its one "
                   "store thread (GIL-bound) is the limit")
        elif machine > 0.9 * (os.cpu_count() or 1):
            why = f"the machine is saturated ({machine:.2f} of {os.cpu_count()} cores busy)"
        elif len(result.per_daemon) > 1 and min(result.per_daemon) < 0.1 * result.messages:
            why = "one daemon did nearly all the work (the other held no lease)"
        else:
            why = "no single process saturated: waits (IMAP round trips, commits) dominate"
        print(f"  {side:7} {label}: {result.rate:.0f} msg/s; machine {machine:.2f} busy; {why}")
        print(f"          {usage.cpu_share(split='helpdesk')}")


# -- losses and duplicates over every run ---------------------------------------------------------


def integrity_rows(bench: Bench, figures: Figures, rows: list[Row]) -> None:
    """Zero losses and zero duplicates, and one ticket count per backlog and side."""

    def total(label: str, of: Callable[[Checks], int]) -> int | None:
        runs = [r.checks for side, _w, r in figures.all if side == label and r.checks]
        return sum(of(c) for c in runs) if runs else None

    def disagreeing(label: str) -> int | None:
        """One-mailbox runs whose ticket count differs from the first such run of the same
        backlog (with two mailboxes the order differs: a reply may come before its request)."""
        first: dict[int, int] = {}
        odd = 0
        for side, _what, result in figures.all:
            if side == label and result.mailboxes == 1:
                odd += first.setdefault(result.messages, result.tickets) != result.tickets
        return odd if any(side == label for side, _w, _r in figures.all) else None

    def outlived(label: str) -> int | None:
        if not any(side == label for side, _w, _r in figures.all):
            return None
        return sum(1 for line in bench.leftovers if line.split("/", 1)[0].endswith(f"-{label}"))

    rows.append(row("every run: backlog mails lost or stored twice",
                    total("now", lambda c: c.store_faults),
                    total("before", lambda c: c.store_faults), zero=True))
    rows.append(row("    outbox rows not accepted by the relay, or accepted twice",
                    total("now", lambda c: c.relay_faults),
                    total("before", lambda c: c.relay_faults), zero=True))
    rows.append(row("    one-mailbox runs whose ticket count differs from the first run",
                    disagreeing("now"), disagreeing("before"), zero=True))
    rows.append(row("    processes still there 3 s after their daemon exited",
                    outlived("now"), outlived("before"), zero=True))


# -- main -------------------------------------------------------------------------------------


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--baseline", help="checkout of the old code with its own .venv")
    parser.add_argument("--messages", type=int, default=2000, help="backlog size (2000)")
    parser.add_argument("--memory-messages", type=int, default=5000,
                        help="second backlog size for peak memory (5000; 0 skips it)")
    parser.add_argument("--arrivals", type=int, default=200, help="appended one by one (200)")
    parser.add_argument("--replies", type=int, default=10, help="tickets reply runs (10)")
    parser.add_argument("--scale-messages", type=int, default=2000,
                        help="backlog of each scaling run (2000; 0 skips scaling)")
    parser.add_argument("--daemons", type=int, default=2, help="daemons in the scaling runs (2)")
    parser.add_argument("--postgres", action="store_true",
                        help="(a)-(d) on PostgreSQL instead of SQLite")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small figures, a smoke test")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.memory_messages, args.arrivals = 30, 60, 3
        args.replies, args.scale_messages = 1, 20
    if args.messages < 1 or args.arrivals < 1:
        parser.error("--messages and --arrivals must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    sides_ = sides(args.baseline)
    header("bench/daemon.py: `helpdesk run` against Dovecot and an aiosmtpd relay", sides_,
           [f"store {'postgres' if args.postgres else 'sqlite'}; backlog {args.messages}, "
            f"memory backlog {args.memory_messages}, {args.arrivals} arrivals, {args.replies} "
            f"replies, scaling backlog {args.scale_messages} with up to {args.daemons} daemons",
            f"{os.cpu_count()} cores, shared with whatever else runs on the machine: figures "
            "move with its load (printed at the start and the end)"])
    size = max(args.messages, args.memory_messages, args.scale_messages)
    raws = generate(size + 3 * args.arrivals + 300, args.seed)
    requests = new_requests(raws[size:], args.arrivals + 60)
    arrivals, warmups = requests[:args.arrivals], requests[args.arrivals:]
    workdir = Path(tempfile.mkdtemp(prefix="helpdesk-bench-daemon-", dir="/tmp"))
    bench = Bench(args, workdir, warmups)
    figures = Figures(sides_)
    rows: list[Row] = []
    try:
        main_runs(bench, figures, raws, arrivals, rows)
        if args.scale_messages:
            try:
                print(f"postgres: {bench.postgres().note}")
            except RuntimeError as exc:
                print(f"scaling: n/a ({exc})")
            else:
                scaling_runs(bench, figures, raws[:args.scale_messages], rows)
    finally:
        bench.close()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    integrity_rows(bench, figures, rows)
    print_table(f"bench/daemon.py (load average at the end {load_average()})", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
