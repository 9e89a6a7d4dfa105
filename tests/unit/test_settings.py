"""Tests for helpdesk.settings: lookup, defaults, resolution, secrets and error reporting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from helpdesk.errors import ConfigError, ConfigProblem
from helpdesk.settings import (
    AfterProcessing,
    ClosedTicketPolicy,
    ForeignTagPolicy,
    Settings,
    Tls,
    find_config,
    load_settings,
    mailbox_password_env,
)
from helpdesk.settings import loader as settings_loader

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "config.example.toml"

MAILBOX = """
[[mailbox]]
name = "it-support"
host = "imap.example.org"
username = "helpdesk@example.org"
password = "imap-secret"
"""


@pytest.fixture(autouse=True)
def no_system_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep a real /etc/helpdesk/helpdesk.toml on the test machine out of every test."""
    absent = tmp_path_factory.mktemp("etc") / "helpdesk.toml"
    monkeypatch.setattr(settings_loader, "SYSTEM_CONFIG", absent)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {problem.key: problem.problem for problem in exc.value.problems}


def test_defaults_without_a_file(tmp_path: Path) -> None:
    """With no file anywhere, the built-in defaults apply, rooted at the cwd."""
    loaded = load_settings(None, {}, cwd=tmp_path)

    assert loaded.source is None
    assert loaded.base_dir == tmp_path
    assert loaded.database.url == f"sqlite:///{tmp_path}/helpdesk.db"
    assert loaded.rules.dir == tmp_path / "rules"
    assert loaded.templates.dir == tmp_path / "templates"
    assert loaded.helpdesk.name == "IT Help Desk"
    assert loaded.helpdesk.support_address == "support@localhost"
    assert loaded.helpdesk.own_addresses == ("support@localhost",)
    assert loaded.helpdesk.domain == "localhost"
    assert loaded.helpdesk.tag_prefix == "#"
    assert loaded.threading.foreign_tag is ForeignTagPolicy.NEW_TICKET
    assert loaded.threading.closed_ticket is ClosedTicketPolicy.REOPEN
    assert (loaded.smtp.host, loaded.smtp.port, loaded.smtp.tls) == ("localhost", 25, Tls.NONE)
    assert loaded.smtp.timeout == 30.0
    assert loaded.smtp.username is None
    assert loaded.smtp.password is None
    assert loaded.mailboxes == ()
    assert loaded.teams == ()
    assert loaded.agents == ()


def test_lookup_prefers_explicit_then_env_then_cwd(tmp_path: Path) -> None:
    """An explicit path beats HELPDESK_CONFIG, which beats ./helpdesk.toml."""
    cwd_file = write(tmp_path / "helpdesk.toml", '[helpdesk]\nname = "from cwd"\n')
    env_file = write(tmp_path / "env" / "hd.toml", '[helpdesk]\nname = "from env"\n')
    explicit = write(tmp_path / "explicit.toml", '[helpdesk]\nname = "explicit"\n')
    env = {"HELPDESK_CONFIG": str(env_file)}

    assert load_settings(explicit, env, cwd=tmp_path).helpdesk.name == "explicit"
    assert load_settings(None, env, cwd=tmp_path).helpdesk.name == "from env"
    assert load_settings(None, {}, cwd=tmp_path).helpdesk.name == "from cwd"
    assert find_config(None, {}, tmp_path) == cwd_file
    assert find_config(None, env, tmp_path) == env_file


def test_system_config_is_the_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/etc/helpdesk/helpdesk.toml is used only when nothing closer exists."""
    system = write(tmp_path / "etc" / "helpdesk.toml", '[helpdesk]\nname = "system"\n')
    monkeypatch.setattr(settings_loader, "SYSTEM_CONFIG", system)

    loaded = load_settings(None, {}, cwd=tmp_path / "elsewhere")

    assert loaded.source == system
    assert loaded.helpdesk.name == "system"


def test_explicit_path_must_exist(tmp_path: Path) -> None:
    """A config file named on purpose but missing is an error naming it."""
    missing = tmp_path / "nope.toml"

    with pytest.raises(ConfigError) as exc:
        load_settings(missing, {}, cwd=tmp_path)

    assert exc.value.path == missing
    assert exc.value.problems == [ConfigProblem("", "file not found")]
    assert str(missing) in str(exc.value)


def test_helpdesk_config_env_must_exist(tmp_path: Path) -> None:
    """HELPDESK_CONFIG naming a missing file is an error, not a silent fallback."""
    write(tmp_path / "helpdesk.toml", "")

    with pytest.raises(ConfigError) as exc:
        load_settings(None, {"HELPDESK_CONFIG": "gone.toml"}, cwd=tmp_path)

    assert exc.value.path == tmp_path / "gone.toml"
    assert problems_of(exc) == {"HELPDESK_CONFIG": "names a file that does not exist"}


def test_database_url_env_overrides_the_file(tmp_path: Path) -> None:
    """HELPDESK_DATABASE_URL replaces [database] url."""
    config = write(tmp_path / "helpdesk.toml", '[database]\nurl = "sqlite:///file.db"\n')
    url = "postgresql+psycopg://helpdesk@db.example.org/helpdesk"

    loaded = load_settings(config, {"HELPDESK_DATABASE_URL": url}, cwd=tmp_path)

    assert loaded.database.url == url


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    """Rules, templates, SQLite, password_file and ca_file are relative to the file."""
    etc = tmp_path / "etc"
    write(etc / "secrets" / "imap", "from-file\n")
    write(etc / "ca.pem", "not really a certificate")
    config = write(
        etc / "helpdesk.toml",
        """
[database]
url = "sqlite:///var/hd.db?timeout=5"
[rules]
dir = "my-rules"
[templates]
dir = "/srv/templates"
[[mailbox]]
name = "it-support"
host = "imap.example.org"
username = "helpdesk"
password_file = "secrets/imap"
ca_file = "ca.pem"
""",
    )

    loaded = load_settings(config, {}, cwd=tmp_path / "somewhere" / "else")

    assert loaded.source == config
    assert loaded.base_dir == etc
    assert loaded.database.url == f"sqlite:///{etc}/var/hd.db?timeout=5"
    assert loaded.rules.dir == etc / "my-rules"
    assert loaded.templates.dir == Path("/srv/templates")
    assert loaded.mailboxes[0].ca_file == etc / "ca.pem"
    assert loaded.mailboxes[0].password.get_secret_value() == "from-file"


def test_password_file_content_is_stripped_of_its_newline(tmp_path: Path) -> None:
    """password_file yields the file's content without the trailing newline only."""
    write(tmp_path / "smtp-pw", " spaced out \n")
    config = write(
        tmp_path / "helpdesk.toml",
        '[smtp]\nusername = "relay"\npassword_file = "smtp-pw"\n',
    )

    loaded = load_settings(config, {}, cwd=tmp_path)

    assert loaded.smtp.password is not None
    assert loaded.smtp.password.get_secret_value() == " spaced out "


def test_missing_password_file_names_the_key(tmp_path: Path) -> None:
    """An unreadable password_file is reported on that key with the resolved path."""
    config = write(
        tmp_path / "helpdesk.toml",
        MAILBOX.replace('password = "imap-secret"', 'password_file = "nope"'),
    )

    with pytest.raises(ConfigError) as exc:
        load_settings(config, {}, cwd=tmp_path)

    problems = problems_of(exc)
    assert list(problems) == ['mailbox "it-support".password_file']
    assert problems['mailbox "it-support".password_file'] == (
        f"cannot read {tmp_path / 'nope'}: No such file or directory"
    )


def test_passwords_from_the_environment(tmp_path: Path) -> None:
    """HELPDESK_MAILBOX_<NAME>_PASSWORD and HELPDESK_SMTP_PASSWORD stand in for the file."""
    config = write(
        tmp_path / "helpdesk.toml",
        MAILBOX.replace('password = "imap-secret"\n', "") + '[smtp]\nusername = "relay"\n',
    )
    env = {"HELPDESK_MAILBOX_IT_SUPPORT_PASSWORD": "imap-env", "HELPDESK_SMTP_PASSWORD": "smtp-env"}

    loaded = load_settings(config, env, cwd=tmp_path)

    assert mailbox_password_env("it-support") == "HELPDESK_MAILBOX_IT_SUPPORT_PASSWORD"
    assert loaded.mailboxes[0].password.get_secret_value() == "imap-env"
    assert loaded.smtp.password is not None
    assert loaded.smtp.password.get_secret_value() == "smtp-env"


def test_mailbox_without_any_password_is_an_error(tmp_path: Path) -> None:
    """A mailbox with no password source says every way to give one."""
    config = write(tmp_path / "helpdesk.toml", MAILBOX.replace('password = "imap-secret"\n', ""))

    with pytest.raises(ConfigError) as exc:
        load_settings(config, {}, cwd=tmp_path)

    assert problems_of(exc) == {
        'mailbox "it-support".password': "is required: set password or password_file, "
        "or the environment variable HELPDESK_MAILBOX_IT_SUPPORT_PASSWORD"
    }


def test_every_problem_is_listed_together(tmp_path: Path) -> None:
    """One ConfigError names each mistake in the file by its key."""
    config = write(
        tmp_path / "helpdesk.toml",
        """
[helpdesk]
support_address = "not-an-address"
tag_prefix = "[#"
[[mailbox]]
name = "it-support"
host = "imap.example.org"
username = "helpdesk"
password = "x"
tls = "tsl"
port = 70000
team = "netwrk"
[[mailbox]]
host = "imap.example.org"
password = "x"
[smtp]
timeout = 0
[[team]]
name = "networking"
[[agent]]
name = "alice"
addresses = ["alice@example.org"]
[[agent]]
name = "bob"
addresses = ["ALICE@example.org"]
""",
    )

    with pytest.raises(ConfigError) as exc:
        load_settings(config, {}, cwd=tmp_path)

    assert exc.value.path == config
    assert problems_of(exc) == {
        "helpdesk.support_address": (
            "must be an email address like someone@example.org (got 'not-an-address')"
        ),
        'mailbox "it-support".port': "must be a port number from 1 to 65535 (got 70000)",
        'mailbox "it-support".tls': "must be one of ssl, starttls, none (got 'tsl')",
        "mailbox[2].name": "is required",
        "mailbox[2].username": "is required",
        "smtp.timeout": "must be a number of seconds greater than 0 (got 0)",
        'mailbox "it-support".team': "unknown team 'netwrk'; configured teams: networking",
        'agent "bob".addresses[1]': "'alice@example.org' already belongs to agent \"alice\"",
    }
    assert f"{config}: mailbox[2].name: is required" in str(exc.value).splitlines()


def test_toml_syntax_error_shows_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error is a ConfigError carrying tomllib's position."""
    config = write(tmp_path / "helpdesk.toml", '[helpdesk]\nname = "ok"\nsupport_address =\n')

    with pytest.raises(ConfigError) as exc:
        load_settings(config, {}, cwd=tmp_path)

    [problem] = exc.value.problems
    assert problem.problem.startswith("invalid TOML: ")
    assert "line 3" in problem.problem
    assert "column" in problem.problem


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    """Misspelt keys and sections are reported with what is allowed there."""
    config = write(
        tmp_path / "helpdesk.toml",
        '[helpdesk]\nnmae = "x"\n[threading]\nforeign_tag = "accept"\n[mail]\nhost = "x"\n',
    )

    with pytest.raises(ConfigError) as exc:
        load_settings(config, {}, cwd=tmp_path)

    problems = problems_of(exc)
    assert problems["helpdesk.nmae"] == (
        "unknown key; allowed keys: name, support_address, own_addresses, domain, tag_prefix, "
        "note_address, secret, secret_file"
    )
    assert problems["mail"].startswith("unknown key; allowed sections: helpdesk, database,")
    assert len(problems) == 2


def test_bad_enum_lists_the_allowed_values(tmp_path: Path) -> None:
    """An enum outside its choices says which words are allowed and what it got."""
    config = write(tmp_path / "helpdesk.toml", '[threading]\nclosed_ticket = "ignore"\n')

    with pytest.raises(ConfigError) as exc:
        load_settings(config, {}, cwd=tmp_path)

    assert problems_of(exc) == {
        "threading.closed_ticket": "must be one of reopen, new_ticket (got 'ignore')"
    }


def test_wrong_types_are_named_in_toml_terms(tmp_path: Path) -> None:
    """Type errors say what was expected and which TOML type was found, not pydantic's text."""
    config = write(
        tmp_path / "helpdesk.toml",
        '[helpdesk]\nname = 42\nown_addresses = "a@b.c"\n[smtp]\nport = "25"\n'
        "[[team]]\nname = true\n[rules]\ndir = 3\n",
    )

    with pytest.raises(ConfigError) as exc:
        load_settings(config, {}, cwd=tmp_path)

    assert problems_of(exc) == {
        "helpdesk.name": "expected a string, got integer",
        "helpdesk.own_addresses": "expected an array, got string",
        "smtp.port": "expected an integer, got string",
        "team[1].name": "expected a string, got boolean",
        "rules.dir": "expected a string (a file path), got integer",
    }
    assert "pydantic" not in str(exc.value)
    assert "Input should" not in str(exc.value)


def test_settings_are_frozen(tmp_path: Path) -> None:
    """Loaded settings cannot be changed by accident."""
    loaded = load_settings(None, {}, cwd=tmp_path)

    with pytest.raises(ValidationError):
        loaded.helpdesk.name = "changed"
    with pytest.raises(ValidationError):
        loaded.source = tmp_path
    assert loaded.helpdesk.name == "IT Help Desk"


def test_example_config_loads() -> None:
    """config.example.toml is valid as shipped, with an empty environment."""
    loaded = load_settings(EXAMPLE, {})

    assert loaded.source == EXAMPLE
    assert loaded.helpdesk.support_address == "support@example.org"
    assert loaded.helpdesk.own_addresses == (
        "support@example.org",
        "helpdesk@example.org",
        "it@example.org",
    )
    assert loaded.database.url == f"sqlite:///{REPO_ROOT}/helpdesk.db"
    assert [team.name for team in loaded.teams] == [
        "support",
        "networking",
        "infrastructure",
        "identity-and-access",
        "security",
    ]
    assert [agent.name for agent in loaded.agents] == ["Alice Moreau", "Bilal Haddad", "Chen Wei"]


def test_example_mailboxes_are_valid_once_uncommented(tmp_path: Path) -> None:
    """The commented-out [[mailbox]] entries load when uncommented as the file says."""
    text = EXAMPLE.read_text(encoding="utf-8")
    start, end = text.index("#[[mailbox]]"), text.index("\n# --- Other sources")
    uncommented = re.sub(r"(?m)^#", "", text[start:end])
    config = write(tmp_path / "helpdesk.toml", text[:start] + uncommented + text[end:])
    env = {
        "HELPDESK_MAILBOX_IT_SUPPORT_PASSWORD": "a",
        "HELPDESK_MAILBOX_SECURITY_PASSWORD": "b",
        "HELPDESK_MAILBOX_ACCESS_REQUESTS_PASSWORD": "c",
    }

    loaded = load_settings(config, env, cwd=tmp_path)

    names = [(box.name, box.port, box.tls, box.after, box.team) for box in loaded.mailboxes]
    assert names == [
        ("it-support", 993, Tls.SSL, AfterProcessing.MOVE, "support"),
        ("security", 993, Tls.SSL, AfterProcessing.MOVE, "security"),
        ("access-requests", 143, Tls.STARTTLS, AfterProcessing.FLAG, "identity-and-access"),
    ]
    assert loaded.mailboxes[1].poll_interval == 30.0


def test_example_maildir_and_lmtp_are_valid_once_uncommented(tmp_path: Path) -> None:
    """The commented-out [[maildir]] and [lmtp] sections load when uncommented."""
    text = EXAMPLE.read_text(encoding="utf-8")
    start, end = text.index("#[[maildir]]"), text.index("\n[daemon]")
    # Uncomment the settings, not the prose: those lines start with "#[" or "#key".
    uncommented = re.sub(r"(?m)^#(?=[\[a-z])", "", text[start:end])
    config = write(tmp_path / "helpdesk.toml", text[:start] + uncommented + text[end:])

    loaded = load_settings(config, {}, cwd=tmp_path)

    assert [(m.name, str(m.path), m.team) for m in loaded.maildirs] == [
        ("local-support", "/var/mail/support", "support")
    ]
    assert loaded.lmtp is not None
    assert (loaded.lmtp.host, loaded.lmtp.port) == ("127.0.0.1", 2424)


def test_secrets_never_appear_in_repr(tmp_path: Path) -> None:
    """Passwords, including one inside a database URL, stay out of repr and str."""
    config = write(
        tmp_path / "helpdesk.toml",
        MAILBOX + '[smtp]\nusername = "relay"\npassword = "smtp-secret"\n',
    )
    env = {"HELPDESK_DATABASE_URL": "postgresql://helpdesk:db-secret@db/helpdesk"}

    loaded = load_settings(config, env, cwd=tmp_path)

    for text in (repr(loaded), str(loaded), repr(loaded.mailboxes[0]), repr(loaded.database)):
        assert "imap-secret" not in text
        assert "smtp-secret" not in text
        assert "db-secret" not in text
    assert "postgresql://helpdesk:***@db/helpdesk" in repr(loaded.database)
    assert loaded.database.url == "postgresql://helpdesk:db-secret@db/helpdesk"
    assert loaded.mailboxes[0].password.get_secret_value() == "imap-secret"


def test_ports_default_by_tls(tmp_path: Path) -> None:
    """Without a port, IMAP uses 993/143 and SMTP 465/587/25 according to tls."""
    config = write(
        tmp_path / "helpdesk.toml",
        MAILBOX + 'tls = "starttls"\n[smtp]\nhost = "smtp.example.org"\ntls = "ssl"\n',
    )

    loaded = load_settings(config, {}, cwd=tmp_path)

    assert loaded.mailboxes[0].port == 143
    assert loaded.smtp.port == 465


def test_own_addresses_and_agents_lookup(tmp_path: Path) -> None:
    """Own addresses match case-insensitively and with +sub-addresses; agents by address."""
    config = write(
        tmp_path / "helpdesk.toml",
        """
[helpdesk]
support_address = "Support@Example.org"
own_addresses = ["it@example.org"]
[[agent]]
name = "Alice"
addresses = ["Alice@Example.org"]
""",
    )

    loaded = load_settings(config, {}, cwd=tmp_path)

    assert loaded.helpdesk.domain == "example.org"
    assert loaded.helpdesk.own_addresses == ("support@example.org", "it@example.org")
    assert loaded.is_own_address("SUPPORT@example.org")
    assert loaded.is_own_address("support+vpn@example.org")
    assert loaded.is_own_address("it@example.org")
    assert not loaded.is_own_address("supporter@example.org")
    agent = loaded.agent_by_address("alice@EXAMPLE.org")
    assert agent is not None
    assert agent.name == "Alice"
    assert loaded.agent_by_address("bob@example.org") is None


def test_settings_built_by_hand_have_defaults() -> None:
    """Settings() works without a loader, for tests elsewhere that need a value."""
    built = Settings()

    assert built.helpdesk.support_address == "support@localhost"
    assert built.smtp.port == 25
    assert built.mailboxes == ()


PG = 'url = "postgresql+psycopg://helpdesk@db.example.org/helpdesk"\n'


def test_database_password_from_password_file(tmp_path: Path) -> None:
    """`[database] password_file` is read (relative to the file) and kept out of the URL."""
    write(tmp_path / "db-password", "db-secret\n")
    config = write(tmp_path / "helpdesk.toml", f'[database]\n{PG}password_file = "db-password"\n')

    loaded = load_settings(config, {}, cwd=tmp_path)

    assert loaded.database.password_value == "db-secret"
    assert loaded.database.url == "postgresql+psycopg://helpdesk@db.example.org/helpdesk"
    assert "db-secret" not in repr(loaded) + str(loaded.database)


def test_database_password_from_the_environment_wins(tmp_path: Path) -> None:
    """HELPDESK_DATABASE_PASSWORD overrides password_file, as for the other secrets."""
    write(tmp_path / "db-password", "from-file")
    config = write(tmp_path / "helpdesk.toml", f'[database]\n{PG}password_file = "db-password"\n')

    loaded = load_settings(config, {"HELPDESK_DATABASE_PASSWORD": "from-env"}, cwd=tmp_path)

    assert loaded.database.password_value == "from-env"


def test_database_without_a_password_is_fine(tmp_path: Path) -> None:
    """No password at all is allowed: SQLite, or PostgreSQL with peer or trust login."""
    loaded = load_settings(write(tmp_path / "helpdesk.toml", f"[database]\n{PG}"), {},
                           cwd=tmp_path)
    assert loaded.database.password is None
    assert loaded.database.password_value is None


@pytest.mark.parametrize(
    ("setup", "key", "problem"),
    [
        ('password_file = "missing"\n', "database.password_file", "cannot read"),
        ('password_file = "empty"\n', "database.password_file", "is empty"),
        ('password_file = "db-password"\npassword = "x"\n', "database.password_file",
         "not both"),
        ('password_file = 3\n', "database.password_file", "expected a string"),
    ],
)
def test_database_password_file_problems_name_the_key(
    tmp_path: Path, setup: str, key: str, problem: str
) -> None:
    """A missing, empty or doubly given database password is a problem on its key."""
    write(tmp_path / "empty", "")
    write(tmp_path / "db-password", "pw")
    config = write(tmp_path / "helpdesk.toml", f"[database]\n{PG}{setup}")

    with pytest.raises(ConfigError) as exc:
        load_settings(config, {}, cwd=tmp_path)

    problems = problems_of(exc)
    assert list(problems) == [key]
    assert problem in problems[key]


def test_a_password_in_the_url_and_in_a_file_is_refused(tmp_path: Path) -> None:
    """Two places for one password would leave the admin guessing which one is used."""
    write(tmp_path / "db-password", "pw")
    config = write(tmp_path / "helpdesk.toml", '[database]\npassword_file = "db-password"\n')
    env = {"HELPDESK_DATABASE_URL": "postgresql://helpdesk:other@db/helpdesk"}

    with pytest.raises(ConfigError) as exc:
        load_settings(config, env, cwd=tmp_path)

    problems = problems_of(exc)
    assert "URL carries a password too" in problems["database.password_file"]
    assert "other" not in str(exc.value)
