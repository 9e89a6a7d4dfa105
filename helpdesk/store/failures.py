"""Whose fault is a database error: the store's (retry later) or one mail's data (quarantine it)?

Issue 12 §9 and the non-negotiables draw the line: our own failures — the
database down, locked, out of disk, an I/O error — are retried and never blamed
on the mail; a database error caused by one mail's data (a value too long for
an index, a string the database cannot hold, too many bound parameters) is that
mail's problem and the mail is quarantined, so it cannot stall a mailbox.

The classification reads the driver's own error code: SQLite's primary result
code (`sqlite_errorcode`, Python 3.11+) and PostgreSQL's SQLSTATE class. What
we do not recognise counts as an outage: retrying a mail costs time, blaming
the mail for our failure loses its answer.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError

__all__ = ["is_outage"]

# SQLite primary result codes (sqlite.org/rescode.html) that say something about
# the statement or its values rather than about the database file or process.
_SQLITE_DATA_CODES = frozenset({
    1,   # SQLITE_ERROR: e.g. "too many SQL variables"
    18,  # SQLITE_TOOBIG: a string or blob over the length limit
    19,  # SQLITE_CONSTRAINT
    20,  # SQLITE_MISMATCH: datatype mismatch
    25,  # SQLITE_RANGE: bind parameter out of range
})

# PostgreSQL SQLSTATE classes (appendix A of its manual) caused by the values a
# statement carries: 22 data exception (string too long, invalid byte sequence,
# numeric out of range), 23 integrity constraint violation, 54 program limit
# exceeded (index row too large, too many parameters or columns).
_PG_DATA_CLASSES = frozenset({"22", "23", "54"})


def is_outage(exc: BaseException) -> bool:
    """True when `exc` is the store's own failure (retry later), False when one mail caused it."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if getattr(exc, "connection_invalidated", False):
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) not in _SQLITE_DATA_CODES
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        return sqlstate[:2] not in _PG_DATA_CLASSES
    return True
