"""Field types and value checks of the configuration: each check raises ValueError with
the words an admin needs, which the loader files under the key that was wrong."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    SecretStr,
    StrictFloat,
    StrictInt,
    ValidationInfo,
)

# The database URL's rules are shared with the commands that skip validation (configfile).
from helpdesk.configfile import DATABASE_PASSWORD_ENV as DATABASE_PASSWORD_ENV
from helpdesk.configfile import DATABASE_URL_ENV as DATABASE_URL_ENV
from helpdesk.configfile import DEFAULT_DATABASE_URL as DEFAULT_DATABASE_URL
from helpdesk.configfile import URL_PASSWORD_RE, URL_RE
from helpdesk.configfile import resolve_sqlite_url as _resolve_sqlite_url
from helpdesk.configfile import url_has_password as url_has_password
from helpdesk.names import tag_prefix_problem

SMTP_PASSWORD_ENV = "HELPDESK_SMTP_PASSWORD"  # noqa: S105 - a variable name, not a secret
SECRET_ENV = "HELPDESK_SECRET"  # noqa: S105 - a variable name, not a secret

DEFAULT_NAME = "IT Help Desk"
DEFAULT_SUPPORT_ADDRESS = "support@localhost"

_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_URL = URL_RE
_URL_PASSWORD = URL_PASSWORD_RE


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
    problem = tag_prefix_problem(value)
    if problem is not None:
        raise ValueError(problem)
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


def _not_negative(value: int) -> int:
    if value < 0:
        raise ValueError(f"must be 0 or more (got {value})")
    return value


def _not_negative_float(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a number, 0 or more (got {_show(value)})")
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


def _redact_url(url: str) -> str:
    """The URL with any password replaced, for repr and error messages."""
    return _URL_PASSWORD.sub(r"\g<head>***@", url)


def mailbox_password_env(name: str) -> str:
    """The environment variable that may hold the password of mailbox `name`."""
    return f"HELPDESK_MAILBOX_{re.sub(r'[^A-Z0-9]', '_', name.upper())}_PASSWORD"


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


