"""Database credentials: `[database] password_file`, a refused login is a configuration error.

Against the throwaway PostgreSQL: a role with a password and a pg_hba.conf line
that makes only that role log in with scram-sha-256 (everyone else keeps trust).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, text

from helpdesk.cli import EX_TEMPFAIL, cli
from tests.mailfactory import make_mail
from tests.servers.postgres import PgServer

pytestmark = pytest.mark.postgres

ROLE = "helpdesk_pw"
PASSWORD = "c0rrect-h0rse-db"
WRONG = "wr0ng-batt3ry-db"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def password_db(pg_server: PgServer, pg_admin: Engine, pg_template: str) -> Iterator[str]:
    """A migrated database owned by a role that must log in with a password; its URL."""
    with pg_admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"))
        conn.execute(text(f'CREATE DATABASE "pw_db" TEMPLATE "{pg_template}" OWNER {ROLE}'))
    owner = create_engine(pg_server.url("pw_db"))
    with owner.begin() as conn:  # the template's tables belong to the test superuser
        conn.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {ROLE}"))
        conn.execute(text(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {ROLE}"))
    owner.dispose()
    hba = pg_server.data / "pg_hba.conf"
    before = hba.read_text()
    # First match wins: this line concerns our role only.
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n{before}")
    with pg_admin.connect() as conn:
        conn.execute(text("SELECT pg_reload_conf()"))
    yield f"postgresql+psycopg://{ROLE}@127.0.0.1:{pg_server.port}/pw_db"
    hba.write_text(before)
    with pg_admin.connect() as conn:
        conn.execute(text("SELECT pg_reload_conf()"))
        conn.execute(text('DROP DATABASE "pw_db" WITH (FORCE)'))
        conn.execute(text(f"DROP ROLE {ROLE}"))


def write_config(tmp_path: Path, url: str, password: str | None) -> Path:
    extra = ""
    if password is not None:
        (tmp_path / "db-password").write_text(password + "\n")
        extra = 'password_file = "db-password"\n'
    config = tmp_path / "helpdesk.toml"
    config.write_text(f'[database]\nurl = "{url}"\n{extra}')
    return config


def run(config: Path, *args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], input=stdin,
                              catch_exceptions=False,
                              env={"HELPDESK_DATABASE_URL": None,
                                   "HELPDESK_DATABASE_PASSWORD": None})


def test_the_password_from_password_file_logs_in(password_db: str, tmp_path: Path) -> None:
    """With the right password in password_file the command works."""
    result = run(write_config(tmp_path, password_db, PASSWORD), "tickets", "list")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "No tickets."


def test_a_wrong_password_is_a_configuration_error(password_db: str, tmp_path: Path) -> None:
    """A refused login is exit 1 naming the database and the reason, never 75 'try later'."""
    config = write_config(tmp_path, password_db, WRONG)
    result = run(config, "-vv", "tickets", "list")
    assert result.exit_code == 1, result.output
    assert "invalid configuration" in result.output
    assert f"{config}: database: the database server refused the login" in result.output
    assert "password authentication failed" in result.output
    assert "try again later" not in result.output
    assert WRONG not in result.output


def test_a_missing_password_is_a_configuration_error(password_db: str, tmp_path: Path) -> None:
    """No password for a role that needs one: exit 1 with libpq's reason."""
    result = run(write_config(tmp_path, password_db, None), "tickets", "list")
    assert result.exit_code == 1, result.output
    assert "no password supplied" in result.output


def test_db_commands_report_a_refused_login_the_same_way(password_db: str,
                                                         tmp_path: Path) -> None:
    """`db status` and `db upgrade` (which reach the store directly) say the same."""
    config = write_config(tmp_path, password_db, WRONG)
    for args in (("db", "status"), ("db", "upgrade")):
        result = run(config, *args)
        assert result.exit_code == 1, result.output
        assert "refused the login" in result.output
        assert WRONG not in result.output
    assert "revision" in run(write_config(tmp_path, password_db, PASSWORD), "db",
                             "status").output


def test_an_mta_pipe_defers_rather_than_bounces(password_db: str, tmp_path: Path) -> None:
    """Mail piped in while the password is wrong is kept by the MTA (75), like any config
    error on that path: the sender is not to blame for our configuration."""
    config = write_config(tmp_path, password_db, WRONG)
    result = run(config, "ingest", stdin=make_mail())
    assert result.exit_code == EX_TEMPFAIL
    assert "refused the login" in result.output


def test_the_daemon_refuses_to_start_and_logs_no_password(password_db: str,
                                                          tmp_path: Path) -> None:
    """`helpdesk run` with a wrong password exits 3 with the reason; no password in the log."""
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    config = write_config(tmp_path, password_db, WRONG)
    config.write_text(config.read_text() + f'\n[[maildir]]\nname = "local"\npath = "{maildir}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "helpdesk", "--config", str(config), "run", "--log-format",
         "json", "--log-level", "debug"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 3, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    failed = [e for e in events if e["event"] == "daemon.startup_failed"]
    assert "refused the login" in failed[0]["error"]
    assert WRONG not in result.stdout + result.stderr


def test_a_role_without_rights_is_a_configuration_error(
    password_db: str, pg_admin: Engine, pg_server: PgServer, tmp_path: Path
) -> None:
    """Logged in but not allowed to read our tables: exit 1 saying so, not a traceback."""
    with pg_admin.connect() as conn:
        conn.execute(text("CREATE ROLE helpdesk_norights LOGIN"))
    try:
        url = f"postgresql+psycopg://helpdesk_norights@127.0.0.1:{pg_server.port}/pw_db"
        result = run(write_config(tmp_path, url, None), "tickets", "list")
        assert result.exit_code == 1, result.output
        assert "refused access" in result.output
        assert "permission denied" in result.output
    finally:
        with pg_admin.connect() as conn:
            conn.execute(text("DROP ROLE helpdesk_norights"))
