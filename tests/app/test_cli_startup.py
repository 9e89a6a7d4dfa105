"""Start-up: the CLI imports a command's module only when it runs, and heavy libraries only
where they are used. Asserted on the import graph (`sys.modules` in a fresh process), never on
a time: bench/startup.py prints the times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from sqlalchemy import select

from helpdesk.cli import COMMANDS, cli
from helpdesk.store.models import Team
from tests.conftest import Store
from tests.mailfactory import make_mail

ROOT = Path(__file__).resolve().parents[2]

# Runs the CLI as its console script does; an `atexit` handler reports which of the
# watched modules got imported (the CLI leaves with `os._exit` after the handlers).
PROBE = """
import atexit, json, sys
watched = {watched!r}

def report():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in watched or m in watched)
    print(json.dumps({{"loaded": loaded}}), file=sys.stderr)

atexit.register(report)
from helpdesk.cli import main
main({args!r})
"""


def run_python(script: str, cwd: Path,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`script` in a fresh interpreter with this checkout on its path and `env`, nothing else."""
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                          **(env or {})}, timeout=120)


def imported(args: list[str], watched: list[str], cwd: Path,
             env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    """Exit code, the watched modules a fresh `helpdesk ARGS` imported, and its stdout."""
    result = run_python(PROBE.format(watched=watched, args=args), cwd, env)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return result.returncode, report["loaded"], result.stdout


HEAVY = ["sqlalchemy", "jinja2", "aiosmtplib", "imapclient", "alembic", "aiosmtpd",
         "prometheus_client"]


def test_version_imports_no_heavy_library(tmp_path: Path) -> None:
    """`helpdesk --version` loads none of the store, template, mail or migration libraries."""
    code, loaded, out = imported(["--version"], [*HEAVY, "pydantic", "structlog"], tmp_path)
    assert code == 0
    assert out.startswith("helpdesk, version ")
    assert loaded == []


def test_help_lists_every_command_without_importing_any(tmp_path: Path) -> None:
    """`helpdesk --help` shows each command with its short help from the registry alone."""
    modules = sorted({entry.split(":")[0] for entry, _help in COMMANDS.values()})
    code, loaded, out = imported(["--help"], [*HEAVY, *modules], tmp_path)
    assert code == 0
    assert loaded == []
    listed = out.split("Commands:")[1]
    for name, (_entry, short) in COMMANDS.items():
        line = next(line for line in listed.splitlines() if line.split()[:1] == [name])
        assert short.split()[0] in line, line


def test_tickets_list_imports_no_alembic_templates_or_mail_transport(
    store: Store, tmp_path: Path
) -> None:
    """`tickets list` checks the schema without Alembic and loads no Jinja2, SMTP, IMAP, LMTP."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(f'[database]\nurl = "{store.url}"\n')
    # Nor our own mail composition and rule actions: listing tickets sends nothing.
    watched = ["alembic", "jinja2", "aiosmtplib", "imapclient", "aiosmtpd", "prometheus_client",
               "helpdesk.flow.relay", "helpdesk.desk.actions", "helpdesk.delivery.outbox",
               "helpdesk.mail.compose", "helpdesk.daemon"]
    code, loaded, out = imported(["--config", str(config), "tickets", "list"], watched,
                                 tmp_path)
    assert code == 0, out
    assert out.strip() == "No tickets."
    assert loaded == []


@pytest.mark.parametrize(("command", "answer"), [
    (["tickets", "list"], "No tickets."),
    (["stats", "--json"], '"open": []'),
    (["quarantine", "list", "--json"], "[]"),
    (["outbox", "list", "--json"], "[]"),
])
def test_reading_commands_use_core_without_the_orm_once_the_directory_is_mirrored(
    store: Store, tmp_path: Path, command: list[str], answer: str
) -> None:
    """`tickets list`, `stats`, `quarantine list` and `outbox list` import neither the ORM,
    the models nor structlog; a configuration whose teams the store does not mirror yet is
    mirrored first."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(f'[database]\nurl = "{store.url}"\n\n[[team]]\nname = "network"\n')
    orm = ["sqlalchemy.orm", "helpdesk.store.models"]
    code, loaded, out = imported(["--config", str(config), *command], orm, tmp_path)
    assert code == 0, out
    assert answer in out
    assert loaded == sorted(orm)  # the new team had to be mirrored
    with store.sessions() as session:
        assert session.scalars(select(Team.name)).all() == ["network"]
    # Nor structlog (the command logs nothing, and logging is configured only when used),
    # nor the SMTP client, nor the dataclasses of `values` (`names` has what they show).
    code, loaded, out = imported(["--config", str(config), *command],
                                 [*orm, "structlog", "aiosmtplib", "helpdesk.values"], tmp_path)
    assert code == 0, out
    assert answer in out
    assert loaded == []


def test_tickets_show_and_search_read_without_the_orm(store: Store, tmp_path: Path) -> None:
    """`tickets show` and `tickets search` import neither the ORM, the models nor structlog."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(f'[database]\nurl = "{store.url}"\n\n[[team]]\nname = "network"\n')
    mail = tmp_path / "one.eml"
    mail.write_bytes(make_mail(subject="Printer on fire"))
    # On SQLite, the writer does not load the PostgreSQL dialect either (its indexes are
    # the migrations' business).
    postgres = ["sqlalchemy.dialects.postgresql"]
    code, loaded, out = imported(["--config", str(config), "ingest", str(mail)], postgres,
                                 tmp_path)
    assert code == 0, out
    assert loaded == ([] if store.url.startswith("sqlite") else postgres)
    watched = ["sqlalchemy.orm", "helpdesk.store.models", "structlog", "aiosmtplib"]
    code, loaded, out = imported(["--config", str(config), "tickets", "show", "1", "--json"],
                                 watched, tmp_path)
    assert code == 0, out
    assert json.loads(out)["subject"] == "Printer on fire"
    assert loaded == []
    code, loaded, out = imported(["--config", str(config), "tickets", "search", "fire",
                                  "--json"], watched, tmp_path)
    assert code == 0, out
    assert [hit["id"] for hit in json.loads(out)] == [1]
    assert loaded == []


def test_the_schema_check_still_refuses_an_old_database_without_alembic(tmp_path: Path) -> None:
    """The check without Alembic still tells an un-upgraded database apart, and says what to do."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "empty.db"}"\n')
    code, loaded, _out = imported(["--config", str(config), "tickets", "list"], ["alembic"],
                                  tmp_path)
    assert code == 1
    assert loaded == []


def test_each_registered_short_help_is_the_commands_own() -> None:
    """The registry's short help (shown by --help without importing) matches each docstring."""
    for name, (_entry, short) in COMMANDS.items():
        command = cli.get_command(click.Context(cli), name)
        assert command is not None, name
        assert command.name == name
        assert command.get_short_help_str(limit=1000) == short, name


def test_an_unknown_command_is_a_usage_error() -> None:
    """A command that is not in the registry is exit 2, with Click's usual message."""
    result = subprocess.run([sys.executable, "-m", "helpdesk", "no-such-command"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "No such command 'no-such-command'" in result.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_still_works(name: str) -> None:
    """`helpdesk NAME --help` imports and shows the command (a broken entry would fail here)."""
    result = subprocess.run([sys.executable, "-m", "helpdesk", name, "--help"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"Usage: helpdesk {name}" in result.stdout


def test_only_the_daemon_module_for_metrics_imports_prometheus_client() -> None:
    """The layering of issue 11: intake, sources, SMTP and the services report to
    `helpdesk.observe` and never import prometheus_client; `helpdesk.daemon.metrics` does."""
    probe = ("import sys, helpdesk.daemon.service, helpdesk.desk.gauges, helpdesk.intake, "
             "helpdesk.sources.imap, helpdesk.sources.maildir, helpdesk.smtp, "
             "helpdesk.sources.lmtp\n"
             "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))\n"
             "import helpdesk.daemon.metrics\n"
             "print('prometheus_client' in sys.modules)\n")
    result = run_python(probe, ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "True"]


def test_the_sender_process_loads_what_it_sends_with_not_the_whole_daemon() -> None:
    """The outbox sender's process imports `daemon/sender_process.py` and what sending needs;
    not the daemon's service, its sources, the IMAP and LMTP libraries or the rules (memory)."""
    probe = ("import sys, helpdesk.daemon.sender_process\n"
             "from helpdesk.smtp import Sender\n"
             "from helpdesk.store.db import make_engine\n"
             "print(sorted(m for m in sys.modules if m in ('helpdesk.daemon.service', "
             "'helpdesk.sources', 'imapclient', 'aiosmtpd', 'helpdesk.rules', 'jinja2')))\n"
             "from helpdesk.daemon import Daemon\n"
             "print('helpdesk.daemon.service' in sys.modules)\n")
    result = run_python(probe, ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "True"]


def test_reading_commands_validate_a_file_once_and_again_after_any_change(
    store: Store, tmp_path: Path
) -> None:
    """`tickets list` validates its configuration (pydantic) the first time, and then, while
    neither the file nor the mirrored directory changes, only reads its [database] table."""
    config = tmp_path / "helpdesk.toml"
    base = f'[database]\nurl = "{store.url}"\n\n[[team]]\nname = "network"\n'
    config.write_text(base)
    watched = ["pydantic", "helpdesk.settings"]
    listing = ["--config", str(config), "tickets", "list"]

    def validated() -> bool:
        code, loaded, out = imported(listing, watched, tmp_path)
        assert code == 0, out
        assert out.strip() == "No tickets."
        return "helpdesk.settings" in loaded

    assert validated()
    assert not validated()
    assert not validated()
    # Any change of a value, in any table, is validated once.
    config.write_text(base + "\n[smtp]\nport = 2525\n")
    assert validated()
    assert not validated()
    # A broken file is reported every time, naming the key.
    config.write_text(base + '\n[smtp]\nport = "x"\n')
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", "from helpdesk.cli import main; main()",
                                 *listing], cwd=tmp_path, capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
                                timeout=120)
        assert result.returncode == 1
        assert "smtp.port" in result.stderr + result.stdout
    config.write_text(base)
    assert validated()
    assert not validated()
    # Another file's directory mirrored meanwhile (a daemon, a writer): validated again.
    other = tmp_path / "other.toml"
    other.write_text(f'[database]\nurl = "{store.url}"\n\n[[team]]\nname = "desktop"\n')
    mail = tmp_path / "one.eml"
    mail.write_bytes(make_mail(subject="Printer on fire"))
    code, _loaded, out = imported(["--config", str(other), "ingest", str(mail)], [], tmp_path)
    assert code == 0, out
    code, loaded, out = imported(listing, watched, tmp_path)
    assert code == 0, out
    assert "helpdesk.settings" in loaded


def test_a_command_collects_rarely_and_the_daemon_as_python_does(tmp_path: Path) -> None:
    """A command's cycle collector waits for 200,000 new objects; the daemon's is the default,
    its start-up objects frozen (a command's start-up survives whole, walking it is waste)."""
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print(gc.get_threshold(), file=sys.stderr))\n"
             "from helpdesk.cli import main\nmain(['--version'])\n")
    result = run_python(probe, tmp_path)
    assert result.returncode == 0
    assert result.stderr.strip().splitlines()[-1] == "(200000, 10, 10)"

    # `helpdesk run` up to the daemon's start, which reports instead of running.
    config = tmp_path / "helpdesk.toml"
    database = tmp_path / "h.db"
    config.write_text('[helpdesk]\nsupport_address = "support@example.org"\n'
                      f'[database]\nurl = "sqlite:///{database}"\n')
    daemon = ("import gc\nimport helpdesk.daemon\n"
              "def report(self):\n"
              "    print(gc.get_threshold(), gc.get_freeze_count() > 10000)\n    return 0\n"
              "helpdesk.daemon.Daemon.run = report\n"
              f"from helpdesk.cli import main\nmain(['--config', {str(config)!r}, 'run'])\n")
    result = run_python(daemon, tmp_path)
    assert result.stdout.strip() == "(700, 10, 10) True", result.stderr
