"""SIGHUP re-reads the whole configuration (issue 8 §13): mailbox settings and password files
included; what cannot change without a restart is logged and kept."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.app.daemon_helpers import (
    PASSWORD,
    append_all,
    connect,
    daemon_command,
    daemon_env,
    incoming_ids,
    logout,
    request_mails,
    wait_for,
)
from tests.app.test_daemon import SQLITE, DaemonFactory, daemons, dovecot, settings_for, sink
from tests.conftest import Store
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp_sink import SmtpSink

__all__ = ["daemons", "dovecot", "sink"]  # fixtures, imported for pytest


def mailbox_list(config: Path) -> list[dict[str, object]]:
    result = subprocess.run([*daemon_command(config)[:-3], "mailbox", "list", "--json"],
                            cwd=config.parent, env=daemon_env(), capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


@pytest.mark.slow
@SQLITE
def test_sighup_applies_a_fixed_password_file_and_a_new_mailbox_at_once(
    store: Store, sink: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory,
    tmp_path: Path,
) -> None:
    """A wrong password (login failed, shown by `mailbox list`) is fixed in its file: after
    SIGHUP the mailbox logs in at once, without waiting for its backoff; a mailbox added to the
    file starts; the database URL cannot change and is reported."""
    secret = tmp_path / "imap-password"
    secret.write_text("wrong\n")
    config_text = settings_for(store, sink, dovecot, poll_interval=60.0).replace(
        f'password = "{PASSWORD}"', f'password_file = "{secret}"')
    daemon = daemons(config_text, name="reload")
    daemon.start()
    daemon.wait_event("imap.login_failed", timeout=30)
    (row,) = mailbox_list(daemon.config)
    assert str(row["state"]).startswith("login failed")
    assert "AUTHENTICATIONFAILED" in str(row["last_error"])

    client = connect(dovecot)
    try:
        client.create_folder("Second")
    finally:
        logout(client)
    secret.write_text(PASSWORD + "\n")
    changed = daemon.config.read_text().replace(store.url, store.url + "?moved=1") + (
        f'\n[[mailbox]]\nname = "second"\nhost = "127.0.0.1"\nport = {dovecot.port}\n'
        f'tls = "none"\nusername = "support@example.test"\npassword_file = "{secret}"\n'
        f'folder = "Second"\nprocessed_folder = "Second/Done"\n')
    daemon.config.write_text(changed)
    daemon.signal(signal.SIGHUP)
    (reloaded,) = daemon.wait_event("config.reloaded", timeout=15)
    assert sorted(reloaded["workers_changed"]) == ["imap:second", "imap:support"]
    assert reloaded["needs_restart"] == ["database.url"]
    daemon.wait_event("imap.connected", timeout=10, count=2)

    append_all(dovecot, request_mails(1, batch="first"), folder="INBOX")
    append_all(dovecot, request_mails(1, batch="second"), folder="Second")
    assert wait_for(lambda: len(incoming_ids(store)) == 2, 30, 0.2, alive=daemon)
    rows = {r["name"]: r for r in mailbox_list(daemon.config)}
    assert rows["support"]["state"] == "ok"
    assert rows["second"]["state"] == "ok"
    assert daemon.terminate()[0] == 0
