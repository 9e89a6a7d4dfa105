"""Time for leases in tests: the host clock on SQLite, the database's on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from helpdesk.flow import mailboxes
from tests.conftest import Clock, Store


def elapse(store: Store, clock: Clock, seconds: float) -> None:
    """Let `seconds` pass on the clock leases are measured by.

    SQLite measures by the host clock the caller passes; PostgreSQL by its own
    `now()`, which a test cannot move: there every stored lease, heartbeat and
    request time moves back by as much instead.
    """
    clock.advance(seconds=seconds)
    if store.backend != "postgres":
        return
    shift = f"interval '{seconds} seconds'"
    with store.sessions.begin() as session:
        session.execute(text("UPDATE mailbox_state "
                             f"SET lease_expires_at = lease_expires_at - {shift}"))
        session.execute(text(f"UPDATE daemons SET expires_at = expires_at - {shift}, "
                             f"seen_at = seen_at - {shift}, wants_at = wants_at - {shift}"))


def remaining(store: Store, clock: Clock, name: str = "it") -> timedelta:
    """How long the lease on `name` still runs, by the clock leases are measured by."""
    with store.sessions() as session:
        expires = mailboxes.get_state(session, name).lease_expires_at
        assert expires is not None
        return expires - mailboxes.database_now(session, clock.now)
