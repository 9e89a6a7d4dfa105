"""Settings: one TOML file, validated once into frozen, typed objects.

`load_settings` finds the file, reads it, checks every key and returns a
`Settings`; anything wrong becomes a single `ConfigError` that lists every
problem with the key as the admin wrote it (``mailbox "it-support".tls``), so
one edit-and-retry cycle fixes them all.

The environment is a parameter, never ``os.environ``: the CLI passes the real
one, tests pass a dict. Relative paths in the file are resolved against the
file's directory, so the daemon behaves the same from any working directory.

Without a file the built-in defaults describe a single-host setup: SQLite next
to the working directory and a local MTA on localhost:25.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from helpdesk.errors import ConfigError, ConfigProblem

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILENAME",
    "DATABASE_URL_ENV",
    "SMTP_PASSWORD_ENV",
    "SYSTEM_CONFIG",
    "AfterProcessing",
    "AgentSettings",
    "ClosedTicketPolicy",
    "DatabaseSettings",
    "ForeignTagPolicy",
    "HelpdeskSettings",
    "MailboxSettings",
    "RulesSettings",
    "Settings",
    "SmtpSettings",
    "TeamSettings",
    "TemplatesSettings",
    "ThreadingPolicy",
    "Tls",
    "find_config",
    "load_settings",
    "mailbox_password_env",
]

CONFIG_ENV = "HELPDESK_CONFIG"
DATABASE_URL_ENV = "HELPDESK_DATABASE_URL"
SMTP_PASSWORD_ENV = "HELPDESK_SMTP_PASSWORD"  # noqa: S105 - a variable name, not a secret
SECRET_ENV = "HELPDESK_SECRET"  # noqa: S105 - a variable name, not a secret
CONFIG_FILENAME = "helpdesk.toml"
# Looked up at call time (not bound as a default) so tests can point it elsewhere.
SYSTEM_CONFIG = Path("/etc/helpdesk/helpdesk.toml")

DEFAULT_NAME = "IT Help Desk"
DEFAULT_SUPPORT_ADDRESS = "support@localhost"
# Relative on purpose: resolved against base_dir like any path an admin writes.
DEFAULT_DATABASE_URL = "sqlite:///helpdesk.db"

_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_URL = re.compile(r"[a-z][a-z0-9+.-]*://.*", re.IGNORECASE)
_SQLITE_URL = re.compile(
    r"(?P<scheme>sqlite(?:\+\w+)?):///(?P<path>[^?]*)(?P<query>\?.*)?", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"(?P<head>://[^/@:]*:)[^/@]*@")


# --- enumerations -----------------------------------------------------------


class Tls(StrEnum):
    """How a connection is protected."""

    SSL = "ssl"  # TLS from the first byte (IMAPS 993, SMTPS 465)
    STARTTLS = "starttls"  # plain connect, then upgrade
    NONE = "none"  # only for a local MTA or a test server


class AfterProcessing(StrEnum):
    """What ingest does with a message it has stored."""

    MOVE = "move"  # move to processed_folder
    FLAG = "flag"  # leave in place, mark \\Seen and flagged


class ForeignTagPolicy(StrEnum):
    """A subject carries a tag like ``[#12]`` that is not one of our tickets."""

    NEW_TICKET = "new_ticket"
    ACCEPT = "accept"


class ClosedTicketPolicy(StrEnum):
    """A reply arrives for a ticket that is already closed."""

    REOPEN = "reopen"
    NEW_TICKET = "new_ticket"


IMAP_PORTS = {Tls.SSL: 993, Tls.STARTTLS: 143, Tls.NONE: 143}
SMTP_PORTS = {Tls.SSL: 465, Tls.STARTTLS: 587, Tls.NONE: 25}


# --- value checks (raise ValueError; the loader turns it into a ConfigProblem) ---


def _show(value: object) -> str:
    """A value as the admin would have typed it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, for "expected X, got Y"."""
    # bool before int (bool is an int) and datetime before date (same reason).
    names: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        ((list, tuple), "array"),
        (dict, "table"),
        (datetime, "date-time"),
        (date, "date"),
        (time, "time"),
    ]
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _choice(enum: type[StrEnum]) -> BeforeValidator:
    """Check membership ourselves so the message lists the allowed words."""
    values = [member.value for member in enum]
    allowed = ", ".join(values)

    def check(value: object) -> object:
        if isinstance(value, str) and value in values:
            return value
        raise ValueError(f"must be one of {allowed} (got {_show(value)})")

    return BeforeValidator(check)


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _email(value: str) -> str:
    address = value.strip().lower()
    if not _EMAIL.fullmatch(address):
        raise ValueError(f"must be an email address like someone@example.org (got {value!r})")
    return address


def _domain(value: str) -> str:
    domain = value.strip().lower()
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"must be a domain name like example.org (got {value!r})")
    return domain


def _tag_prefix(value: str) -> str:
    if not value or "]" in value or any(char.isspace() for char in value):
        raise ValueError(f"must be non-empty, without ']' or whitespace (got {value!r})")
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"must be a port number from 1 to 65535 (got {value})")
    return value


def _seconds(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a number of seconds greater than 0 (got {_show(value)})")
    return value


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1 (got {value})")
    return value


def _batch_size(value: int) -> int:
    if not 1 <= value <= 10000:
        raise ValueError(f"must be from 1 to 10000 (got {value})")
    return value


def _non_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value


def _database_url(value: str) -> str:
    if not _URL.fullmatch(value):
        raise ValueError(
            "must be a database URL like sqlite:///helpdesk.db or "
            f"postgresql+psycopg://helpdesk@db.example.org/helpdesk (got {_redact_url(value)!r})"
        )
    return value


def _base_dir(info: ValidationInfo) -> Path | None:
    """The directory relative paths are resolved against, if the loader gave one."""
    context = info.context
    base = context.get("base_dir") if isinstance(context, dict) else None
    return base if isinstance(base, Path) else None


def _against_base_dir(path: Path, info: ValidationInfo) -> Path:
    # Without a loader context (a test building settings by hand) paths stay as given.
    base = _base_dir(info)
    return path if path.is_absolute() or base is None else base / path


def _existing_file(path: Path) -> Path:
    # Checked at load time: a typo in a CA path should fail at startup, not at
    # the first TLS handshake hours later.
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def _sqlite_against_base_dir(url: str, info: ValidationInfo) -> str:
    base = _base_dir(info)
    return url if base is None else _resolve_sqlite_url(url, base)


def _resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """Make the file path of a relative SQLite URL absolute; other URLs pass through."""
    match = _SQLITE_URL.fullmatch(url)
    if match is None:
        return url
    path = match["path"]
    # Empty / :memory: are in-memory databases; file: is SQLite's URI form.
    if not path or path.startswith(("/", ":memory:", "file:")):
        return url
    return f"{match['scheme']}:///{base_dir / path}{match['query'] or ''}"


def _redact_url(url: str) -> str:
    """The URL with any password replaced, for repr and error messages."""
    return _URL_PASSWORD.sub(r"\g<head>***@", url)


def mailbox_password_env(name: str) -> str:
    """The environment variable that may hold the password of mailbox `name`."""
    return f"HELPDESK_MAILBOX_{re.sub(r'[^A-Z0-9]', '_', name.upper())}_PASSWORD"


def _without_subaddress(address: str) -> str:
    """``support+vpn@example.org`` → ``support@example.org``."""
    local, _, domain = address.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}" if local else address


NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]
Email = Annotated[str, AfterValidator(_email)]
Domain = Annotated[str, AfterValidator(_domain)]
TagPrefix = Annotated[str, AfterValidator(_tag_prefix)]
Port = Annotated[StrictInt, AfterValidator(_port)]
Seconds = Annotated[StrictFloat, AfterValidator(_seconds)]
BatchSize = Annotated[StrictInt, AfterValidator(_batch_size)]
ResolvedPath = Annotated[Path, AfterValidator(_against_base_dir)]
ExistingFile = Annotated[Path, AfterValidator(_against_base_dir), AfterValidator(_existing_file)]
Password = Annotated[SecretStr, AfterValidator(_non_empty_secret)]
DatabaseUrl = Annotated[
    str, AfterValidator(_database_url), AfterValidator(_sqlite_against_base_dir)
]
TlsMode = Annotated[Tls, _choice(Tls)]


def _derive_port(data: Any, ports: Mapping[Tls, int], default_tls: Tls) -> Any:
    """Fill in `port` from `tls` when the admin left it out."""
    if not isinstance(data, dict) or "port" in data:
        return data
    tls = data.get("tls", default_tls)
    # An invalid tls is reported on its own key; pick any port so it is not reported twice.
    known = isinstance(tls, str) and tls in {mode.value for mode in Tls}
    return {**data, "port": ports[Tls(tls)] if known else ports[default_tls]}


# --- sections ---------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HelpdeskSettings(_Section):
    """``[helpdesk]``: who we are in the mail we send and receive."""

    name: NonEmptyStr = DEFAULT_NAME
    # From and Reply-To of everything we send.
    support_address: Email = DEFAULT_SUPPORT_ADDRESS
    # Every address that reaches us; always contains support_address (first).
    own_addresses: tuple[Email, ...] = Field(default=(), validate_default=True)
    # Right-hand side of our Message-IDs; defaults to support_address's domain.
    domain: Domain = "localhost"
    # Subject tags look like "[#1042]".
    tag_prefix: TagPrefix = "#"
    # Mail to this address (or whose first line is "#note") from an agent is an
    # internal note; default: support_address with "+note" (support+note@...).
    note_address: Email | None = None
    # Key that signs our Message-IDs (from secret, secret_file or HELPDESK_SECRET).
    # Unset: a random key is generated once and kept in the database.
    secret: Password | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_domain(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "domain" in data:
            return data
        support = data.get("support_address", DEFAULT_SUPPORT_ADDRESS)
        valid = isinstance(support, str) and _EMAIL.fullmatch(support.strip())
        # An invalid support_address is reported on its own key; fall back quietly.
        domain = support.strip().rpartition("@")[2] if valid else "localhost"
        return {**data, "domain": domain}

    @field_validator("own_addresses")
    @classmethod
    def _include_support(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        support = info.data.get("support_address")
        everything = (support, *value) if isinstance(support, str) else value
        return tuple(dict.fromkeys(everything))  # de-duplicated, order kept

    @property
    def notes_to(self) -> str:
        """The address whose mail from agents is an internal note."""
        if self.note_address:
            return self.note_address
        local, _, domain = self.support_address.partition("@")
        return f"{local}+note@{domain}"

    def is_own_address(self, address: str) -> bool:
        """True for our addresses and their ``+tag`` sub-addresses, in any case."""
        wanted = address.strip().lower()
        return wanted in self.own_addresses or _without_subaddress(wanted) in self.own_addresses


class DatabaseSettings(_Section):
    """``[database]``; ``HELPDESK_DATABASE_URL`` overrides the file."""

    # SQLAlchemy URL; a relative SQLite path is resolved against base_dir.
    url: DatabaseUrl = Field(default=DEFAULT_DATABASE_URL, validate_default=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A PostgreSQL URL may carry a password; keep it out of logs and tracebacks.
        for name, value in super().__repr_args__():
            yield name, _redact_url(value) if name == "url" else value


class MailboxSettings(_Section):
    """One ``[[mailbox]]``: an IMAP folder that ingest polls."""

    name: NonEmptyStr
    host: NonEmptyStr
    # Defaults to 993 with ssl, 143 otherwise.
    port: Port = 993
    tls: TlsMode = Tls.SSL
    ca_file: ExistingFile | None = None
    username: NonEmptyStr
    # From password, password_file or HELPDESK_MAILBOX_<NAME>_PASSWORD.
    password: Password
    folder: NonEmptyStr = "INBOX"
    after: Annotated[AfterProcessing, _choice(AfterProcessing)] = AfterProcessing.MOVE
    # Only used when after = "move".
    processed_folder: NonEmptyStr = "Processed"
    failed_folder: NonEmptyStr = "Failed"
    team: NonEmptyStr | None = None
    poll_interval: Seconds = 60.0
    batch_size: BatchSize = 100

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        return _derive_port(data, IMAP_PORTS, Tls.SSL)


class MaildirSettings(_Section):
    """One ``[[maildir]]``: a Maildir an MTA delivers to; new/ moves to cur/ after commit."""

    name: NonEmptyStr
    path: ResolvedPath
    team: NonEmptyStr | None = None
    poll_interval: Seconds = 5.0


class LmtpSettings(_Section):
    """``[lmtp]``: listen for LMTP deliveries from the local MTA (only when the section exists)."""

    host: NonEmptyStr = "127.0.0.1"
    # 24 is LMTP's registered port, but it needs root; 2424 does not.
    port: Port = 2424


class DaemonSettings(_Section):
    """``[daemon]``: how `helpdesk run` behaves."""

    # A message whose parsing takes longer than this is quarantined.
    message_time_limit: Seconds = 60.0
    # A mailbox is worked by the holder of a lease of this length, renewed while working.
    lease_seconds: Seconds = 60.0
    # How often the outbox is checked for due mail when idle.
    send_interval: Seconds = 2.0


class SmtpSettings(_Section):
    """``[smtp]``: where outgoing mail is handed over.

    The default is a local MTA on localhost:25 without TLS or login, which is
    what a stock Postfix/Exim on the help desk host offers.
    """

    host: NonEmptyStr = "localhost"
    # Defaults to 465 with ssl, 587 with starttls, 25 with none.
    port: Port = 25
    tls: TlsMode = Tls.NONE
    ca_file: ExistingFile | None = None
    username: NonEmptyStr | None = None
    # From password, password_file or HELPDESK_SMTP_PASSWORD.
    password: Password | None = None
    timeout: Seconds = 30.0

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        return _derive_port(data, SMTP_PORTS, Tls.NONE)


class AutoReplySettings(_Section):
    """``[auto_reply]``: how many automatic replies one sender may get."""

    # At most this many automatic replies per sender address within the window.
    max_per_sender: Annotated[StrictInt, AfterValidator(_positive)] = 10
    window_hours: Seconds = 24.0


class BounceSettings(_Section):
    """``[bounces]``: what a permanent delivery failure does."""

    # No automatic mail to an address that bounced permanently, for this many days.
    suppress_days: Seconds = 7.0


class OutboxSettings(_Section):
    """``[outbox]``: retries of outgoing mail."""

    # A mail refused with 5xx this many times is marked failed.
    max_permanent_failures: Annotated[StrictInt, AfterValidator(_positive)] = 3
    # Temporary failures (4xx, connection) are retried with capped exponential backoff...
    retry_max_delay: Seconds = 3600.0
    # ...until the mail is this old, then it is marked failed.
    give_up_after_hours: Seconds = 120.0


class ThreadingPolicy(_Section):
    """``[threading]``: the two judgement calls when matching mail to tickets."""

    foreign_tag: Annotated[ForeignTagPolicy, _choice(ForeignTagPolicy)] = (
        ForeignTagPolicy.NEW_TICKET
    )
    closed_ticket: Annotated[ClosedTicketPolicy, _choice(ClosedTicketPolicy)] = (
        ClosedTicketPolicy.REOPEN
    )


class RulesSettings(_Section):
    """``[rules]``: the directory of rule files."""

    dir: ResolvedPath = Field(default=Path("rules"), validate_default=True)


class TemplatesSettings(_Section):
    """``[templates]``: the directory of mail templates."""

    dir: ResolvedPath = Field(default=Path("templates"), validate_default=True)


class TeamSettings(_Section):
    """One ``[[team]]``."""

    name: NonEmptyStr
    address: Email | None = None
    # Escalations (time-driven rules) go here; default: the team address.
    lead: Email | None = None


class SecuritySettings(_Section):
    """``[security]``: who may act as an agent by e-mail."""

    # When set, agent powers by e-mail (relay, notes, commands) need an
    # Authentication-Results header from this host (our MX) with DKIM or SPF
    # pass aligned to the From domain. Unset: the From address is trusted.
    trusted_authserv_id: NonEmptyStr | None = None


class AgentSettings(_Section):
    """One ``[[agent]]``: a person whose mail counts as an agent reply."""

    name: NonEmptyStr
    addresses: tuple[Email, ...] = Field(min_length=1)
    teams: tuple[NonEmptyStr, ...] = ()

    @field_validator("addresses", "teams")
    @classmethod
    def _deduplicate(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))


class Settings(_Section):
    """Everything helpdesk is configured with; build it with `load_settings`."""

    helpdesk: HelpdeskSettings = Field(default_factory=HelpdeskSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    mailboxes: tuple[MailboxSettings, ...] = ()
    maildirs: tuple[MaildirSettings, ...] = ()
    lmtp: LmtpSettings | None = None
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    threading: ThreadingPolicy = Field(default_factory=ThreadingPolicy)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    auto_reply: AutoReplySettings = Field(default_factory=AutoReplySettings)
    bounces: BounceSettings = Field(default_factory=BounceSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    templates: TemplatesSettings = Field(default_factory=TemplatesSettings)
    teams: tuple[TeamSettings, ...] = ()
    agents: tuple[AgentSettings, ...] = ()
    # The file these settings came from; None for built-in defaults.
    source: Path | None = None
    # What relative paths were resolved against: the file's directory, else the cwd.
    base_dir: Path = Field(default_factory=Path.cwd)

    def agent_by_address(self, address: str) -> AgentSettings | None:
        """The agent who owns `address` (case-insensitive), if any."""
        wanted = address.strip().lower()
        return next((agent for agent in self.agents if wanted in agent.addresses), None)

    def is_own_address(self, address: str) -> bool:
        """True if mail from `address` is mail from the help desk itself."""
        return self.helpdesk.is_own_address(address)


# The file's layout, in the order sections are checked and documented.
_TABLES: dict[str, type[_Section]] = {
    "helpdesk": HelpdeskSettings,
    "database": DatabaseSettings,
    "mailbox": MailboxSettings,
    "maildir": MaildirSettings,
    "lmtp": LmtpSettings,
    "daemon": DaemonSettings,
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
    here = (cwd or Path.cwd()).absolute()
    if path is not None:
        return _must_exist(here / path, "")
    named = (environ or {}).get(CONFIG_ENV)
    if named:  # an empty variable counts as unset, as shells make that easy to do
        return _must_exist(here / named, CONFIG_ENV)
    for candidate in (here / CONFIG_FILENAME, SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def _must_exist(path: Path, key: str) -> Path:
    """`path` if it is a file; else a ConfigError (blaming `key`, when it came from one)."""
    if path.is_file():
        return path
    if key:
        state = "something that is not a file" if path.exists() else "a file that does not exist"
        raise ConfigError(path, [ConfigProblem(key, f"names {state}")])
    raise ConfigError(
        path, [ConfigProblem("", "is not a file" if path.exists() else "file not found")]
    )


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
            "daemon": self._table(document, "daemon"),
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

    # -- secrets and the environment --

    def _database_env(self) -> dict[str, Any]:
        url = self.environ.get(DATABASE_URL_ENV)
        if not url:
            return {}
        if not _URL.fullmatch(url):
            self._problem(DATABASE_URL_ENV, f"is not a database URL (got {_redact_url(url)!r})")
            return {}
        # Typed in a shell, a relative SQLite path means "here", not "next to the file".
        return {"url": _resolve_sqlite_url(url, self.cwd)}

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

    def _read_secret(self, value: object, key: str) -> str | None:
        if not isinstance(value, str):
            self._problem(key, f"expected a string (a file path), got {_toml_type(value)}")
            return None
        path = self.base_dir / value
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self._problem(key, f"cannot read {path}: {reason or exc}")
            return None
        # Files written by `echo` or an editor end in a newline that is not part of it.
        secret = text.removesuffix("\n").removesuffix("\r")
        if not secret:
            self._problem(key, f"{path} is empty")
            return None
        return secret

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
                elif address in own or _without_subaddress(address) in own:
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
