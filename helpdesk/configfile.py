"""Which configuration file a command reads: the standard library only.

Kept apart from `helpdesk.settings` (which validates the file with pydantic)
so that `helpdesk ingest` of one piped mail can find the daemon's LMTP socket
without paying for that (`helpdesk.cli.handoff`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from helpdesk.errors import ConfigError, ConfigProblem

CONFIG_ENV = "HELPDESK_CONFIG"
CONFIG_FILENAME = "helpdesk.toml"
SYSTEM_CONFIG = Path("/etc/helpdesk/helpdesk.toml")
# [intake] max_message_bytes unless the file says otherwise.
MAX_MESSAGE_BYTES = 50 * 1024 * 1024

__all__ = ["CONFIG_ENV", "CONFIG_FILENAME", "MAX_MESSAGE_BYTES", "SYSTEM_CONFIG", "find_config"]


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
