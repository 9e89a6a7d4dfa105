"""INSERT ... ON CONFLICT for the dialect in use, imported only when first needed.

Importing `sqlalchemy.dialects.postgresql` loads every PostgreSQL driver's
dialect module (asyncpg's too) and costs a short command on SQLite tens of
milliseconds at start-up; so the dialect's own `insert` is looked up here,
on the first statement that needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def dialect_insert(dialect: str) -> Callable[..., Any]:
    """`insert` of PostgreSQL or SQLite (the two stores), with `on_conflict_do_*`."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert
