"""The daemon as users run it: `helpdesk run` against a real Dovecot and a real relay.

Everything is whole processes: each side's own `helpdesk run` (its console
script, its shipped rules and templates, the demo's teams), a throwaway
Dovecot (tests/servers/dovecot.py), an aiosmtpd relay in a process of its own
that timestamps every mail it accepts (bench/_relay.py), and SQLite on disk
(`--store postgres`: a throwaway PostgreSQL cluster, tests/servers/postgres.py).

1. **Backlog.** N mails (bench/mailgen.py, seeded) wait in a staging folder
   while the daemon starts and settles into IDLE on an empty INBOX; one UID
   MOVE then puts them all in INBOX. The rate is N over the time from that
   MOVE to the last `message.ingested` log line (so it includes Dovecot's IDLE
   notification, ~0.5 s, for every configuration alike). Every
   acknowledgement the rules queue must then reach the relay: the time from
   the MOVE until the relay accepted the last one is the sender's figure. The
   same with an empty rules directory gives the no-rules rate. Peak memory is
   the largest sum of VmRSS over the daemon's process tree (the daemon, its
   forkserver and parsing workers), sampled every 50 ms from /proc, through the
   whole backlog, at two backlog sizes (N and `--memory-messages`).
2. **Arrivals.** With the daemon still running after the shipped-rules
   backlog, requests are appended to INBOX one by one, each from a sender who
   never wrote before, each once the previous one's acknowledgement reached
   the relay and a short gap passed (so that the daemon is back in IDLE, as a
   real arrival finds it): arrival (APPEND sent) -> commit (its log line) and
   arrival -> acknowledgement accepted by the relay. Then `helpdesk tickets
   reply` (a whole process) on some of those tickets: start -> the relay
   accepted the reply.
3. **Scaling** (PostgreSQL, shipped rules, `[daemon] lease_seconds = 10` so
   that leases are shared out within seconds): one daemon with `[intake]
   workers = 1` against `workers = 2`, and `--daemons` daemons against one,
   with two mailboxes (half the backlog each) and with one mailbox. Where a
   ratio misses, the CPU each process tree used says what limits it.

With `--baseline DIR` every figure is measured for the old code in the same
run too (its own venv, rules and templates); the old code has no group
commit, no wake-up of the sender and no parsing workers. Targets (issues 13
and 14) are printed beside the figures; the exit code never depends on them.

    .venv/bin/python bench/daemon.py [--baseline /work/wt/before] [--messages 2000]
        [--memory-messages 5000] [--arrivals 200] [--replies 10] [--scale-messages 2000]
        [--daemons 2] [--store sqlite|postgres] [--seed 1] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/daemon.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    AGENT,
    Mailbox,
    Row,
    Side,
    Usage,
    Watch,
    clean_env,
    generate,
    header,
    load_average,
    median,
    message_id_of,
    new_requests,
    percentile,
    print_table,
    row,
    sender_of,
    sides,
    upgrade,
    write_config,
)
from bench._servers import Commit, DaemonProcess, Imap, Postgres, Relay, outbox_counts

TARGET_RATE = 250.0  # msg/s, IMAP backlog with the shipped rules (issue 13 §3)
TARGET_RULES_RATIO = 0.8  # of the no-rules rate
TARGET_RSS_MB = 200.0  # issue 13 §7
TARGET_ACK_P95 = 1000.0  # ms, arrival -> acknowledgement at the relay (issue 14)
TARGET_REPLY = 1.0  # s, `tickets reply` -> relay (issue 14)
TARGET_SCALING = 1.4  # x, on 2 cores (issue 13 §6: 0.7 x N)
SCALE_LEASE = 10.0
WAIT_ARRIVAL = 30.0  # s, before an arrival counts as lost
GAP = 0.25  # s, after an acknowledgement before the next arrival


@dataclass
class Backlog:
    messages: int
    seconds: float  # release -> last commit
    first_commit: float  # release -> first commit
    move_seconds: float
    per_daemon: list[int]
    outcomes: dict[str, int]
    queued: int  # outbox rows
    ack_seconds: float | None  # release -> the relay accepted the last of them
    usage: Usage
    leftovers: list[str]
    leases: list[int]
    moved: int
    errors: list[str] = field(default_factory=list)
    cold_ms: float | None = None  # the warm-up mail, the first after start: arrival -> commit

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def describe(self) -> str:
        acks = "no mail queued" if not self.queued else (f"{self.queued} mails queued, the last accepted by the relay "
                f"{self.ack_seconds:.2f} s after the release" if self.ack_seconds is not None
                else f"{self.queued} mails queued, NOT all accepted by the relay")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        text = (f"{self.rate:6.0f} msg/s ({self.messages} in {self.seconds:.2f} s; first commit "
                f"after {self.first_commit:.2f} s, UID MOVE {self.move_seconds:.2f} s); {counts}; "
                f"{acks}; peak memory of the daemon tree{'s' if len(self.per_daemon) > 1 else ''}"
                f": sum of VmRSS {self.usage.peak_mb('helpdesk'):.0f} MB, of Pss "
                f"{self.usage.pss_mb('helpdesk'):.0f} MB, of VmHWM "
                f"{self.usage.hwm_mb('helpdesk'):.0f} MB; moved to Processed {self.moved}; "
                f"first mail after start committed after {self.cold_ms or 0:.0f} ms")
        if len(self.per_daemon) > 1:
            text += f"; commits per daemon {self.per_daemon}, leases held {self.leases}"
        if self.leftovers:
            text += (f"; WARNING {len(self.leftovers)} processes of the daemon's session still "
                     f"there 3 s after it exited (killed): {self.leftovers}")
        if self.errors:
            text += f"; error events: {sorted(set(self.errors))}"
        return text + f"\n           CPU in cores: {self.usage.cpu_share(split='helpdesk')}"


@dataclass
class Latencies:
    commit: list[float] = field(default_factory=list)  # ms
    ack: list[float] = field(default_factory=list)  # ms
    reply: list[float] = field(default_factory=list)  # s, start of `tickets reply` -> relay
    reply_cli: list[float] = field(default_factory=list)  # s, the command's own run time
    lost: int = 0
    tickets: list[tuple[int, str]] = field(default_factory=list)  # (ticket, requester)


After = Callable[[DaemonProcess, str, str], Latencies]


class Bench:
    """The servers shared by every run, and one backlog run."""

    def __init__(self, args: argparse.Namespace, workdir: Path, warmups: list[bytes]) -> None:
        self.args = args
        self.workdir = workdir
        self.warmups = iter(warmups)
        self.imap = Imap()
        self.relay = Relay()
        self.pg: Postgres | None = None
        self.runs = 0

    def postgres(self) -> Postgres:
        if self.pg is None:
            self.pg = Postgres().start()
        return self.pg

    def close(self) -> None:
        self.relay.close()
        self.imap.close()
        if self.pg is not None:
            self.pg.close()

    def store(self, where: str, run_dir: Path) -> str:
        if where == "postgres":
            return self.postgres().new_database()
        return f"sqlite:///{run_dir / 'helpdesk.db'}"

    def backlog(self, side: Side, raws: Sequence[bytes], *, rules: bool = True,
                daemons: int = 1, mailboxes: int = 1, workers: int | None = None,
                store: str = "sqlite", lease: float | None = None,
                after: After | None = None) -> tuple[Backlog, Latencies | None]:
        self.runs += 1
        run_dir = self.workdir / f"run{self.runs}-{side.label}"
        run_dir.mkdir()
        url = self.store(store, run_dir)
        users = [self.imap.new_user() for _ in range(mailboxes)]
        boxes = [Mailbox(f"box{i + 1}", self.imap.server.port, u, p) for i, (u, p) in
                 enumerate(users)]
        config = write_config(run_dir / "helpdesk.toml", side, db_url=url, rules=rules,
                              smtp_port=self.relay.port, mailboxes=boxes, workers=workers,
                              lease_seconds=lease)
        for i, (user, _pw) in enumerate(users):
            self.imap.fill(user, raws[i::mailboxes])
        upgrade(side, config)
        procs = [DaemonProcess(side, config, f"daemon{i + 1}") for i in range(daemons)]
        try:
            self._settle(procs, [b.name for b in boxes], lease)
            cold = self._warm_up(procs, users)
            result, latencies = self._measure(procs, users, url, len(raws), after)
            result.cold_ms = cold
        finally:
            for proc in procs:
                proc.stop()
        result.leftovers = [c for p in procs for c in p.leftovers]
        result.moved = sum(self.imap.count(u, "Processed") for u, _pw in users)
        return result, latencies

    def _settle(self, procs: list[DaemonProcess], names: list[str], lease: float | None) -> None:
        """Every daemon started, every mailbox leased (shared out if it can be), IDLE reached."""
        for proc in procs:
            proc.wait(lambda p=proc: p.started_at is not None, 90, "daemon.started")

        def held() -> set[str]:
            return set().union(*(p.leases for p in procs))

        procs[0].wait(lambda: held() >= set(names), 90, "every mailbox leased")
        if len(procs) > 1 and len(names) > 1:
            deadline = time.monotonic() + (lease or 60.0) * 1.5
            while time.monotonic() < deadline and not all(p.leases for p in procs):
                time.sleep(0.2)
        time.sleep(1.0)  # the first pass found nothing; the sources go into IDLE

    def _warm_up(self, procs: list[DaemonProcess], users: list[tuple[str, str]]) -> float:
        """One request per mailbox before the backlog, as a running daemon has seen mail.

        The new daemon starts its parsing workers (and their forkserver) with the
        first mail; that cost is reported apart (arrival -> commit of the first
        mail, in ms), not charged to the backlog.
        """
        first = 0.0
        for user, _pw in users:
            raw = next(self.warmups)
            seen = sum(len(p.commits) for p in procs)
            client = self.imap.connect(user)
            try:
                started = time.time()
                client.append("INBOX", raw)
            finally:
                client.logout()
            procs[0].wait(lambda s=seen: sum(len(p.commits) for p in procs) > s, 60,
                          "the warm-up mail's commit")
            committed = max(c.t for p in procs for c in p.commits)
            first = first or (committed - started) * 1000
            self.relay.wait(lambda r=raw, t=started: self.relay.first_to(sender_of(r), t)
                            is not None, 5)
        time.sleep(1.0)  # back in IDLE
        return first

    def _measure(self, procs: list[DaemonProcess], users: list[tuple[str, str]], url: str,
                 n: int, after: After | None) -> tuple[Backlog, Latencies | None]:
        groups = {"helpdesk": [p.pid for p in procs], "dovecot": self.imap.pids(),
                  "relay": [self.relay.pid]}
        if self.pg is not None and url.startswith("postgresql"):
            groups["postgres"] = self.pg.pids()
        relay_from = self.relay.count()
        leases = [len(p.leases) for p in procs]
        before = sum(len(p.commits) for p in procs)
        with Watch(groups, pss=["helpdesk"]) as watch:
            released = [self.imap.release(user) for user, _pw in users]
            t0 = released[0][0]

            def committed() -> int:
                return sum(len(p.commits) for p in procs)

            procs[0].wait(lambda: committed() >= before + n, 120 + n / 5, f"{n} commits")
            commits = sorted(c.t for p in procs for c in p.commits)[before:]
            ack_done, queued = self._acks_accepted(url, relay_from, 60 + n / 20)
            usage = watch.stop()
        outcomes: dict[str, int] = {}
        for c in sorted((c for p in procs for c in p.commits), key=lambda c: c.t)[before:]:
            outcomes[c.outcome] = outcomes.get(c.outcome, 0) + 1
        result = Backlog(
            messages=n, seconds=commits[n - 1] - t0, first_commit=commits[0] - t0,
            move_seconds=sum(r[1] for r in released),
            per_daemon=[sum(1 for c in p.commits if c.t >= t0) for p in procs],
            outcomes=outcomes, queued=queued,
            ack_seconds=None if ack_done is None else ack_done - t0, usage=usage,
            leftovers=[], leases=leases, moved=0, errors=[e for p in procs for e in p.errors])
        latencies = after(procs[0], users[0][0], url) if after is not None else None
        return result, latencies

    def _acks_accepted(self, url: str, relay_from: int,
                       timeout: float) -> tuple[float | None, int]:
        """When the relay accepted the last mail the run queued (None: not within `timeout`),
        and how many were queued."""
        deadline = time.monotonic() + timeout
        queued = 0
        while time.monotonic() < deadline:
            queued, pending = outbox_counts(url)
            if pending == 0 and self.relay.count() - relay_from >= queued:
                accepted = self.relay.accepted[relay_from:]
                return (accepted[-1].t if accepted else None), queued
            self.relay.wait(lambda: False, 0.1)
        return None, queued


# -- arrivals and replies -------------------------------------------------------------------------


def arrivals_then_replies(bench: Bench, side: Side, mails: Sequence[bytes],
                          replies: int) -> After:
    def run(daemon: DaemonProcess, user: str, url: str) -> Latencies:
        found = Latencies()
        client = bench.imap.connect(user)
        try:
            for raw in mails:
                _arrive(daemon, bench.relay, client, raw, found)
        finally:
            client.logout()
        config = daemon.log_path.parent / "helpdesk.toml"
        for ticket, requester in found.tickets[:replies]:
            _reply(side, config, bench.relay, ticket, requester, found)
            time.sleep(GAP)
        return found

    return run


def _arrive(daemon: DaemonProcess, relay: Relay, client: Any, raw: bytes,
            found: Latencies) -> None:
    message_id, requester = message_id_of(raw), sender_of(raw)
    seen = len(daemon.commits)
    started = time.time()
    client.append("INBOX", raw)

    def mine() -> Commit | None:
        return next((c for c in daemon.commits[seen:] if c.message_id == message_id), None)

    try:
        daemon.wait(lambda: mine() is not None, WAIT_ARRIVAL, f"commit of {message_id}")
    except RuntimeError:
        if daemon.proc.poll() is not None:
            raise
        found.lost += 1
        return
    commit = mine()
    assert commit is not None
    found.commit.append((commit.t - started) * 1000)
    if relay.wait(lambda: relay.first_to(requester, started) is not None, WAIT_ARRIVAL):
        found.ack.append(((relay.first_to(requester, started) or started) - started) * 1000)
        if commit.ticket_id is not None:
            found.tickets.append((commit.ticket_id, requester))
    else:
        found.lost += 1
    time.sleep(GAP)


def _reply(side: Side, config: Path, relay: Relay, ticket: int, requester: str,
           found: Latencies) -> None:
    started = time.time()
    done = subprocess.run(side.cli(config, "tickets", "reply", str(ticket), "--as", AGENT,
                                   "-m", "Please restart the VPN client and try again."),
                          capture_output=True, text=True, env=clean_env(), check=False)
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"{side.label}: tickets reply failed: {done.stderr}")
    found.reply_cli.append(ended - started)
    if relay.wait(lambda: relay.first_to(requester, started) is not None, WAIT_ARRIVAL):
        found.reply.append((relay.first_to(requester, started) or started) - started)
    else:
        found.lost += 1


# -- the measurements -----------------------------------------------------------------------


def main_runs(bench: Bench, sides_: list[Side], raws: list[bytes], arrivals: list[bytes],
              rows: list[Row]) -> None:
    args = bench.args
    n = args.messages
    rules: dict[str, Backlog] = {}
    lat: dict[str, Latencies] = {}
    bare: dict[str, Backlog] = {}
    big: dict[str, Backlog] = {}
    for side in sides_:
        result, found = bench.backlog(side, raws[:n], store=args.store,
                                      after=arrivals_then_replies(bench, side, arrivals,
                                                                  args.replies))
        rules[side.label], lat[side.label] = result, found or Latencies()
        print(f"{side.label:7} rules    {result.describe()}")
        report_latencies(side.label, lat[side.label])
    for side in sides_:
        bare[side.label] = bench.backlog(side, raws[:n], rules=False, store=args.store)[0]
        print(f"{side.label:7} no rules {bare[side.label].describe()}")
    if args.memory_messages:
        for side in sides_:
            big[side.label] = bench.backlog(side, raws[:args.memory_messages],
                                            store=args.store)[0]
            print(f"{side.label:7} rules    {big[side.label].describe()}")

    def pick(results: dict[str, Backlog], what: Callable[[Backlog], float | None],
             label: str) -> float | None:
        return what(results[label]) if label in results else None

    def both(results: dict[str, Backlog],
             what: Callable[[Backlog], float | None]) -> tuple[float | None, float | None]:
        return pick(results, what, "now"), pick(results, what, "before")

    store = args.store
    rows.append(row(f"IMAP backlog {n}, shipped rules, {store} (msg/s)",
                    *both(rules, lambda b: b.rate), at_least=TARGET_RATE))
    rows.append(row(f"IMAP backlog {n}, no rules (msg/s)", *both(bare, lambda b: b.rate)))
    ratios = [rules[s.label].rate / bare[s.label].rate for s in sides_]
    rows.append(row("  shipped rules / no rules", ratios[0], ratios[1] if len(ratios) > 1
                    else None, at_least=TARGET_RULES_RATIO, digits=2))
    rows.append(row(f"  release -> relay accepted all {rules['now'].queued} mails queued (s)",
                    *both(rules, lambda b: b.ack_seconds), digits=2))
    rows.append(row("  ... as sender throughput (msg/s)",
                    *both(rules, lambda b: b.queued / b.ack_seconds if b.ack_seconds else None)))
    for size, results in ((n, rules), (args.memory_messages, big)):
        if not results:
            continue
        rows.append(row(f"peak RSS, daemon tree, backlog {size} (MB, sum of VmRSS)",
                        *both(results, lambda b: b.usage.peak_mb("helpdesk")),
                        below=TARGET_RSS_MB))
        rows.append(row("  ... sum of Pss (shared pages counted once) (MB)",
                        *both(results, lambda b: b.usage.pss_mb("helpdesk"))))
    rows.append(row("first mail after start: arrival -> commit (ms)",
                    *both(rules, lambda b: b.cold_ms)))
    latency_rows(lat, rows)


def latency_rows(lat: dict[str, Latencies], rows: list[Row]) -> None:
    def stat(values_of: Callable[[Latencies], list[float]], q: float | None,
             label: str) -> float | None:
        found = lat.get(label)
        values = values_of(found) if found is not None else []
        if not values:
            return None
        return max(values) if q is None else percentile(values, q)

    count = len(lat["now"].commit) + lat["now"].lost
    for name, values_of in (("arrival -> commit", lambda f: f.commit),
                            ("arrival -> ack at relay", lambda f: f.ack)):
        for q, label in ((50, "p50"), (95, "p95"), (None, "max")):
            target = TARGET_ACK_P95 if (name.endswith("relay") and q == 95) else None
            rows.append(row(f"{name} {label}, {count} one by one (ms)",
                            stat(values_of, q, "now"), stat(values_of, q, "before"),
                            below=target))
    rows.append(row("tickets reply -> relay, median (s)",
                    stat(lambda f: f.reply, 50, "now"), stat(lambda f: f.reply, 50, "before"),
                    below=TARGET_REPLY, digits=2))
    rows.append(row("  ... max (s)", stat(lambda f: f.reply, None, "now"),
                    stat(lambda f: f.reply, None, "before"), digits=2))
    rows.append(row("  ... the command's own run time, median (s)",
                    stat(lambda f: f.reply_cli, 50, "now"),
                    stat(lambda f: f.reply_cli, 50, "before"), digits=2))
    lost = [lat[k].lost for k in ("now", "before") if k in lat]
    rows.append(row("arrivals and replies lost (not seen in 30 s)", lost[0],
                    lost[1] if len(lost) > 1 else None, below=1))


def report_latencies(label: str, found: Latencies) -> None:
    if not found.commit:
        print(f"{label:7} arrivals: none committed ({found.lost} lost)")
        return
    print(f"{label:7} arrivals: commit p50 {percentile(found.commit, 50):.0f} ms, ack p50 "
          f"{percentile(found.ack, 50) if found.ack else float('nan'):.0f} ms, p95 "
          f"{percentile(found.ack, 95) if found.ack else float('nan'):.0f} ms; tickets reply "
          f"-> relay median {median(found.reply) if found.reply else float('nan'):.2f} s; "
          f"lost {found.lost}")


SCALING = (  # label, daemons, mailboxes, workers (None: the old code has no such setting)
    ("1 daemon, 1 mailbox, 1 worker", 1, 1, 1),
    ("1 daemon, 1 mailbox, 2 workers", 1, 1, 2),
    ("D daemons, 1 mailbox, 1 worker each", 0, 1, 1),
    ("1 daemon, 2 mailboxes, 1 worker", 1, 2, 1),
    ("D daemons, 2 mailboxes, 1 worker each", 0, 2, 1),
)


def scaling_runs(bench: Bench, sides_: list[Side], raws: list[bytes], rows: list[Row]) -> None:
    d = bench.args.daemons
    rates: dict[tuple[str, str], Backlog] = {}
    for label, daemons, boxes, workers in SCALING:
        if daemons == 0 and d < 2:
            continue
        label = label.replace("D daemons", f"{d} daemons")
        for side in sides_:
            if workers == 2 and not side.has_intake:
                continue
            result = bench.backlog(side, raws, daemons=daemons or d, mailboxes=boxes,
                                   workers=workers, store="postgres", lease=SCALE_LEASE)[0]
            rates[(label, side.label)] = result
            print(f"{side.label:7} {label}: {result.describe()}")

    def rate(label: str, side: str) -> float | None:
        found = rates.get((label, side))
        return found.rate if found else None

    def scale(label: str, base: str, side: str) -> float | None:
        top, bottom = rate(label, side), rate(base, side)
        return top / bottom if top and bottom else None

    base1, base2 = SCALING[0][0], SCALING[3][0]
    n = len(raws)
    rows.append(row(f"PostgreSQL backlog {n}, {base1} (msg/s)", rate(base1, "now"),
                    rate(base1, "before")))
    rows.append(row("  1 daemon, 2 workers / 1 worker", scale(SCALING[1][0], base1, "now"),
                    None, at_least=TARGET_SCALING, digits=2))
    if d >= 2:
        one, two = (label.replace("D daemons", f"{d} daemons") for label in
                    (SCALING[2][0], SCALING[4][0]))
        rows.append(row(f"  {d} daemons / 1, one mailbox", scale(one, base1, "now"),
                        scale(one, base1, "before"), at_least=TARGET_SCALING, digits=2))
        rows.append(row(f"PostgreSQL backlog {n}, {base2} (msg/s)", rate(base2, "now"),
                        rate(base2, "before")))
        rows.append(row(f"  {d} daemons / 1, two mailboxes", scale(two, base2, "now"),
                        scale(two, base2, "before"), at_least=TARGET_SCALING, digits=2))
    explain_scaling(rates)


def explain_scaling(rates: dict[tuple[str, str], Backlog]) -> None:
    """What limits a configuration: the busiest process, the machine, or the work split."""
    print()
    print("scaling: where the CPU went (cores; 1.00 = one core busy all the time)")
    for (label, side), result in rates.items():
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
            why = "one daemon did nearly all the work (leases were not shared)"
        else:
            why = "no single process saturated: waits (IMAP round trips, commits) dominate"
        print(f"  {side:7} {label}: {result.rate:.0f} msg/s; machine {machine:.2f} busy; "
              f"{why}")
        print(f"          {usage.cpu_share(split='helpdesk')}")


# -- main -------------------------------------------------------------------------------------


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="checkout of the old code with its own .venv")
    parser.add_argument("--messages", type=int, default=2000, help="backlog size (2000)")
    parser.add_argument("--memory-messages", type=int, default=5000,
                        help="second backlog size for peak RSS (5000; 0 skips it)")
    parser.add_argument("--arrivals", type=int, default=200, help="appended one by one (200)")
    parser.add_argument("--replies", type=int, default=10, help="tickets reply runs (10)")
    parser.add_argument("--scale-messages", type=int, default=2000,
                        help="backlog of each scaling run (2000; 0 skips scaling)")
    parser.add_argument("--daemons", type=int, default=2, help="daemons in the scaling runs")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small figures, a smoke test")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.memory_messages, args.arrivals = 40, 0, 3
        args.replies, args.scale_messages = 2, 30
    if args.messages < 1 or args.arrivals < 1:
        parser.error("--messages and --arrivals must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    sides_ = sides(args.baseline)
    header("bench/daemon.py: `helpdesk run` against Dovecot and an aiosmtpd relay", sides_,
           [f"store {args.store}; backlog {args.messages}, memory backlog "
            f"{args.memory_messages}, {args.arrivals} arrivals, {args.replies} replies, "
            f"scaling backlog {args.scale_messages} with up to {args.daemons} daemons"])
    size = max(args.messages, args.memory_messages, args.scale_messages)
    raws = generate(size + 3 * args.arrivals + 300, args.seed)
    requests = new_requests(raws[size:], args.arrivals + 60)
    arrivals, warmups = requests[:args.arrivals], requests[args.arrivals:]
    workdir = Path(tempfile.mkdtemp(prefix="helpdesk-bench-daemon-", dir="/tmp"))
    bench = Bench(args, workdir, warmups)
    rows: list[Row] = []
    try:
        main_runs(bench, sides_, raws, arrivals, rows)
        if args.scale_messages:
            try:
                bench.postgres()
            except RuntimeError as exc:
                print(f"scaling skipped: {exc}")
            else:
                print(f"postgres: {bench.postgres().note}")
                scaling_runs(bench, sides_, raws[:args.scale_messages], rows)
    finally:
        bench.close()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(f"bench/daemon.py (load average at the end {load_average()})", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
