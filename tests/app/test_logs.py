"""The daemon's JSON log carries only events: one JSON object a line, each named `noun.verb`.

First in-process (every kind of record a library can produce), then a real
daemon with Dovecot, an LMTP delivery and PostgreSQL, its whole output parsed.
"""

from __future__ import annotations

import io
import json
import logging
import re
import smtplib
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from helpdesk.logs import FOREIGN_EVENT, configure_logging
from tests.app.daemon_helpers import Daemon, append_all, config_text, request_mails, wait_for
from tests.conftest import Store
from tests.mailfactory import make_mail
from tests.servers import free_port, missing_server
from tests.servers.dovecot import USERS, DovecotServer, available
from tests.servers.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]
EVENT_NAME = re.compile(r"[a-z_]+\.[a-z_]+")


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every line as JSON (a line that is not fails the test), each a named event."""
    events = []
    for line in text.splitlines():
        event = json.loads(line)
        assert isinstance(event, dict), line
        assert EVENT_NAME.fullmatch(event["event"]), line
        events.append(event)
    return events


@pytest.fixture
def restore_hooks() -> Iterator[None]:
    saved = threading.excepthook, sys.excepthook
    yield
    threading.excepthook, sys.excepthook = saved
    logging.captureWarnings(False)


def library_chatter() -> None:
    """What aiosmtpd, Alembic, imapclient and asyncio say while we work."""
    logging.getLogger("mail.log").info("('127.0.0.1', 5123) >> b'LHLO [127.0.0.1]'")
    logging.getLogger("alembic.runtime.migration").info("Context impl PostgresqlImpl.")
    logging.getLogger("imapclient.imapclient").debug("Connected to 127.0.0.1 port 143")


@pytest.mark.usefixtures("restore_hooks")
def test_library_info_is_left_out_and_warnings_become_events() -> None:
    """At INFO our events pass; libraries only from WARNING, as `library.logged` events."""
    out = io.StringIO()
    configure_logging("json", logging.INFO, stream=out)
    structlog.get_logger("helpdesk.test").info("message.ingested", ticket_id=7)
    library_chatter()
    logging.getLogger("imapclient.imapclient").warning("Server closed the connection: BYE")
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("something is deprecated", DeprecationWarning, stacklevel=1)
    events = parse_lines(out.getvalue())
    assert [e["event"] for e in events] == ["message.ingested", *[FOREIGN_EVENT] * 3]
    assert events[0]["ticket_id"] == 7
    foreign = [(e["logger"], e["level"], e["message"]) for e in events[1:]]
    assert foreign[0] == ("imapclient.imapclient", "warning", "Server closed the connection: BYE")
    assert foreign[1] == ("asyncio", "error", "Task exception was never retrieved")
    assert foreign[2][0] == "py.warnings"
    assert "something is deprecated" in foreign[2][2]


@pytest.mark.usefixtures("restore_hooks")
def test_at_debug_library_info_shows_as_events_too() -> None:
    """Debugging us shows the libraries' INFO lines, still as events, still JSON."""
    out = io.StringIO()
    configure_logging("json", logging.DEBUG, stream=out)
    library_chatter()
    events = parse_lines(out.getvalue())
    assert [(e["event"], e["logger"]) for e in events] == [
        (FOREIGN_EVENT, "mail.log"), (FOREIGN_EVENT, "alembic.runtime.migration")]
    assert events[1]["message"] == "Context impl PostgresqlImpl."


@pytest.mark.usefixtures("restore_hooks")
def test_a_crashing_thread_is_an_event_not_a_traceback_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With hooks (the daemon), an uncaught exception in a thread is a `thread.crashed` event."""
    out = io.StringIO()
    configure_logging("json", logging.INFO, stream=out, hooks=True)

    def boom() -> None:
        raise RuntimeError("worker fell over")

    worker = threading.Thread(target=boom, name="imap-support")
    worker.start()
    worker.join()
    events = parse_lines(out.getvalue())
    assert [e["event"] for e in events] == ["thread.crashed"]
    assert events[0]["thread"] == "imap-support"
    assert "RuntimeError: worker fell over" in events[0]["exception"]
    assert capsys.readouterr().err == ""


# A fresh interpreter (structlog not imported yet) whose logging is configured when used.
DEFERRED = """
import logging, sys, warnings
from helpdesk.logs import configure_when_used
configure_when_used("json", logging.{level})
{steps}
print("STRUCTLOG", "structlog" in sys.modules, file=sys.stderr)
"""

DEFERRED_STEPS = {
    "our event": 'import structlog\nstructlog.get_logger("helpdesk.t").warning("ticket.merged", '
                 'ticket_id=3)',
    "a library's warning": 'logging.getLogger("imapclient").warning("Server said BYE")',
    "a python warning": 'warnings.warn("old API", DeprecationWarning)',
    "then the daemon's own": 'from helpdesk.logs import configure_logging\n'
                             'configure_logging("json", logging.INFO, stream=sys.stdout)\n'
                             'import structlog\n'
                             'structlog.get_logger("helpdesk.t").info("daemon.started")',
}


def run_deferred(steps: str, level: str = "INFO") -> tuple[list[dict[str, Any]], bool]:
    """The JSON events a fresh process printed, and whether it imported structlog."""
    script = DEFERRED.format(level=level, steps=steps)
    done = subprocess.run([sys.executable, "-W", "always", "-c", script], capture_output=True,
                          text=True, timeout=60, check=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    lines = (done.stdout + done.stderr).splitlines()
    marker = lines.pop()
    return parse_lines("\n".join(lines)), marker == "STRUCTLOG True"


@pytest.mark.parametrize("case", list(DEFERRED_STEPS))
def test_logging_configured_when_used_renders_the_first_record_as_an_event(case: str) -> None:
    """The CLI puts logging off until something logs: that first record is already an event."""
    events, imported = run_deferred(DEFERRED_STEPS[case])
    assert imported
    expected = {
        "our event": [("ticket.merged", None)],
        "a library's warning": [(FOREIGN_EVENT, "imapclient")],
        "a python warning": [(FOREIGN_EVENT, "py.warnings")],
        "then the daemon's own": [("daemon.started", None)],
    }[case]
    assert [(e["event"], e.get("logger")) for e in events] == expected
    if case == "our event":
        assert (events[0]["ticket_id"], events[0]["level"]) == (3, "warning")


def test_nothing_logged_nothing_imported() -> None:
    """A command that logs nothing (libraries' INFO is below the line) never imports structlog."""
    events, imported = run_deferred('logging.getLogger("sqlalchemy.engine").info("BEGIN")',
                                    level="WARNING")
    assert (events, imported) == ([], False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_the_daemons_whole_output_is_json_events(store: Store, tmp_path: Path) -> None:
    """IMAP, LMTP, the sender and PostgreSQL at work: every line of stdout+stderr is an event."""
    if not available():
        missing_server("dovecot not found (apt-get install dovecot-imapd)")
    dovecot = DovecotServer(USERS)
    sink = SmtpSink()
    dovecot.start()
    sink.start()
    try:
        append_all(dovecot, request_mails(2, batch="logs"))
        lmtp_port = free_port()
        config = tmp_path / "helpdesk.toml"
        config.write_text(config_text(db_url=store.url, smtp_port=sink.port,
                                      imap_port=dovecot.port)
                          + f'\n[lmtp]\nhost = "127.0.0.1"\nport = {lmtp_port}\n')
        daemon = Daemon(config, tmp_path / "logs").start()
        try:
            daemon.wait_event("daemon.started", timeout=30)
            with smtplib.LMTP("127.0.0.1", lmtp_port) as client:
                client.sendmail("dana.reyes@example.com", ["support@example.com"],
                                make_mail(subject="via LMTP", message_id="<lmtp-1@example.com>"))
            assert wait_for(lambda: len(sink.messages) >= 3, 30, alive=daemon)
            assert daemon.terminate()[0] == 0
        finally:
            daemon.kill()
    finally:
        sink.stop()
        dovecot.stop()
        dovecot.cleanup()
    events = parse_lines(daemon.output())
    names = {e["event"] for e in events}
    assert {"daemon.started", "message.ingested", "outbox.sent", "daemon.stopped"} <= names
    assert FOREIGN_EVENT not in names  # at INFO no library chatter reaches the stream
