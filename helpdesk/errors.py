"""The exception vocabulary: each error carries what a person needs to fix it.

Bad *mail* is never one of these: ingest quarantines it. These are for bad
configuration, unknown objects asked for by a person, and an out-of-date
database. The CLI maps each to an exit code in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class HelpdeskError(Exception):
    """Base of every error helpdesk raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a configuration file."""

    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}" if self.key else self.problem


class ConfigError(HelpdeskError):
    """A configuration file is invalid; lists every problem, not just the first."""

    def __init__(self, path: Path | str | None, problems: list[ConfigProblem]) -> None:
        self.path = Path(path) if path is not None else None
        self.problems = problems
        where = str(self.path) if self.path else "built-in defaults"
        lines = [f"{where}: {problem}" for problem in problems]
        super().__init__("\n".join(lines))


class NotFound(HelpdeskError):
    """A person asked for something that does not exist."""

    def __init__(self, kind: str, ident: object) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"no {kind} {ident}")


class InvalidInput(HelpdeskError):
    """A person asked for something that cannot be done (bad status, unknown agent, ...)."""


class SchemaOutdated(HelpdeskError):
    """The database schema is not the one this version of helpdesk needs."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current = current
        self.head = head
        state = "has no helpdesk schema yet" if current is None else f"is at revision {current}"
        super().__init__(
            f"the database {state}; this helpdesk needs revision {head}. "
            "Run `helpdesk db upgrade` to bring it up to date."
        )


class StoreUnavailable(HelpdeskError):
    """The database cannot be reached or is locked; the work should be retried later."""
