"""Daemon test helpers: a config file, `helpdesk run` as a process, IMAP and store looks.

The daemon runs as `python -m helpdesk --config <file> run --log-format json`,
its JSON log lines go to one file per start, and every wait polls with a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from imapclient import IMAPClient
from sqlalchemy import func, select

from helpdesk.store.models import MailboxState, Message, OutboxItem, QuarantineItem, TicketTag
from tests.conftest import Store
from tests.mailfactory import make_mail
from tests.servers import free_port
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp_controller import ClosingController
from tests.servers.smtp_sink import RecordingHandler, SmtpSink

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
TEMPLATES = ROOT / "templates"

USER = "support@example.test"
PASSWORD = "support-pw"

TEAMS = (
    ("support", "it-support-team@example.org"),
    ("networking", "netops@example.org"),
    ("infrastructure", "infra@example.org"),
    ("identity-and-access", "iam@example.org"),
    ("security", "secops@example.org"),
)


def config_text(
    *,
    db_url: str,
    smtp_port: int,
    imap_port: int | None,
    rules_dir: Path = RULES,
    templates_dir: Path = TEMPLATES,
    lease_seconds: float = 60.0,
    poll_interval: float = 2.0,
    batch_size: int = 50,
    message_time_limit: float = 60.0,
) -> str:
    """A complete helpdesk.toml; without `imap_port` it names no mailbox at all."""
    mailbox = "" if imap_port is None else f"""
[[mailbox]]
name = "support"
host = "127.0.0.1"
port = {imap_port}
tls = "none"
username = "{USER}"
password = "{PASSWORD}"
folder = "INBOX"
processed_folder = "Processed"
failed_folder = "Failed"
poll_interval = {poll_interval:.1f}
batch_size = {batch_size}
"""
    teams = "".join(f'\n[[team]]\nname = "{name}"\naddress = "{address}"\n'
                    for name, address in TEAMS)
    return f"""\
[helpdesk]
name = "Example IT"
support_address = "support@example.com"
secret = "test-signing-secret"

[database]
url = "{db_url}"

[daemon]
send_interval = 0.5
lease_seconds = {lease_seconds:.1f}
message_time_limit = {message_time_limit:.1f}

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
timeout = 5.0

[auto_reply]
max_per_sender = 1000

[rules]
dir = "{rules_dir}"

[templates]
dir = "{templates_dir}"
{mailbox}{teams}"""


def daemon_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "helpdesk", "--config", str(config), "run",
            "--log-format", "json"]


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "HELPDESK_DATABASE_URL",
                        "HELPDESK_CONFIG")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Daemon:
    """`helpdesk run` as a real process; every start logs to its own file in `logdir`."""

    def __init__(self, config: Path, logdir: Path, *, name: str = "daemon",
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.logdir = logdir
        self.name = name
        self.env = daemon_env(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        logdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> Daemon:
        assert not self.running, "already running"
        log = self.logdir / f"{self.name}-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                daemon_command(self.config), cwd=ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        """Everything every start wrote (JSON lines and anything else)."""
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log events of every start, optionally only those called `name`."""
        found = []
        for line in self.output().splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by SIGKILL
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def wait_event(self, name: str, timeout: float = 15.0,
                   where: Callable[[dict[str, Any]], bool] = lambda _e: True,
                   count: int = 1) -> list[dict[str, Any]]:
        """Wait until `count` events called `name` (and matching `where`) were logged."""
        def enough() -> bool:
            return len([e for e in self.events(name) if where(e)]) >= count
        if not wait_for(enough, timeout, step=0.05, alive=self):
            raise AssertionError(
                f"no {count} x {name!r} within {timeout} s (running={self.running});"
                f" output:\n{self.output()[-4000:]}")
        return [e for e in self.events(name) if where(e)]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds until the process was gone)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: a crash at whatever point the process is."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


@contextlib.contextmanager
def cleanup(*daemons: Daemon) -> Iterator[None]:
    """Kill whatever is still running when the block ends, passed or failed."""
    try:
        yield
    finally:
        for daemon in daemons:
            daemon.kill()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.05,
             alive: Daemon | None = None) -> bool:
    """Poll `predicate` until true or `timeout`; stops early when `alive` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if alive is not None and not alive.running:
            break
        time.sleep(step)
    return predicate()


# -- SMTP ----------------------------------------------------------------------


class _SlowHandler(RecordingHandler):
    """Takes `delay` seconds over each DATA, like a relay that scans content."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


class _SlowSink(SmtpSink):
    def __init__(self, delay: float) -> None:
        # Not SmtpSink.__init__: its Controller would own an event loop nobody closes.
        self.handler = _SlowHandler(delay)
        self.port = free_port()
        self.controller = ClosingController(self.handler, hostname="127.0.0.1", port=self.port)


def start_sink(delay: float = 0.0) -> SmtpSink:
    """A started aiosmtpd sink; with `delay`, each message takes that long to accept."""
    sink = _SlowSink(delay) if delay else SmtpSink()
    sink.start()
    return sink


def received_ids(sink: SmtpSink) -> list[str]:
    """The Message-ID (without <>) of every mail the sink accepted, duplicates included."""
    return [bare(header(m.data, "Message-ID") or "") for m in sink.messages]


# -- IMAP ----------------------------------------------------------------------


def connect(server: DovecotServer) -> Any:
    """Another mail client's connection: logged in, nothing selected."""
    client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=10)
    client.login(USER, PASSWORD)
    return client


def logout(client: Any) -> None:
    try:
        client.logout()
    except Exception:
        with contextlib.suppress(Exception):
            client.shutdown()


def append_all(server: DovecotServer, messages: list[bytes], folder: str = "INBOX",
               chunk: int = 100) -> None:
    """MULTIAPPEND (RFC 3502) in chunks when offered, else one APPEND each."""
    client = connect(server)
    try:
        if client.has_capability("MULTIAPPEND"):
            for start in range(0, len(messages), chunk):
                client.multiappend(folder, messages[start:start + chunk])
        else:
            for message in messages:
                client.append(folder, message)
    finally:
        logout(client)


def folder_counts(server: DovecotServer, *folders: str) -> dict[str, int]:
    """MESSAGES of each folder (0 when it does not exist), on a fresh connection."""
    client = connect(server)
    try:
        counts = {}
        for folder in folders:
            exists = client.folder_exists(folder)
            counts[folder] = (int(client.folder_status(folder, ["MESSAGES"])[b"MESSAGES"])
                              if exists else 0)
        return counts
    finally:
        logout(client)


def folder_message_ids(server: DovecotServer, folder: str) -> list[str]:
    """The Message-ID header of every message in `folder`."""
    client = connect(server)
    try:
        if not client.folder_exists(folder):
            return []
        client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        if not uids:
            return []
        fetched = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        return [bare(header(item[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"], "Message-ID") or "")
                for item in fetched.values()]
    finally:
        logout(client)


# -- mail ----------------------------------------------------------------------

_TOPICS = (
    ("Printer on floor {n} shows error E-104",
     "Hi,\n\nthe printer next to room {n} jams on every second page and shows E-104.\n"),
    ("Laptop fan very loud since the update",
     "Hello,\n\nmy laptop (asset {n}) is very loud since yesterday's update.\n"),
    ("Cannot connect to the VPN from home",
     "Hi team,\n\nsince this morning the VPN client says 'authentication timeout' "
     "(attempt {n}).\n"),
    ("Please install Visio on my workstation",
     "Hello,\n\ncould you install Visio on my workstation WS-{n}? My manager approved it.\n"),
    ("Access to the finance share",
     "Hi,\n\nI need read access to the finance share for the audit, ticket ref {n}.\n"),
    ("Second monitor flickering",
     "Good morning,\n\nthe second monitor on desk {n} flickers every few minutes.\n"),
)


def request_mails(count: int, batch: str = "b") -> list[bytes]:
    """`count` distinct new requests, each from its own person with its own Message-ID."""
    mails = []
    for i in range(count):
        subject, body = _TOPICS[i % len(_TOPICS)]
        mails.append(make_mail(
            subject=subject.format(n=i),
            sender=f"Person {batch}{i} <person.{batch}{i}@example.org>",
            to="support@example.com",
            message_id=f"<{batch}-{i}.{i * 7919 % 10007}@mail.example.org>",
            body=body.format(n=i) + f"\nThanks,\nPerson {batch}{i}\n",
        ))
    return mails


def bare(message_id: str) -> str:
    """A Message-ID without its angle brackets, as the store keeps it."""
    return message_id.strip().strip("<>")


def header(raw: bytes, name: str) -> str | None:
    """A header's unfolded value from raw bytes, or None."""
    value = message_from_bytes(raw).get(name)
    return None if value is None else " ".join(str(value).split())


def message_ids_of(mails: Iterable[bytes]) -> list[str]:
    """The Message-IDs (without <>) of raw mails, in order."""
    return [bare(header(raw, "Message-ID") or "") for raw in mails]


# -- the store -----------------------------------------------------------------


def incoming_ids(store: Store) -> list[str]:
    with store.sessions() as session:
        return list(session.scalars(
            select(Message.message_id).where(Message.direction == "in")))


def outbox_rows(store: Store) -> list[OutboxItem]:
    with store.sessions() as session:
        rows = list(session.scalars(select(OutboxItem).order_by(OutboxItem.id)))
        session.expunge_all()
        return rows


def quarantine_count(store: Store) -> int:
    with store.sessions() as session:
        return session.scalar(select(func.count()).select_from(QuarantineItem)) or 0


def mailbox_state(store: Store, name: str = "support") -> MailboxState | None:
    with store.sessions() as session:
        state = session.get(MailboxState, name)
        if state is not None:
            session.expunge(state)
        return state


def ticket_tags(store: Store) -> dict[int, set[str]]:
    with store.sessions() as session:
        tags: dict[int, set[str]] = {}
        for ticket_id, tag in session.execute(select(TicketTag.ticket_id, TicketTag.tag)):
            tags.setdefault(ticket_id, set()).add(tag)
        return tags


def ticket_of(store: Store, message_id: str) -> int | None:
    with store.sessions() as session:
        return session.scalar(select(Message.ticket_id).where(
            Message.message_id == bare(message_id), Message.direction == "in"))


# -- processes -----------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name may contain spaces and parentheses: ppid follows the last ")".
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP `pids` for the block, SIGCONT afterwards: a server that hangs, not one that died."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
