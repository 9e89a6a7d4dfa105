"""One measured run of bench/daemon.py: daemons on a fresh store, a backlog, its checks.

A run: a fresh store (SQLite file or PostgreSQL database) migrated by the
side's own `helpdesk db upgrade`, one new Dovecot user per mailbox with the
backlog waiting in a staging folder, `helpdesk run` started (one daemon after
another, each once the previous one logged `daemon.started`), one warm-up
request per mailbox, then one UID MOVE releases the backlog into INBOX and
the clock runs until every backlog mail is committed (its `message.ingested`
line) and every mail the run queued was accepted by the relay.

At the end of the run, with the daemons stopped, the zero-loss and
zero-duplicate checks: every backlog Message-ID stored once as an incoming
message (SQL on the store, no helpdesk code), every outbox row's Message-ID
accepted by the relay exactly once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import (
    AGENT,
    Mailbox,
    Side,
    Usage,
    Watch,
    clean_env,
    message_id_of,
    percentile,
    sender_of,
    write_config,
)
from bench._servers import (
    Commit,
    DaemonProcess,
    Imap,
    Postgres,
    Relay,
    Stored,
    Stores,
    outbox_ids,
    stored,
)
from tests.servers import free_port

WAIT_ARRIVAL = 30.0  # s, before an arrival counts as lost
GAP = 0.25  # s, after an acknowledgement before the next arrival
SETTLE = 1.0  # s, for the sources to reach IDLE after a pass found nothing (0.5 --quick)


@dataclass
class Checks:
    """Zero losses, zero duplicates: counted in the store and at the relay after the run."""

    store: Stored
    tickets: int  # tickets the backlog opened (after - before the release)
    outbox: int  # rows the run queued (all of it: warm-up, backlog, arrivals, replies)
    relay_lost: int  # outbox rows whose Message-ID the relay never accepted
    relay_duplicates: int  # acceptances beyond the first of one Message-ID

    @property
    def store_faults(self) -> int:
        return self.store.lost + self.store.duplicates

    @property
    def relay_faults(self) -> int:
        return self.relay_lost + self.relay_duplicates

    def describe(self) -> str:
        return (f"store: {self.store.distinct} of {self.store.expected} backlog Message-IDs in "
                f"{self.store.rows} incoming rows (lost {self.store.lost}, duplicated "
                f"{self.store.duplicates}, quarantined {self.store.quarantined}), "
                f"{self.tickets} tickets opened; relay: {self.outbox} outbox rows, not accepted "
                f"{self.relay_lost}, accepted twice {self.relay_duplicates}")


@dataclass
class Backlog:
    messages: int
    seconds: float  # release -> the commit completing the backlog
    first_commit: float  # release -> first commit
    move_seconds: float
    per_daemon: list[int]
    outcomes: dict[str, int]
    queued: int  # outbox rows the backlog queued
    ack_seconds: float | None  # release -> the relay accepted the last of them
    usage: Usage
    leases: list[int]
    errors: list[str] = field(default_factory=list)
    cold_ms: float | None = None  # the warm-up mail, the first after start: arrival -> commit
    moved: int = 0
    tickets: int = 0  # tickets the backlog opened
    mailboxes: int = 1
    checks: Checks | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def ack_rate(self) -> float | None:
        """Backlog mails per second counted to the relay's last acceptance."""
        return self.messages / self.ack_seconds if self.ack_seconds else None

    def describe(self) -> str:
        if not self.queued:
            acks = "no mail queued"
        elif self.ack_seconds is None:
            acks = f"{self.queued} mails queued, NOT all accepted by the relay"
        else:
            acks = (f"{self.queued} mails queued, the last accepted by the relay "
                    f"{self.ack_seconds:.2f} s after the release")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        plural = "s" if len(self.per_daemon) > 1 else ""
        text = (f"{self.rate:6.0f} msg/s ({self.messages} in {self.seconds:.2f} s; first commit "
                f"after {self.first_commit:.2f} s, UID MOVE {self.move_seconds:.2f} s); {counts};"
                f" {acks}; peak memory of the daemon tree{plural}: sum of VmRSS "
                f"{self.usage.peak_mb('helpdesk'):.0f} MB, of Pss "
                f"{self.usage.pss_mb('helpdesk'):.0f} MB; moved (to Processed or cur/) "
                f"{self.moved}; "
                f"first mail after start committed after {self.cold_ms or 0:.0f} ms")
        if len(self.per_daemon) > 1:
            text += f"; commits per daemon {self.per_daemon}, leases held {self.leases}"
        if self.errors:
            text += f"; error events: {sorted(set(self.errors))}"
        if self.checks is not None:
            text += f"\n           {self.checks.describe()}"
        return text + f"\n           CPU in cores: {self.usage.cpu_share(split='helpdesk')}"


@dataclass
class Latencies:
    commit: list[float] = field(default_factory=list)  # ms
    ack: list[float] = field(default_factory=list)  # ms
    reply: list[float] = field(default_factory=list)  # s, start of `tickets reply` -> relay
    reply_cli: list[float] = field(default_factory=list)  # s, the command's own run time
    lost: int = 0
    tickets: list[tuple[int, str]] = field(default_factory=list)  # (ticket, requester)

    def describe(self) -> str:
        if not self.commit:
            return f"arrivals: none committed ({self.lost} lost)"

        def p(values: list[float], q: float) -> str:
            return f"{percentile(values, q):.0f}" if values else "-"

        reply = f"{percentile(self.reply, 50):.2f}" if self.reply else "-"
        return (f"arrivals: {len(self.commit)} committed, commit p50 {p(self.commit, 50)} ms, "
                f"ack p50 {p(self.ack, 50)} ms, p95 {p(self.ack, 95)} ms; tickets reply -> "
                f"relay median {reply} s; lost {self.lost}")


After = Callable[[DaemonProcess, str, str], Latencies]


@dataclass(frozen=True)
class Shape:
    """What one run looks like."""

    rules: bool = True
    daemons: int = 1
    mailboxes: int = 1
    workers: int | None = None  # [intake] workers; None: the side's default
    store: str = "sqlite"
    lease: float | None = None  # [daemon] lease_seconds
    maildir: bool = False  # a [[maildir]] instead of IMAP mailboxes
    relay: bool = True  # False: the configured relay is a closed port, the sender idles


class ImapFeed:
    """The backlog as IMAP mail: staged in each user's holding folder, moved to INBOX at once."""

    def __init__(self, imap: Any, users: list[tuple[str, str]]) -> None:
        self.imap = imap
        self.users = users
        self.boxes = len(users)

    def stage(self, raws: Sequence[bytes]) -> None:
        for i, (user, _pw) in enumerate(self.users):
            self.imap.fill(user, raws[i::self.boxes])

    def deliver(self, box: int, raw: bytes) -> None:
        client = self.imap.connect(self.users[box][0])
        try:
            client.append("INBOX", raw)
        finally:
            client.logout()

    def release(self) -> list[tuple[float, float]]:
        return [self.imap.release(user) for user, _pw in self.users]

    def moved(self) -> int:
        return sum(self.imap.count(u, "Processed") for u, _pw in self.users)


class MaildirFeed:
    """The backlog as a local MTA's deliveries: written to tmp/, renamed into new/ at once."""

    boxes = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self.users: list[tuple[str, str]] = []  # no IMAP users
        for sub in ("new", "cur", "tmp"):
            (path / sub).mkdir(parents=True)
        self.staged: list[str] = []
        self.delivered = 0

    def stage(self, raws: Sequence[bytes]) -> None:
        for raw in raws:
            name = self._name()
            (self.path / "tmp" / name).write_bytes(raw)
            self.staged.append(name)

    def deliver(self, box: int, raw: bytes) -> None:
        name = self._name()
        (self.path / "tmp" / name).write_bytes(raw)
        os.rename(self.path / "tmp" / name, self.path / "new" / name)

    def release(self) -> list[tuple[float, float]]:
        started = time.time()
        for name in self.staged:
            os.rename(self.path / "tmp" / name, self.path / "new" / name)
        return [(started, time.time() - started)]

    def moved(self) -> int:
        return len(os.listdir(self.path / "cur"))

    def _name(self) -> str:
        # Maildir names sort in delivery order: <time>.<unique>.<host>.
        self.delivered += 1
        return f"1700000000.M{self.delivered:07d}P1.bench"


Feed = ImapFeed | MaildirFeed


class Bench:
    """The servers shared by every run (Dovecot, the relay, PostgreSQL), and one run."""

    def __init__(self, args: argparse.Namespace, workdir: Path, warmups: list[bytes]) -> None:
        self.args = args
        self.workdir = workdir
        self.warmups = iter(warmups)
        self.imap = Imap()
        self.relay = Relay()
        self.stores = Stores(workdir)
        self.runs = 0
        self.settle = SETTLE / 2 if args.quick else SETTLE
        self.reapers: list[threading.Thread] = []
        self.leftovers: list[str] = []  # processes that outlived their daemon by 3 s

    def _reap(self, procs: list[DaemonProcess]) -> None:
        """Check that stopped daemons left nothing behind (DaemonProcess.reap), in a thread:
        their workers end a moment after them, while the next run starts."""
        for proc in procs:
            for command in proc.reap():
                self.leftovers.append(f"{proc.log_path.parent.name}/{proc.name}: {command}")
                print(f"WARNING {proc.log_path.parent.name}/{proc.name}: a process of its "
                      f"session was still there 3 s after it exited (killed): {command}")

    @property
    def pg(self) -> Postgres | None:
        return self.stores.pg

    def postgres(self) -> Postgres:
        return self.stores.postgres()

    def close(self) -> None:
        for reaper in self.reapers:
            reaper.join()
        self.relay.close()
        self.imap.close()
        self.stores.close()

    def backlog(self, side: Side, raws: Sequence[bytes], shape: Shape,
                after: After | None = None) -> tuple[Backlog, Latencies | None]:
        """One run: start, warm up, release the backlog, measure, stop, check."""
        self.runs += 1
        run_dir = self.workdir / f"run{self.runs}-{side.label}"
        run_dir.mkdir()
        url = self.stores.fresh(side, shape.store, run_dir)
        feed: Feed = (MaildirFeed(run_dir / "Maildir") if shape.maildir else
                      ImapFeed(self.imap, [self.imap.new_user() for _ in range(shape.mailboxes)]))
        boxes = [Mailbox(f"box{i + 1}", self.imap.server.port, u, p) for i, (u, p) in
                 enumerate(feed.users)]
        # With no relay, the sender finds nothing listening and backs off: what ingest
        # does without a sender beside it in the process.
        smtp_port = self.relay.port if shape.relay else free_port()
        config = write_config(run_dir / "helpdesk.toml", side, db_url=url, rules=shape.rules,
                              smtp_port=smtp_port, mailboxes=boxes, workers=shape.workers,
                              lease_seconds=shape.lease,
                              maildir=feed.path if isinstance(feed, MaildirFeed) else None)
        feed.stage(raws)
        relay_from = self.relay.count()
        procs: list[DaemonProcess] = []
        try:
            # One after another: daemons started at the same instant on a fresh store
            # race to mirror the teams, and one of them exits (see the report).
            for i in range(shape.daemons):
                procs.append(DaemonProcess(side, config, f"daemon{i + 1}"))
                procs[-1].wait(lambda p=procs[-1]: p.started_at is not None, 90,
                               "daemon.started")
            self._settle(procs, [b.name for b in boxes], shape.lease)
            cold = self._warm_up(procs, feed)
            result, latencies = self._measure(procs, feed, url, raws, after,
                                              relay=shape.relay)
            result.cold_ms = cold
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.stop()
            self.reapers.append(threading.Thread(target=self._reap, args=(procs,)))
            self.reapers[-1].start()
        result.mailboxes = shape.mailboxes
        result.moved = feed.moved()
        result.checks = self._check(url, raws, result.tickets, relay_from, relay=shape.relay)
        return result, latencies

    def _settle(self, procs: list[DaemonProcess], names: list[str], lease: float | None) -> None:
        """Every mailbox leased (shared out among the daemons if it can be), IDLE reached."""

        def held() -> set[str]:
            return set().union(*(p.leases for p in procs))

        procs[0].wait(lambda: held() >= set(names), 90, "every mailbox leased")
        if len(procs) > 1 and len(names) > 1:
            deadline = time.monotonic() + (lease or 60.0) * 1.5
            while time.monotonic() < deadline and not all(p.leases for p in procs):
                time.sleep(0.2)
        time.sleep(self.settle)

    def _warm_up(self, procs: list[DaemonProcess], feed: Feed) -> float:
        """One request per mailbox before the backlog, as a running daemon has seen mail.

        The new daemon starts its parsing workers with the first mail; that cost
        is reported apart (arrival -> commit of the first mail, in ms), not
        charged to the backlog.
        """
        first = 0.0
        for box in range(feed.boxes):
            raw = next(self.warmups)
            seen = sum(len(p.commits) for p in procs)
            started = time.time()
            feed.deliver(box, raw)
            procs[0].wait(lambda s=seen: sum(len(p.commits) for p in procs) > s, 60,
                          "the warm-up mail's commit")
            committed = max(c.t for p in procs for c in p.commits)
            first = first or (committed - started) * 1000
            self.relay.wait(lambda r=raw, t=started: self.relay.first_to(sender_of(r), t)
                            is not None, 10)
        time.sleep(self.settle)
        return first

    def _measure(self, procs: list[DaemonProcess], feed: Feed, url: str,
                 raws: Sequence[bytes], after: After | None, *,
                 relay: bool = True) -> tuple[Backlog, Latencies | None]:
        groups = {"helpdesk": [p.pid for p in procs], "dovecot": self.imap.pids(),
                  "relay": [self.relay.pid]}
        if self.pg is not None and url.startswith("postgresql"):
            groups["postgres"] = self.pg.pids()
        ids = {message_id_of(raw) for raw in raws}
        n = len(raws)
        tickets_before = stored(url, ids).tickets
        queued_before = set(outbox_ids(url))
        leases = [len(p.leases) for p in procs]
        before = [len(p.commits) for p in procs]

        def backlog_commits() -> list[Commit]:
            return sorted((c for p, b in zip(procs, before, strict=True) for c in p.commits[b:]),
                          key=lambda c: c.t)

        def complete() -> Commit | None:
            """The commit that completed the backlog: every id, or a quarantine line each."""
            seen: set[str] = set()
            other = 0
            for commit in backlog_commits():
                if commit.message_id in ids:
                    seen.add(commit.message_id)
                elif commit.outcome == "quarantined":
                    other += 1
                if len(seen) + other >= n:
                    return commit
            return None

        with Watch(groups, pss=["helpdesk"]) as watch:
            released = feed.release()
            t0 = released[0][0]
            # Counting lines first keeps the check cheap: it runs at every log line.
            procs[0].wait(lambda: (sum(len(p.commits) for p in procs) - sum(before) >= n
                                   and complete() is not None), 120 + n / 5, f"{n} commits")
            ack_done, queued = (self._acks_accepted(url, queued_before, 60 + n / 20) if relay
                                else (None, len(set(outbox_ids(url)) - queued_before)))
            usage = watch.stop()
        last = complete()
        assert last is not None
        commits = [c for c in backlog_commits() if c.t <= last.t]
        outcomes = Counter(c.outcome for c in commits)
        result = Backlog(
            messages=n, seconds=last.t - t0, first_commit=commits[0].t - t0,
            move_seconds=sum(r[1] for r in released),
            per_daemon=[sum(1 for c in p.commits[b:] if c.t <= last.t)
                        for p, b in zip(procs, before, strict=True)],
            outcomes=dict(outcomes), queued=queued,
            ack_seconds=None if ack_done is None else ack_done - t0, usage=usage,
            leases=leases, errors=[e for p in procs for e in p.errors])
        result.tickets = stored(url, ids).tickets - tickets_before
        latencies = after(procs[0], feed.users[0][0], url) if after is not None else None
        return result, latencies

    def _acks_accepted(self, url: str, queued_before: set[str],
                       timeout: float) -> tuple[float | None, int]:
        """When the relay accepted the last mail queued since the release (None: not within
        `timeout`), and how many were queued."""
        deadline = time.monotonic() + timeout
        wanted: set[str] = set()
        while time.monotonic() < deadline:
            wanted = set(outbox_ids(url)) - queued_before
            accepted = {a.message_id: a.t for a in self.relay.since(0)}
            if wanted <= accepted.keys():
                return (max((accepted[m] for m in wanted), default=None)), len(wanted)
            self.relay.wait(lambda: False, 0.1)
        return None, len(wanted)

    def _check(self, url: str, raws: Sequence[bytes], tickets: int, relay_from: int, *,
               relay: bool = True) -> Checks:
        """After the daemons stopped: the store and the relay, counted (the relay's losses
        only when it could be reached)."""
        in_store = stored(url, {message_id_of(raw) for raw in raws})
        queued = outbox_ids(url)
        seen = Counter(a.message_id for a in self.relay.since(relay_from))
        lost = sum(1 for m in queued if not seen[m]) if relay else 0
        duplicates = sum(seen[m] - 1 for m in queued if seen[m] > 1)
        return Checks(in_store, tickets, len(queued), lost, duplicates)


# -- arrivals and replies, while the daemon of a run still runs -------------------------------


def arrivals_then_replies(bench: Bench, side: Side, mails: Sequence[bytes],
                          replies: int) -> After:
    """Requests appended one by one, then `tickets reply` on the first tickets they opened."""

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
