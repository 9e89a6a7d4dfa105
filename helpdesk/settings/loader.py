"""Finding, reading and validating the configuration file, every problem at once."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from helpdesk import configfile
from helpdesk.errors import ConfigError, ConfigProblem
from helpdesk.names import without_subaddress
from helpdesk.settings.fields import (
    _URL,
    DATABASE_PASSWORD_ENV,
    DATABASE_URL_ENV,
    DEFAULT_SUPPORT_ADDRESS,
    SECRET_ENV,
    SMTP_PASSWORD_ENV,
    _redact_url,
    _show,
    _toml_type,
    mailbox_password_env,
    url_has_password,
)
from helpdesk.settings.sections import (
    AgentSettings,
    AutoReplySettings,
    BounceSettings,
    DaemonSettings,
    DatabaseSettings,
    HelpdeskSettings,
    IntakeSettings,
    LmtpSettings,
    MailboxSettings,
    MaildirSettings,
    MetricsSettings,
    OutboxSettings,
    RulesSettings,
    SecuritySettings,
    Settings,
    SmtpSettings,
    TeamSettings,
    TemplatesSettings,
    ThreadingPolicy,
    _Section,
)

# Looked up at call time (not bound as a default) so tests can point it elsewhere.
SYSTEM_CONFIG = Path("/etc/helpdesk/helpdesk.toml")


# The file's layout, in the order sections are checked and documented.
_TABLES: dict[str, type[_Section]] = {
    "helpdesk": HelpdeskSettings,
    "database": DatabaseSettings,
    "mailbox": MailboxSettings,
    "maildir": MaildirSettings,
    "lmtp": LmtpSettings,
    "intake": IntakeSettings,
    "daemon": DaemonSettings,
    "metrics": MetricsSettings,
    "smtp": SmtpSettings,
    "threading": ThreadingPolicy,
    "security": SecuritySettings,
    "auto_reply": AutoReplySettings,
    "bounces": BounceSettings,
    "outbox": OutboxSettings,
    "rules": RulesSettings,
    "templates": TemplatesSettings,
    "team": TeamSettings,
    "agent": AgentSettings,
}
_ARRAYS = frozenset({"mailbox", "maildir", "team", "agent"})
# Keys the loader consumes before the model sees the table.
_EXTRA_KEYS: dict[str, tuple[str, ...]] = {
    "helpdesk": ("secret_file",),
    "database": ("password_file",),
    "mailbox": ("password_file",),
    "smtp": ("password_file",),
}

# Pydantic error types that mean "wrong TOML type", with what we wanted instead.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "tuple_type": "an array",
    "list_type": "an array",
    "path_type": "a string (a file path)",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dict_type": "a table",
}


# --- finding and reading the file -------------------------------------------


def find_config(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path | None:
    """The config file to use: `path`, else $HELPDESK_CONFIG, else ./helpdesk.toml,
    else /etc/helpdesk/helpdesk.toml; None when there is none (built-in defaults).

    A file named explicitly (argument or environment) must exist.
    """
    return configfile.find_config(path, environ, cwd, system=SYSTEM_CONFIG)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:  # its message carries line and column
        raise ConfigError(path, [ConfigProblem("", f"invalid TOML: {exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [ConfigProblem("", f"not UTF-8 text: {exc.reason}")]) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(path, [ConfigProblem("", f"cannot read the file: {reason}")]) from exc


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
) -> Settings:
    """Find, read and validate the configuration.

    `environ` is the process environment (None means an empty one: this module
    never reads os.environ itself); `cwd` defaults to the current directory.
    Raises ConfigError listing every problem found.
    """
    env: Mapping[str, str] = environ if environ is not None else {}
    here = (cwd or Path.cwd()).absolute()
    source = find_config(path, env, here)
    document = _read_toml(source) if source is not None else {}
    base_dir = source.parent if source is not None else here
    return _Loader(source, base_dir, here, env).load(document)


# --- validation -------------------------------------------------------------


class _Loader:
    """Validates one parsed document, collecting every problem before raising."""

    def __init__(
        self, source: Path | None, base_dir: Path, cwd: Path, environ: Mapping[str, str]
    ) -> None:
        self.source = source
        self.base_dir = base_dir
        self.cwd = cwd
        self.environ = environ
        self.problems: list[ConfigProblem] = []
        self._reported: set[str] = set()

    def load(self, document: dict[str, Any]) -> Settings:
        self._check_sections(document)
        parts: dict[str, object] = {
            "helpdesk": self._table(document, "helpdesk"),
            "database": self._table(document, "database", self._database_env()),
            "mailboxes": self._array(document, "mailbox"),
            "maildirs": self._array(document, "maildir"),
            "lmtp": self._table(document, "lmtp") if "lmtp" in document else None,
            "intake": self._table(document, "intake", self._moved_intake_keys(document)),
            "daemon": self._table(document, "daemon"),
            "metrics": self._table(document, "metrics"),
            "smtp": self._table(document, "smtp"),
            "threading": self._table(document, "threading"),
            "security": self._table(document, "security"),
            "auto_reply": self._table(document, "auto_reply"),
            "bounces": self._table(document, "bounces"),
            "outbox": self._table(document, "outbox"),
            "rules": self._table(document, "rules"),
            "templates": self._table(document, "templates"),
            "teams": self._array(document, "team"),
            "agents": self._array(document, "agent"),
        }
        self._check_smtp_login(parts["smtp"])
        self._check_references(document)
        if self.problems:
            raise ConfigError(self.source, self.problems)
        # Every part is an already validated model, so this only assembles them.
        return Settings.model_validate({**parts, "source": self.source, "base_dir": self.base_dir})

    def _problem(self, key: str, problem: str) -> None:
        self.problems.append(ConfigProblem(key, problem))
        self._reported.add(key)

    # -- structure --

    def _check_sections(self, document: Mapping[str, Any]) -> None:
        for key, value in document.items():
            if key not in _TABLES:
                self._problem(key, f"unknown key; allowed sections: {', '.join(_TABLES)}")
            elif key in _ARRAYS and not isinstance(value, list):
                got = _toml_type(value)
                self._problem(key, f"expected an array of tables ([[{key}]]), got {got}")

    def _table(
        self,
        document: Mapping[str, Any],
        section: str,
        overrides: Mapping[str, Any] | None = None,
    ) -> _Section | None:
        data = document.get(section, {})
        if isinstance(data, dict):
            data = {**data, **(overrides or {})}
            if section == "smtp":
                self._take_secret(data, "smtp", SMTP_PASSWORD_ENV, required=False)
            if section == "helpdesk":
                self._take_secret(
                    data, "helpdesk", SECRET_ENV, required=False, key="secret"
                )
            if section == "database":
                self._take_secret(data, "database", DATABASE_PASSWORD_ENV, required=False)
                self._check_url_password(data)
        return self._validate(section, data, section)

    def _array(self, document: Mapping[str, Any], section: str) -> tuple[_Section | None, ...]:
        entries = document.get(section, [])
        if not isinstance(entries, list):
            return ()  # already reported by _check_sections
        validated = []
        for index, entry in enumerate(entries):
            label = _entry_label(entries, section, index)
            data: object = entry
            if section == "mailbox" and isinstance(entry, dict):
                data = dict(entry)
                name = entry.get("name")
                env_var = mailbox_password_env(name) if isinstance(name, str) and name else None
                self._take_secret(data, label, env_var, required=True)
            validated.append(self._validate(section, data, label))
        return tuple(validated)

    def _validate(self, section: str, data: object, key: str) -> _Section | None:
        """Validate one table of `section`; its problems are filed under `key`."""
        model = _TABLES[section]
        try:
            return model.model_validate(data, context={"base_dir": self.base_dir})
        except ValidationError as exc:
            allowed = [*model.model_fields, *_EXTRA_KEYS.get(section, ())]
            for error in exc.errors():
                full_key = key + "".join(_loc_part(part) for part in error["loc"])
                if full_key not in self._reported:  # ours is more specific
                    self._problem(full_key, _describe(error, allowed))
            return None

    def _moved_intake_keys(self, document: dict[str, Any]) -> dict[str, Any]:
        """`[daemon] message_time_limit` (before [intake] existed) still counts, unless
        [intake] sets it too; it is taken out of [daemon] so that it is not unknown there."""
        daemon = document.get("daemon")
        if not isinstance(daemon, dict) or "message_time_limit" not in daemon:
            return {}
        value = daemon.pop("message_time_limit")
        intake = document.get("intake")
        if isinstance(intake, dict) and "message_time_limit" in intake:
            return {}
        return {"message_time_limit": value}

    # -- secrets and the environment --

    def _database_env(self) -> dict[str, Any]:
        url = self.environ.get(DATABASE_URL_ENV)
        if not url:
            return {}
        if not _URL.fullmatch(url):
            self._problem(DATABASE_URL_ENV, f"is not a database URL (got {_redact_url(url)!r})")
            return {}
        # Typed in a shell, a relative SQLite path means "here", not "next to the file".
        return {"url": configfile.resolve_sqlite_url(url, self.cwd)}

    def _take_secret(
        self,
        table: dict[str, Any],
        where: str,
        env_var: str | None,
        *,
        required: bool,
        key: str = "password",
    ) -> None:
        """Put the secret into `table[key]` from wherever it is configured.

        The environment wins over the file, so a deployment can override a
        checked-in config without editing it.
        """
        file_key = f"{key}_file"
        secret_file = table.pop(file_key, None)
        if key in table and secret_file is not None:
            self._problem(f"{where}.{file_key}", f"set either {key} or {file_key}, not both")
            return
        from_env = self.environ.get(env_var) if env_var else None
        if from_env:
            table[key] = from_env
        elif secret_file is not None:
            secret = self._read_secret(secret_file, f"{where}.{file_key}")
            if secret is None:
                self._reported.add(f"{where}.{key}")  # don't also say "is required"
            else:
                table[key] = secret
        elif key not in table and required:
            via = f", or the environment variable {env_var}" if env_var else ""
            self._problem(f"{where}.{key}", f"is required: set {key} or {file_key}{via}")

    def _check_url_password(self, table: Mapping[str, Any]) -> None:
        url = table.get("url")
        if "password" in table and isinstance(url, str) and url_has_password(url):
            self._problem(
                "database.password_file",
                "the URL carries a password too: keep it in one place (password_file, "
                f"or {DATABASE_PASSWORD_ENV}), not in the URL",
            )

    def _read_secret(self, value: object, key: str) -> str | None:
        if not isinstance(value, str):
            self._problem(key, f"expected a string (a file path), got {_toml_type(value)}")
            return None
        try:
            return configfile.read_secret_file(self.base_dir / value)
        except ValueError as exc:
            self._problem(key, str(exc))
            return None

    def _check_smtp_login(self, smtp: object) -> None:
        if not isinstance(smtp, SmtpSettings):
            return  # invalid; its problems are already listed
        if smtp.username and smtp.password is None:
            self._problem(
                "smtp.password",
                f"is required when username is set: set password, password_file "
                f"or the environment variable {SMTP_PASSWORD_ENV}",
            )
        if smtp.password is not None and not smtp.username:
            self._problem("smtp.username", "is required when a password is set")

    # -- cross-references (on the raw document, so broken entries are checked too) --

    def _check_references(self, document: Mapping[str, Any]) -> None:
        self._unique_names(document, "mailbox")
        self._unique_names(document, "maildir")
        teams = self._unique_names(document, "team")
        self._unique_names(document, "agent")
        for label, entry in [*_entries(document, "mailbox"), *_entries(document, "maildir")]:
            team = entry.get("team")
            if teams and isinstance(team, str) and team and team not in teams:
                self._problem(f"{label}.team", _unknown_team(team, teams))
        for label, entry in _entries(document, "agent"):
            for position, team in _strings(entry.get("teams")):
                if team not in teams:
                    self._problem(f"{label}.teams[{position}]", _unknown_team(team, teams))
        self._agent_addresses(document)

    def _unique_names(self, document: Mapping[str, Any], section: str) -> list[str]:
        first: dict[str, int] = {}
        for index, (_, entry) in enumerate(_entries(document, section), start=1):
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                continue
            if name in first:
                self._problem(
                    f"{section}[{index}].name",
                    f"duplicate name {name!r} ({section}[{first[name]}] has it too)",
                )
            else:
                first[name] = index
        return list(first)

    def _agent_addresses(self, document: Mapping[str, Any]) -> None:
        own = _raw_own_addresses(document)
        owner: dict[str, str] = {}
        for label, entry in _entries(document, "agent"):
            for position, raw in _strings(entry.get("addresses")):
                address = raw.strip().lower()
                key = f"{label}.addresses[{position}]"
                if address in owner and owner[address] != label:
                    self._problem(key, f"{address!r} already belongs to {owner[address]}")
                elif address in own or without_subaddress(address) in own:
                    # Mail from it would look like mail from ourselves and be dropped.
                    self._problem(key, f"{address!r} is one of the help desk's own addresses")
                owner.setdefault(address, label)


def _raw_own_addresses(document: Mapping[str, Any]) -> set[str]:
    """Our own addresses as written, even if [helpdesk] has other problems."""
    section = document.get("helpdesk")
    table = section if isinstance(section, dict) else {}
    support = table.get("support_address", DEFAULT_SUPPORT_ADDRESS)
    written = [support, *(item for _, item in _strings(table.get("own_addresses")))]
    return {item.strip().lower() for item in written if isinstance(item, str)}


def _entries(document: Mapping[str, Any], section: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, table) for each well-formed entry of an array section."""
    entries = document.get(section)
    if not isinstance(entries, list):
        return
    for index, entry in enumerate(entries):
        if isinstance(entry, dict):
            yield _entry_label(entries, section, index), entry


def _entry_label(entries: Sequence[object], section: str, index: int) -> str:
    """``mailbox "it-support"`` when the name identifies it, else ``mailbox[2]``."""
    entry = entries[index]
    name = entry.get("name") if isinstance(entry, dict) else None
    if isinstance(name, str) and name:
        same = sum(1 for other in entries if isinstance(other, dict) and other.get("name") == name)
        if same == 1:
            return f'{section} "{name}"'
    return f"{section}[{index + 1}]"


def _strings(value: object) -> Iterator[tuple[int, str]]:
    """(1-based position, item) for the string items of a TOML array."""
    if isinstance(value, list):
        for position, item in enumerate(value, start=1):
            if isinstance(item, str):
                yield position, item


def _unknown_team(team: str, teams: Sequence[str]) -> str:
    if not teams:
        return f"unknown team {team!r}: no [[team]] is configured"
    return f"unknown team {team!r}; configured teams: {', '.join(teams)}"


def _loc_part(part: int | str) -> str:
    # Arrays are counted from 1, as an admin counts entries in a file.
    return f"[{part + 1}]" if isinstance(part, int) else f".{part}"


def _describe(error: Mapping[str, Any], allowed: Sequence[str]) -> str:
    """A pydantic error in plain words; pydantic's own text never reaches the admin."""
    kind = error["type"]
    got = error.get("input")
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_toml_type(got)}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return f"unknown key; allowed keys: {', '.join(allowed)}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "value_error":
        cause = (error.get("ctx") or {}).get("error")
        if cause is not None:
            return str(cause)
    return f"has an invalid value: {_show(got)}"
