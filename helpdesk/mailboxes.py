"""Mailbox state: how far ingestion got, who holds the lease, and counters (a service).

One `MailboxState` row per configured mailbox. Every function takes the
caller's session and never commits (design.md §2): the IMAP source wraps each
call, or a few of them, in its own short transaction.

Leases (design.md §7): several daemons may share one PostgreSQL store, but a
mailbox is worked by one holder at a time. A holder takes the lease when it is
free, expired or already its own, and renews it by taking it again before it
expires. On PostgreSQL the row is locked with ``SELECT ... FOR UPDATE`` so two
daemons cannot both see "free" and both take it; SQLite transactions are
``BEGIN IMMEDIATE`` (store/db.py), which serialises writers anyway. The lease
is an efficiency and politeness measure: correctness (nothing stored twice)
still rests on ingest's dedupe, which holds even if two holders overlapped.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from helpdesk.store.models import ImapFetchFailure, MailboxState

COUNTERS = ("fetched", "ingested", "duplicates", "quarantined", "errors")


def get_state(session: Session, name: str) -> MailboxState:
    """The state row of mailbox `name`, created (empty) when missing."""
    return _load(session, name, lock=False)


def find_state(session: Session, name: str) -> MailboxState | None:
    """The state row of mailbox `name`, or None; never writes."""
    return _select(session, name, lock=False)


def list_states(session: Session) -> list[MailboxState]:
    """Every mailbox's state row, by name."""
    return list(session.scalars(select(MailboxState).order_by(MailboxState.name)))


def record_uidvalidity(session: Session, name: str, uidvalidity: int) -> bool:
    """Remember the folder's UIDVALIDITY; True when a different one was recorded before.

    A changed UIDVALIDITY means every UID we knew is void (RFC 3501 §2.3.1.1,
    RFC 9051 §2.3.1.1), so `last_uid` goes back to 0 and the next pass rescans
    the folder; ingest's dedupe recognises the messages already stored.
    """
    state = _load(session, name, lock=True)
    changed = state.uidvalidity is not None and state.uidvalidity != uidvalidity
    if state.uidvalidity != uidvalidity:
        state.uidvalidity = uidvalidity
    if changed:
        state.last_uid = 0
    session.flush()
    return changed


def record_progress(session: Session, name: str, uid: int) -> None:
    """Everything up to `uid` is done; `last_uid` never goes backwards."""
    state = _load(session, name, lock=True)
    if uid > state.last_uid:
        state.last_uid = uid
        session.flush()


def add_counters(session: Session, name: str, **deltas: int) -> dict[str, Any]:
    """Add to the mailbox's counters (a JSON object); returns the new counters."""
    state = _load(session, name, lock=True)
    counters = dict(state.counters or {})
    for key, delta in deltas.items():
        if delta:
            counters[key] = int(counters.get(key, 0)) + delta
    # A new dict, not an in-place change: plain JSON columns do not track mutation.
    state.counters = counters
    session.flush()
    return counters


def record_poll(session: Session, name: str, now: datetime) -> None:
    """The mailbox was looked at, at `now`."""
    state = _load(session, name, lock=False)
    state.last_poll_at = now
    session.flush()


def record_health(
    session: Session, name: str, health: str, error: str | None, now: datetime
) -> None:
    """The mailbox's state for `mailbox list`: "ok", or a problem with its error and since when."""
    state = _load(session, name, lock=False)
    if health == "ok":
        state.problem_since = None
        state.last_error = error if error is not None else state.last_error
    elif state.health != health or state.problem_since is None:
        state.problem_since = now
    if health != "ok":
        state.last_error = error
    state.health = health
    session.flush()


def record_fetch_failure(
    session: Session, name: str, uidvalidity: int, uid: int, error: str, now: datetime
) -> int:
    """Count one failed FETCH of a message; returns how many times it failed so far."""
    row = session.get(ImapFetchFailure, (name, uidvalidity, uid), with_for_update=True)
    if row is None:
        row = ImapFetchFailure(mailbox=name, uidvalidity=uidvalidity, uid=uid, attempts=0,
                               last_error="", updated_at=now)
        session.add(row)
    row.attempts += 1
    row.last_error = error[:2000]
    row.updated_at = now
    session.flush()
    return row.attempts


def forget_fetch_failures(session: Session, name: str, uidvalidity: int, uids: list[int]) -> None:
    """The messages were fetched (or given up on): their failure counts are done with."""
    if uids:
        session.execute(
            delete(ImapFetchFailure).where(
                ImapFetchFailure.mailbox == name,
                ImapFetchFailure.uidvalidity == uidvalidity,
                ImapFetchFailure.uid.in_(uids),
            )
        )


def acquire_lease(
    session: Session, name: str, holder: str, ttl: timedelta, now: datetime
) -> bool:
    """Take or renew the lease on `name` until `now + ttl`; False when someone else holds it."""
    state = _load(session, name, lock=True)
    free = (
        state.lease_holder is None
        or state.lease_holder == holder
        or state.lease_expires_at is None
        or state.lease_expires_at <= now
    )
    if not free:
        return False
    state.lease_holder = holder
    state.lease_expires_at = now + ttl
    session.flush()
    return True


def release_lease(session: Session, name: str, holder: str) -> bool:
    """Give the lease up if `holder` has it; True when it did."""
    result = session.execute(
        update(MailboxState)
        .where(MailboxState.name == name, MailboxState.lease_holder == holder)
        .values(lease_holder=None, lease_expires_at=None)
        .execution_options(synchronize_session="fetch")
    )
    return bool(getattr(result, "rowcount", 0))


def _select(session: Session, name: str, *, lock: bool) -> MailboxState | None:
    # populate_existing: a row already in the identity map is refreshed, so a
    # lease decision never rests on a value read earlier in the session.
    query = (
        select(MailboxState)
        .where(MailboxState.name == name)
        .execution_options(populate_existing=True)
    )
    if lock:
        # SQLite ignores FOR UPDATE; its writers are serialised by BEGIN IMMEDIATE.
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def _load(session: Session, name: str, *, lock: bool) -> MailboxState:
    _ensure_row(session, name)
    state = _select(session, name, lock=lock)
    assert state is not None  # just ensured
    return state


def _ensure_row(session: Session, name: str) -> None:
    """Insert the row unless it exists, without failing when another daemon races us."""
    values = {"name": name, "last_uid": 0, "counters": {}}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(pg_insert(MailboxState).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite_insert(MailboxState).values(**values).on_conflict_do_nothing())
    elif session.get(MailboxState, name) is None:
        session.add(MailboxState(**values))
        session.flush()
