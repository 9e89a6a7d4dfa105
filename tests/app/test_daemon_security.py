"""The daemon names what [security] leaves open, once, when it starts (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from helpdesk.daemon import Daemon
from helpdesk.settings import load_settings
from helpdesk.store import db as store_db


def started(tmp_path: Path, security: str) -> list[dict[str, object]]:
    """Start a daemon on a Maildir and SQLite with this [security] table; its log events."""
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "templates").mkdir(exist_ok=True)
    config = tmp_path / "helpdesk.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "helpdesk.db"}"\n'
        '[[maildir]]\nname = "support"\npath = "Maildir"\n'
        f"[security]\n{security}\n",
        encoding="utf-8",
    )
    settings = load_settings(config, {}, cwd=tmp_path)
    engine = store_db.make_engine(settings.database.url)
    store_db.upgrade(engine)
    engine.dispose()
    daemon = Daemon(settings, config_path=config, environ={})
    try:
        with capture_logs() as logs:
            daemon.startup()
    finally:
        if daemon.engine is not None:
            daemon.engine.dispose()
    return logs


@pytest.mark.parametrize(
    ("security", "starts"),
    [
        ("", "security.trusted_authserv_id: not set"),
        ("trust_from_header = true", "security.trust_from_header: the From address alone"),
    ],
)
def test_an_open_setup_is_logged_once_at_start(tmp_path: Path, security: str, starts: str
                                               ) -> None:
    """One warning event at start, naming the key and what it leaves open."""
    warned = [e for e in started(tmp_path, security) if e["event"] == "security.warned"]
    assert len(warned) == 1
    assert warned[0]["log_level"] == "warning"
    (text,) = warned[0]["warnings"]  # type: ignore[misc]
    assert str(text).startswith(starts)


def test_the_secure_setup_starts_quietly(tmp_path: Path) -> None:
    """With our MX's authserv-id configured there is nothing to warn about."""
    logs = started(tmp_path, 'trusted_authserv_id = "mx.example.org"')
    assert [e for e in logs if e["event"] == "security.warned"] == []
