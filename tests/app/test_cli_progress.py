"""Long CLI work shows a progress bar on a terminal and nothing extra when piped (issue 11 item 3).

Each command runs as a real process twice: once on a pseudo-terminal (as a
person runs it), once with its output piped (as a script or cron does). On the
terminal the bar is drawn on standard error; in the pipe standard error stays
empty and standard output holds exactly what it always did.
"""

from __future__ import annotations

import errno
import fcntl
import mailbox
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from helpdesk.store.db import HEAD_REVISION
from tests.app.daemon_helpers import config_text, daemon_env, request_mails


def helpdesk(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "helpdesk", "--config", str(config), *args]


def on_terminal(command: list[str], cwd: Path) -> tuple[int, str]:
    """Run `command` with stdout and stderr on a pseudo-terminal 100 columns wide."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(command, cwd=cwd, env=daemon_env(), stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError as exc:  # EIO: the last writer closed the terminal
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(120), b"".join(chunks).decode(errors="replace")


def piped(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=daemon_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def write_config(tmp_path: Path, name: str) -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(config_text(db_url=f"sqlite:///{tmp_path / name}.db", smtp_port=1,
                                  imap_port=None))
    return config


def test_db_upgrade_shows_each_migration_on_a_terminal_and_nothing_in_a_pipe(
    tmp_path: Path,
) -> None:
    """An empty store gets every migration: a bar naming the revision on a terminal; in a
    pipe only the one line it always printed."""
    code, shown = on_terminal(helpdesk(write_config(tmp_path, "tty"), "db", "upgrade"), tmp_path)
    assert code == 0, shown
    assert "Migrating" in shown
    assert "100%" in shown
    assert "revision 0001" in shown
    assert shown.rstrip().endswith(f"upgraded from empty to revision {HEAD_REVISION}")

    result = piped(helpdesk(write_config(tmp_path, "pipe"), "db", "upgrade"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.endswith(f"upgraded from empty to revision {HEAD_REVISION}\n")
    assert len(result.stdout.splitlines()) == 1

    again = piped(helpdesk(tmp_path / "pipe.toml", "db", "upgrade"), tmp_path)
    assert again.stdout.endswith(f"already at revision {HEAD_REVISION}\n")
    assert again.stderr == ""


@pytest.mark.slow
def test_ingest_and_export_of_300_mails_show_a_bar_on_a_terminal_only(tmp_path: Path) -> None:
    """An mbox of 300 requests and the export of their 300 tickets: a bar on a terminal;
    piped, the summary line (or the export) and not a byte more."""
    box = mailbox.mbox(str(tmp_path / "archive.mbox"))
    for raw in request_mails(300, batch="bar"):
        box.add(raw)
    box.flush()
    box.close()
    tty, pipe = write_config(tmp_path, "tty"), write_config(tmp_path, "pipe")
    for config in (tty, pipe):
        assert piped(helpdesk(config, "db", "upgrade"), tmp_path).returncode == 0
    ingest = ["ingest", "--mbox", str(tmp_path / "archive.mbox")]
    summary = "300 new tickets, 0 replies, 0 duplicates, 0 quarantined"

    code, shown = on_terminal(helpdesk(tty, *ingest), tmp_path)
    assert code == 0, shown
    assert "Ingesting" in shown
    assert "100%" in shown
    assert shown.rstrip().endswith(summary)
    result = piped(helpdesk(pipe, *ingest), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == summary + "\n"

    export = helpdesk(pipe, "export", "--format", "mbox")
    code, shown = on_terminal([*export, "-o", str(tmp_path / "out.mbox")], tmp_path)
    assert code == 0, shown
    assert "Exporting tickets" in shown
    assert "100%" in shown
    raw = subprocess.run(export, cwd=tmp_path, env=daemon_env(), stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=300)
    assert raw.returncode == 0
    assert raw.stderr == b""
    assert raw.stdout == (tmp_path / "out.mbox").read_bytes()
    assert raw.stdout.count(b"\nFrom ") + 1 == 600  # each request and its acknowledgement
