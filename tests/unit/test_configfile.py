"""`configfile.reading_config`: the database login of commands that only read, found without
validating the file, and always the one the settings would give (or None: use the settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdesk.configfile import document_digest, reading_config
from helpdesk.errors import ConfigError
from helpdesk.settings import load_settings

SAME_AS_SETTINGS = [
    pytest.param("", {}, id="no database table: the default, next to the file"),
    pytest.param('[database]\nurl = "sqlite:///data/desk.db"\n', {}, id="relative sqlite"),
    pytest.param('[database]\nurl = "sqlite:////var/lib/helpdesk/desk.db?timeout=5"\n', {},
                 id="absolute sqlite with a query"),
    pytest.param('[database]\nurl = "postgresql+psycopg://helpdesk@db/helpdesk"\n'
                 'password_file = "secrets/db"\n', {}, id="password file"),
    pytest.param('[database]\nurl = "postgresql+psycopg://helpdesk@db/helpdesk"\n'
                 'password_file = "secrets/db"\n', {"HELPDESK_DATABASE_PASSWORD": "from-env"},
                 id="the environment's password wins"),
    pytest.param('[database]\nurl = "sqlite:///file.db"\n',
                 {"HELPDESK_DATABASE_URL": "sqlite:///typed.db"},
                 id="the environment's URL, relative to the working directory"),
    pytest.param('[helpdesk]\ntag_prefix = "HD-"\n', {}, id="tag prefix"),
]


@pytest.mark.parametrize(("text", "environ"), SAME_AS_SETTINGS)
def test_the_login_is_the_one_the_settings_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, environ: dict[str, str]
) -> None:
    config = tmp_path / "etc" / "helpdesk.toml"
    config.parent.mkdir()
    config.write_text(text)
    secret = tmp_path / "etc" / "secrets" / "db"
    secret.parent.mkdir()
    secret.write_text("s3cret\n")
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    short = reading_config(config, environ, cwd=elsewhere)
    settings = load_settings(config, environ, cwd=elsewhere)
    assert short is not None
    assert short.source == settings.source
    assert short.url == settings.database.url
    assert short.password == settings.database.password_value
    assert short.tag_prefix == settings.helpdesk.tag_prefix


@pytest.mark.parametrize("text", [
    pytest.param("[database\n", id="not TOML"),
    pytest.param('[database]\nurl = "not a url"\n', id="a bad URL"),
    pytest.param("[database]\nurl = 5\n", id="not a string"),
    pytest.param('[database]\nurl = "sqlite:///x.db"\npool_size = 5\n',
                 id="a key it does not know"),
    pytest.param('[database]\npassword_file = "missing"\n', id="an unreadable password file"),
    pytest.param('[database]\nurl = "postgresql://u:pw@db/x"\npassword_file = "pw"\n',
                 id="a password in the URL and in a file"),
    pytest.param('[helpdesk]\ntag_prefix = "a b"\n', id="a bad tag prefix"),
    pytest.param('helpdesk = "x"\n', id="a section that is not a table"),
])
def test_anything_unusual_is_left_to_the_settings(tmp_path: Path, text: str) -> None:
    """None, so that the settings report the problem with its key (or handle what we don't)."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(text)
    (tmp_path / "pw").write_text("pw\n")
    assert reading_config(config, {}, cwd=tmp_path) is None


def test_a_bad_url_in_the_environment_is_left_to_the_settings(tmp_path: Path) -> None:
    config = tmp_path / "helpdesk.toml"
    config.write_text("")
    assert reading_config(config, {"HELPDESK_DATABASE_URL": "nonsense"}, cwd=tmp_path) is None


def test_a_named_file_that_does_not_exist_is_the_settings_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        reading_config(tmp_path / "nope.toml", {}, cwd=tmp_path)


def test_the_digest_changes_with_any_value_and_not_with_layout() -> None:
    base = {"smtp": {"port": 25}, "team": [{"name": "network"}]}
    assert document_digest(base) == document_digest(
        {"team": [{"name": "network"}], "smtp": {"port": 25}})
    assert document_digest(base) != document_digest({**base, "smtp": {"port": 26}})
    assert document_digest(base) != document_digest({**base, "team": [{"name": "net"}]})
