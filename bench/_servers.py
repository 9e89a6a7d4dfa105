"""The processes bench/daemon.py runs: `helpdesk run`, the relay, Dovecot and PostgreSQL helpers.

Every time here is `time.time()` taken in this process the moment a line was
read (a daemon's log line, the relay's report) or a command was sent, so that
times from different processes on this machine compare directly.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import ROOT, Side, clean_env, upgrade, write_config
from bench.scale_fill import Cluster
from tests.servers import free_port
from tests.servers.dovecot import DovecotServer

APPEND_CHUNK = 100  # messages per MULTIAPPEND
STAGING = "Backlog"  # the folder a backlog waits in until it is released into INBOX


# -- helpdesk run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    t: float  # when its `message.ingested` line was read
    message_id: str
    outcome: str
    ticket_id: int | None


class DaemonProcess:
    """`helpdesk run --log-format json` of one side, its log read line by line.

    The new code writes `message.ingested` after the commit; the old code wrote
    it inside the transaction, just before its COMMIT (a few milliseconds early).
    """

    def __init__(self, side: Side, config: Path, name: str) -> None:
        self.side = side
        self.name = name
        self.log_path = config.parent / f"{name}.log"
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            side.cli(config, "run", "--log-format", "json"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            env=clean_env(PYTHONUNBUFFERED="1"), cwd=config.parent, start_new_session=True)
        self.commits: list[Commit] = []
        self.started_at: float | None = None
        self.leases: set[str] = set()
        self.errors: list[str] = []
        self.leftovers: list[str] = []
        self._tail: collections.deque[str] = collections.deque(maxlen=30)
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"log:{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.time()
            self._log.write(line)
            self._tail.append(line.rstrip())
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                self._note(entry, now)
        with self._changed:
            self._changed.notify_all()

    def _note(self, entry: dict[str, Any], now: float) -> None:
        event = entry.get("event")
        with self._changed:
            if event == "message.ingested":
                self.commits.append(Commit(now, str(entry.get("message_id") or "").strip("<>"),
                                           str(entry.get("outcome")), entry.get("ticket_id")))
            elif event == "daemon.started":
                self.started_at = now
            elif event == "imap.lease_acquired":
                self.leases.add(str(entry.get("mailbox")))
            elif event in ("imap.lease_released", "imap.lease_lost"):
                self.leases.discard(str(entry.get("mailbox")))
            elif entry.get("level") in ("error", "critical"):
                self.errors.append(str(event))
            self._changed.notify_all()

    def wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Until `ready()`; raises with the log's tail when the time is up or the daemon died."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    state = "exited" if self.proc.poll() is not None else "timed out"
                    tail = "\n".join(self._tail)
                    raise RuntimeError(f"{self.side.label} daemon {self.name} {state} waiting "
                                       f"for {what} ({self.log_path}):\n{tail}")
                self._changed.wait(min(left, 0.5))

    def terminate(self) -> None:
        """SIGTERM, as systemd stops it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for the daemon's own process (SIGKILL to its session after
        `timeout`); what it left behind is checked later by `reap()`."""
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return self.proc.returncode

    def reap(self, grace: float = 3.0) -> list[str]:
        """Processes of its session still there `grace` seconds after it exited: noted, killed.

        The daemon's forkserver and parsing workers end on their own a moment
        after it; waiting for them here, not in `stop()`, lets the next run
        start meanwhile.
        """
        assert self.proc.poll() is not None, "stop() first"
        deadline = time.monotonic() + grace
        while (left := _session_members(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.leftovers = [_command(pid) for pid in left]
        for pid in left:  # only processes of the session this daemon started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(5)
        self._log.close()
        return self.leftovers


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:100]
    except OSError:
        return f"pid {pid} (gone)"


def _session_members(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # state ppid pgrp session
            found.append(int(entry))
    return found


# -- the relay ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    t: float
    sender: str
    rcpt: tuple[str, ...]
    message_id: str


class Relay:
    """bench/_relay.py in a process of its own; what it accepted, as it accepts it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._relay", "--port", str(self.port)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if "ready" not in first:
            raise RuntimeError(f"the relay did not start: {first!r}")
        self.accepted: list[Accepted] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="relay", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            entry = json.loads(line)
            with self._changed:
                self.accepted.append(Accepted(entry["t"], entry["from"], tuple(entry["rcpt"]),
                                              entry.get("message_id", "")))
                self._changed.notify_all()

    def count(self) -> int:
        with self._changed:
            return len(self.accepted)

    def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(ready, timeout)

    def since(self, index: int) -> list[Accepted]:
        """What the relay accepted after its first `index` mails."""
        with self._changed:
            return self.accepted[index:]

    def first_to(self, address: str, after: float) -> float | None:
        with self._changed:
            return next((a.t for a in self.accepted if a.t >= after and address in a.rcpt), None)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- Dovecot -----------------------------------------------------------------------------------


class Imap:
    """A throwaway Dovecot (tests/servers/dovecot.py); one user per measured run."""

    def __init__(self, users: int = 200) -> None:
        # Every user exists from the start: Dovecot re-reads a changed passwd-file
        # only now and then, so users added later cannot always log in at once.
        self.server = DovecotServer(users={f"run{i}@example.test": f"pw{i}"
                                           for i in range(1, users + 1)})
        self.server.start()
        self._users = 0

    def pids(self) -> list[int]:
        return [self.server.proc.pid] if self.server.proc is not None else []

    def new_user(self) -> tuple[str, str]:
        """A user not used before: empty folders."""
        self._users += 1
        user = f"run{self._users}@example.test"
        return user, self.server.users[user]

    def connect(self, user: str) -> Any:
        from imapclient import IMAPClient

        client = IMAPClient("127.0.0.1", port=self.server.port, ssl=False, timeout=120)
        client.login(user, self.server.users[user])
        return client

    def fill(self, user: str, raws: Sequence[bytes], folder: str = STAGING) -> None:
        """Append every mail to `folder` (MULTIAPPEND in chunks); untimed."""
        client = self.connect(user)
        try:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for start in range(0, len(raws), APPEND_CHUNK):
                client.multiappend(folder, raws[start:start + APPEND_CHUNK])
        finally:
            client.logout()

    def release(self, user: str) -> tuple[float, float]:
        """Move the staged backlog into INBOX in one UID MOVE; (its start, its seconds)."""
        client = self.connect(user)
        try:
            client.select_folder(STAGING)
            uids = client.search("ALL")
            started = time.time()
            client.move(uids, "INBOX")
            return started, time.time() - started
        finally:
            client.logout()

    def count(self, user: str, folder: str) -> int:
        client = self.connect(user)
        try:
            if not client.folder_exists(folder):
                return 0
            return int(client.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])
        finally:
            client.logout()

    def close(self) -> None:
        self.server.stop()
        self.server.cleanup()


# -- PostgreSQL --------------------------------------------------------------------------------


class Postgres:
    """A throwaway cluster on disk with the default durability (fsync on), as production runs
    it (bench/scale_fill.py's Cluster); a database per run."""

    note = ("a throwaway cluster on disk (bench/scale_fill.py), default settings: fsync and "
            "synchronous_commit on, every commit waits for its flush")

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cluster: Cluster | None = None
        self.created = 0

    def start(self) -> Postgres:
        if not sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
            raise RuntimeError("PostgreSQL not found (apt-get install postgresql)")
        self.cluster = Cluster(self.workdir)
        self.cluster.start()
        return self

    def new_database(self, template: str | None = None) -> str:
        """An empty database, or a copy of `template` (a database nobody is connected to)."""
        import psycopg

        assert self.cluster is not None
        self.created += 1
        name = f"bench_{self.created}"
        copy = f" TEMPLATE {template}" if template else ""
        with psycopg.connect(_libpq(self.cluster.url("postgres")), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}{copy}")
        return self.cluster.url(name)

    def pids(self) -> list[int]:
        assert self.cluster is not None
        with contextlib.suppress(OSError, ValueError):
            pid_file = self.cluster.dir / "data" / "postmaster.pid"
            return [int(pid_file.read_text().split()[0])]
        return []

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


class Stores:
    """Fresh stores, each a copy of one migrated once per side by its `helpdesk db upgrade`
    (a copied file for SQLite, CREATE DATABASE ... TEMPLATE for PostgreSQL)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pg: Postgres | None = None
        self._templates: dict[tuple[str, str], str] = {}

    def postgres(self) -> Postgres:
        """The cluster, started on first use; RuntimeError when PostgreSQL is missing."""
        if self.pg is None:
            self.pg = Postgres(self.workdir).start()
        return self.pg

    def fresh(self, side: Side, where: str, home: Path) -> str:
        """The URL of a new, migrated store of `side`'s schema; a SQLite file goes in `home`."""
        key = (side.label, where)
        if key not in self._templates:
            template_home = self.workdir / f"template-{side.label}-{where}"
            template_home.mkdir()
            url = (self.postgres().new_database() if where == "postgres"
                   else f"sqlite:///{template_home / 'helpdesk.db'}")
            upgrade(side, write_config(template_home / "helpdesk.toml", side, db_url=url,
                                       rules=False))
            self._templates[key] = url
        template = self._templates[key]
        home.mkdir(parents=True, exist_ok=True)
        if where == "postgres":
            return self.postgres().new_database(template=template.rsplit("/", 1)[1])
        shutil.copyfile(template[len("sqlite:///"):], home / "helpdesk.db")
        return f"sqlite:///{home / 'helpdesk.db'}"

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    """Rows of one read-only query, straight from the store (no helpdesk code involved)."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(f"file:{url[len('sqlite:///'):]}?mode=ro",
                                                uri=True, timeout=30)) as conn:
            return list(conn.execute(query).fetchall())
    import psycopg

    with psycopg.connect(_libpq(url)) as conn:
        return list(conn.execute(query).fetchall())  # type: ignore[arg-type]


def outbox_ids(url: str) -> list[str]:
    """The Message-ID of every outbox row."""
    return [str(r[0]).strip("<>") for r in _rows(url, "SELECT message_id FROM outbox")]


@dataclass(frozen=True)
class Stored:
    """What the store holds of a run's mail: the zero-loss, zero-duplicate check."""

    expected: int  # distinct Message-IDs handed to the daemon
    rows: int  # incoming message rows carrying one of them
    distinct: int  # ... distinct ids among those rows
    tickets: int  # every ticket in the store
    quarantined: int  # every quarantined mail in the store

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.distinct - self.quarantined)

    @property
    def duplicates(self) -> int:
        return self.rows - self.distinct


def stored(url: str, message_ids: set[str]) -> Stored:
    """Count the incoming messages of `message_ids` in the store, tickets and quarantine."""
    ids = [str(r[0]).strip("<>") for r in
           _rows(url, "SELECT message_id FROM messages WHERE direction = 'in'")]
    mine = [i for i in ids if i in message_ids]
    tickets = int(_rows(url, "SELECT count(*) FROM tickets")[0][0])
    quarantined = int(_rows(url, "SELECT count(*) FROM quarantine")[0][0])
    return Stored(len(message_ids), len(mine), len(set(mine)), tickets, quarantined)
