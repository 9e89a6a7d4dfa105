"""`helpdesk config show|check`: the configuration in effect, and everything checked together."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpdesk.cli import cli
from helpdesk.cli.config import SECTIONS
from helpdesk.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"

CONFIG = """\
[helpdesk]
support_address = "support@example.com"
secret = "signing-secret-1"

[database]
url = "sqlite:///{db}"

[smtp]
host = "relay.example.com"
tls = "starttls"
username = "relay"
password_file = "smtp-password"

[[mailbox]]
name = "it"
host = "imap.example.com"
username = "it@example.com"
password = "imap-secret-2"

[[team]]
name = "networking"
"""


def run(config: Path, *args: str, env: dict[str, str | None] | None = None) -> Result:
    environ: dict[str, str | None] = {"HELPDESK_DATABASE_URL": None, "HELPDESK_SECRET": None,
                                      "HELPDESK_SMTP_PASSWORD": None}
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False,
                              env={**environ, **(env or {})})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "smtp-password").write_text("smtp-secret-3\n")
    path = tmp_path / "helpdesk.toml"
    path.write_text(CONFIG.format(db=tmp_path / "helpdesk.db"))
    return path


SECRETS = ("signing-secret-1", "imap-secret-2", "smtp-secret-3", "db-secret-4")


def test_show_lists_what_the_file_sets_with_secrets_hidden(config: Path) -> None:
    """Like `postconf -n`: the keys set, with the values in effect; every secret is ***."""
    result = run(config, "config", "show")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"# {config}"
    assert 'smtp.host = "relay.example.com"' in lines
    assert "smtp.port = 587" in lines  # derived from tls, so in effect although not written
    assert 'smtp.password = "***"' in lines
    assert 'helpdesk.secret = "***"' in lines
    assert 'mailbox "it".password = "***"' in lines
    assert 'team "networking".name = "networking"' in lines
    assert not any(line.startswith("daemon.") for line in lines)  # all defaults: not shown
    assert not any(secret in result.output for secret in SECRETS)


def test_show_defaults_adds_every_other_key(config: Path) -> None:
    """`--defaults` shows the built-in defaults too, and unset keys empty."""
    lines = run(config, "config", "show", "--defaults").output.splitlines()
    assert "daemon.lease_seconds = 60.0" in lines
    assert 'threading.foreign_tag = "new_ticket"' in lines
    assert "smtp.ca_file =" in lines
    assert 'mailbox "it".folder = "INBOX"' in lines


def test_show_marks_the_environment_and_hides_a_url_password(config: Path) -> None:
    """A value from the environment says which variable; a password in a URL is ***."""
    result = run(config, "config", "show", env={
        "HELPDESK_DATABASE_URL": "postgresql+psycopg://helpdesk:db-secret-4@db/helpdesk"})
    assert result.exit_code == 0, result.output
    assert ('database.url = "postgresql+psycopg://helpdesk:***@db/helpdesk"'
            "  # $HELPDESK_DATABASE_URL") in result.output.splitlines()
    assert not any(secret in result.output for secret in SECRETS)


def test_show_json(config: Path) -> None:
    """`--json` gives the same document, nested by section, secrets hidden."""
    result = run(config, "config", "show", "--json",
                 env={"HELPDESK_DATABASE_URL": "postgresql://h:db-secret-4@db/h"})
    data = json.loads(result.output)
    assert data["source"] == str(config)
    assert data["settings"]["smtp"]["password"] == "***"
    assert data["settings"]["mailbox"][0]["name"] == "it"
    assert data["environment"] == {"database.url": "HELPDESK_DATABASE_URL"}
    assert not any(secret in result.output for secret in SECRETS)


def shipped(tmp_path: Path, *, teams: bool = True) -> Path:
    """A fresh install: config.example.toml with the shipped rules and templates beside it."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    text = EXAMPLE.read_text()
    if not teams:
        text = text.split("[[team]]")[0]  # the teams, and the agents after them, gone
    config = tmp_path / "helpdesk.toml"
    config.write_text(text)
    return config


def test_check_passes_on_a_fresh_install_of_the_shipped_files(tmp_path: Path) -> None:
    """The example config declares every team the shipped rules route to, so all is well."""
    result = run(shipped(tmp_path), "config", "check")
    assert result.exit_code == 0, result.output
    shipped_templates = len(list((ROOT / "templates").glob("*.txt")))
    assert f"{shipped_templates} templates" in result.output
    assert "rules and 2 timers in 9 files" in result.output


def test_check_without_the_teams_reports_each_unknown_team(tmp_path: Path) -> None:
    """Rules that route to teams need those teams: every rule naming one is reported."""
    result = run(shipped(tmp_path, teams=False), "config", "check")
    assert result.exit_code == 1
    assert "10-security.toml: rule \"security-incident\": then.team: unknown team 'security'" \
        in result.output
    assert "40-network.toml" in result.output


def test_check_renders_templates_and_names_file_and_line(tmp_path: Path) -> None:
    """A misspelt name is found by rendering with a sample ticket, with its file and line."""
    config = shipped(tmp_path)
    acknowledge = tmp_path / "templates" / "acknowledge.txt"
    text = acknowledge.read_text().splitlines()
    text[6] = "    {{ ticket.subjetc }}"
    acknowledge.write_text("\n".join(text) + "\n")
    result = run(config, "config", "check")
    assert result.exit_code == 1
    assert (f"templates: {acknowledge}:7: UndefinedError: 'dict object' has no attribute "
            "'subjetc'") in result.output
    assert "1 problem found" in result.output


def test_check_lists_config_rules_and_template_problems_together(tmp_path: Path) -> None:
    """Everything wrong at once: a template syntax error, a bad rule, and a bad filter."""
    config = shipped(tmp_path)
    (tmp_path / "templates" / "broken.txt").write_text("Subject: x\n\n{% if %}\n")
    (tmp_path / "templates" / "filter.txt").write_text("Subject: {{ ticket.id|nosuch }}\n\nx\n")
    (tmp_path / "rules" / "99-bad.toml").write_text(
        '[[rule]]\nname = "bad"\n[rule.then]\npriority = "whenever"\n')
    result = run(config, "config", "check", "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["ok"] is False
    found = {(p["area"], Path(p["message"].split(":")[0]).name) for p in data["problems"]}
    assert found == {("templates", "broken.txt"), ("templates", "filter.txt"),
                     ("rules", "99-bad.toml")}


def test_check_reports_an_invalid_configuration(tmp_path: Path) -> None:
    """A broken configuration is listed key by key; rules and templates wait for it."""
    config = tmp_path / "helpdesk.toml"
    config.write_text('[smtp]\ntls = "tsl"\n[threading]\nforeign_tag = "allow"\n')
    result = run(config, "config", "check")
    assert result.exit_code == 1
    assert "smtp.tls: must be one of" in result.output
    assert "threading.foreign_tag" in result.output
    assert "rules and templates not checked" in result.output


def test_show_knows_every_section_of_the_settings() -> None:
    """A section added to the settings must be shown too (SECTIONS lists them in file order)."""
    shown = {attribute for attribute, _name, _array in SECTIONS}
    assert shown == set(Settings.model_fields) - {"source", "base_dir"}
