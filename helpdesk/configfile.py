"""Which configuration file a command reads, and how to log in to the store: the standard
library only.

Kept apart from `helpdesk.settings` (which validates the file with pydantic,
about a third of a reading command's start-up) so that `helpdesk ingest` of
one piped mail can find the daemon's LMTP socket (`helpdesk.cli.handoff`), and
the commands that only read the store can open it (`reading_config`), without
paying for that. The settings use the same rules for the database URL and its
password, from here.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpdesk.errors import ConfigError, ConfigProblem
from helpdesk.names import tag_prefix_problem

CONFIG_ENV = "HELPDESK_CONFIG"
CONFIG_FILENAME = "helpdesk.toml"
SYSTEM_CONFIG = Path("/etc/helpdesk/helpdesk.toml")
# [intake] max_message_bytes unless the file says otherwise.
MAX_MESSAGE_BYTES = 50 * 1024 * 1024

DATABASE_URL_ENV = "HELPDESK_DATABASE_URL"
DATABASE_PASSWORD_ENV = "HELPDESK_DATABASE_PASSWORD"  # noqa: S105 - a variable name
# Relative on purpose: resolved against base_dir like any path an admin writes.
DEFAULT_DATABASE_URL = "sqlite:///helpdesk.db"

URL_RE = re.compile(r"[a-z][a-z0-9+.-]*://.*", re.IGNORECASE)
_SQLITE_URL = re.compile(
    r"(?P<scheme>sqlite(?:\+\w+)?):///(?P<path>[^?]*)(?P<query>\?.*)?", re.IGNORECASE
)
URL_PASSWORD_RE = re.compile(r"(?P<head>://[^/@:]*:)[^/@]*@")

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILENAME",
    "DATABASE_PASSWORD_ENV",
    "DATABASE_URL_ENV",
    "DEFAULT_DATABASE_URL",
    "MAX_MESSAGE_BYTES",
    "SYSTEM_CONFIG",
    "URL_PASSWORD_RE",
    "URL_RE",
    "ReadingConfig",
    "document_digest",
    "find_config",
    "read_secret_file",
    "reading_config",
    "resolve_sqlite_url",
    "url_has_password",
]


def find_config(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    system: Path = SYSTEM_CONFIG,
) -> Path | None:
    """The config file to use: `path`, else $HELPDESK_CONFIG, else ./helpdesk.toml,
    else `system`; None when there is none (built-in defaults).

    A file named explicitly (argument or environment) must exist.
    """
    here = (cwd or Path.cwd()).absolute()
    if path is not None:
        return _must_exist(here / path, "")
    named = (environ or {}).get(CONFIG_ENV)
    if named:  # an empty variable counts as unset, as shells make that easy to do
        return _must_exist(here / named, CONFIG_ENV)
    for candidate in (here / CONFIG_FILENAME, system):
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


def resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """Make the file path of a relative SQLite URL absolute; other URLs pass through."""
    match = _SQLITE_URL.fullmatch(url)
    if match is None:
        return url
    path = match["path"]
    # Empty / :memory: are in-memory databases; file: is SQLite's URI form.
    if not path or path.startswith(("/", ":memory:", "file:")):
        return url
    return f"{match['scheme']}:///{base_dir / path}{match['query'] or ''}"


def url_has_password(url: str) -> bool:
    """True when `url` carries a password (``scheme://user:secret@host/...``)."""
    return URL_PASSWORD_RE.search(url) is not None


def read_secret_file(path: Path) -> str:
    """The secret in `path`, without the newline an editor adds; ValueError saying why not."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read {path}: {reason or exc}") from exc
    # Files written by `echo` or an editor end in a newline that is not part of it.
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def document_digest(document: Mapping[str, Any]) -> str:
    """A hash of the configuration as parsed (comments and layout do not count)."""
    text = json.dumps(document, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ReadingConfig:
    """What a command that only reads the store needs of the configuration."""

    source: Path | None
    url: str
    password: str | None = None
    tag_prefix: str = "#"
    # `document_digest` of the file: whether it was validated, and is mirrored, already.
    digest: str = ""


# The only [database] keys the short path knows; anything else takes the settings' path.
_READING_KEYS = frozenset({"url", "password_file"})


def reading_config(path: Path | None, environ: Mapping[str, str],
                   cwd: Path | None = None) -> ReadingConfig | None:
    """The database login by the settings' rules, without validating the rest of the file.

    None whenever anything is unusual (the file does not parse, [database] has
    other keys, a value is wrong or a password file cannot be read): the caller
    then loads the settings, which report every problem with its key.
    """
    here = (cwd or Path.cwd()).absolute()
    source = find_config(path, environ, here)
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8")) if source else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    base_dir = source.parent if source is not None else here
    database = document.get("database", {})
    if not isinstance(database, dict) or not set(database) <= _READING_KEYS:
        return None
    from_env = environ.get(DATABASE_URL_ENV)
    if from_env:
        # Typed in a shell, a relative SQLite path means "here", not "next to the file".
        url, against = from_env, here
    else:
        url, against = database.get("url", DEFAULT_DATABASE_URL), base_dir
    if not isinstance(url, str) or not URL_RE.fullmatch(url):
        return None
    password = environ.get(DATABASE_PASSWORD_ENV) or None
    secret_file = database.get("password_file")
    if password is None and secret_file is not None:
        if not isinstance(secret_file, str):
            return None
        try:
            password = read_secret_file(base_dir / secret_file)
        except ValueError:
            return None
    if password is not None and url_has_password(url):
        return None
    # How tickets are referred to, `[#1042]`: the one other setting reading commands show.
    desk = document.get("helpdesk", {})
    tag_prefix = desk.get("tag_prefix", "#") if isinstance(desk, dict) else None
    if not isinstance(tag_prefix, str) or tag_prefix_problem(tag_prefix) is not None:
        return None
    return ReadingConfig(source, resolve_sqlite_url(url, against), password, tag_prefix,
                         document_digest(document))
