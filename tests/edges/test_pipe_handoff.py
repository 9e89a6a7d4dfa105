"""`helpdesk ingest` from an MTA pipe, handed to the daemon's LMTP socket ([lmtp] socket).

Real processes: the command runs as an MTA runs it (stdin, $RECIPIENT), against
a real aiosmtpd LMTP listener on a UNIX socket and a real store. The hand-over
must decide exactly as `ingest` always did: stored and committed before exit 0,
75 when the store is unavailable, and the command stores the mail itself when
no daemon listens or the daemon does not take the mail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk.errors import StoreUnavailable
from helpdesk.sources.base import Sink
from helpdesk.sources.lmtp import LmtpHandler, start_lmtp
from helpdesk.store.models import Message
from helpdesk.values import Incoming, IngestOutcome
from tests.conftest import Store
from tests.mailfactory import make_mail

SUPPORT = "support@example.test"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    path = tmp_path / "helpdesk.toml"
    path.write_text(
        f'[helpdesk]\nsupport_address = "{SUPPORT}"\n'
        f'[database]\nurl = "{store.url}"\n'
        '[lmtp]\nsocket = "run/lmtp.sock"\n'
    )
    return path


@pytest.fixture
def daemon(config: Path) -> Iterator[list[Sink]]:
    """An LMTP listener on the configured socket, passing mail to the sink put in the list."""
    sinks: list[Sink] = []

    def sink(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        return sinks[0](batch)

    controller = start_lmtp(LmtpHandler(sink, accept=lambda a: a == SUPPORT),
                            socket=config.parent / "run" / "lmtp.sock")
    try:
        yield sinks
    finally:
        controller.stop()


def pipe(config: Path, raw: bytes, recipient: str = SUPPORT
         ) -> subprocess.CompletedProcess[bytes]:
    """`helpdesk ingest` as Postfix's local(8) runs it, telling which modules it imported."""
    env = {**os.environ, "RECIPIENT": recipient, "SENDER": "dana@example.test"}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "helpdesk", "--config", str(config),
         "ingest"],
        input=raw, capture_output=True, env=env, cwd=ROOT, timeout=120, check=False,
    )


def imported(result: subprocess.CompletedProcess[bytes]) -> set[str]:
    lines = result.stderr.decode().splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


def origins(store: Store) -> dict[str, str]:
    with store.sessions() as session:
        return dict(session.execute(select(Message.message_id, Message.origin_source)).all())


def test_a_piped_mail_is_handed_to_the_daemon_and_committed_before_exit_0(
    daemon: list[Sink], sink: Sink, store: Store, config: Path
) -> None:
    daemon.append(sink)
    result = pipe(config, make_mail(message_id="<pipe-1@mail.example.com>"))
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().startswith("1 new tickets, 0 replies")
    assert origins(store) == {"pipe-1@mail.example.com": "lmtp"}  # stored by the daemon
    # The command never opened the store: none of what that costs was imported.
    assert not {"sqlalchemy", "pydantic", "jinja2", "helpdesk.intake"} & imported(result)

    again = pipe(config, make_mail(message_id="<pipe-1@mail.example.com>"))
    assert (again.returncode, again.stdout.decode().split(", ")[2]) == (0, "1 duplicates")


def test_a_line_longer_than_smtp_allows_is_handed_over_too(
    daemon: list[Sink], sink: Sink, store: Store, config: Path
) -> None:
    daemon.append(sink)
    raw = make_mail(message_id="<pipe-long@mail.example.com>", body="x" * 5000 + "\n")
    assert pipe(config, raw).returncode == 0
    assert origins(store) == {"pipe-long@mail.example.com": "lmtp"}


def test_store_unavailable_at_the_daemon_exits_75_and_stores_nothing(
    daemon: list[Sink], store: Store, config: Path
) -> None:
    def down(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        raise StoreUnavailable("database is locked")

    daemon.append(down)
    result = pipe(config, make_mail(message_id="<pipe-2@mail.example.com>"))
    assert result.returncode == 75, result.stderr.decode()[-2000:]
    assert b"451" in result.stderr
    assert origins(store) == {}


@pytest.mark.parametrize("case", ["no daemon", "not our recipient"])
def test_otherwise_the_command_stores_the_mail_itself(
    case: str, store: Store, config: Path, request: pytest.FixtureRequest
) -> None:
    recipient = SUPPORT
    if case == "not our recipient":
        request.getfixturevalue("daemon").append(request.getfixturevalue("sink"))
        recipient = "someone@elsewhere.example"
    result = pipe(config, make_mail(message_id="<pipe-3@mail.example.com>"), recipient)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert origins(store) == {"pipe-3@mail.example.com": "stdin"}
    # No socket to talk to: the LMTP client (smtplib, ssl) is not even imported.
    assert ("smtplib" in imported(result)) is (case == "not our recipient")
