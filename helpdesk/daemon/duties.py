"""The daemon's periodic duties: its heartbeat among the daemons sharing the store, and
the time-driven rules, run by whichever daemon holds the timers lease.

Each is one pass in a thread of its own (the store is blocking I/O), repeated by
`repeat` until the daemon stops; a failing pass is logged and the next one tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from helpdesk.desk import timers
from helpdesk.flow import mailboxes
from helpdesk.flow.ingest import IngestContext

__all__ = ["TIMERS_LEASE", "TIMER_INTERVAL", "heartbeat", "leave", "repeat", "run_timers"]

log = structlog.get_logger()

TIMER_INTERVAL = 60.0
# The lease row (in mailbox_state) that lets one daemon at a time run the timers.
TIMERS_LEASE = "@timers"


async def repeat(duty: Callable[[], object], period: float, stop: asyncio.Event, *,
                 at_once: bool, failed: str) -> None:
    """Run `duty` in a thread every `period` seconds until `stop` (first at once if `at_once`).

    A pass that raises is logged as the event `failed`; the duty goes on.
    """
    if not at_once:
        await _wait(stop, period)
    while not stop.is_set():
        try:
            await asyncio.to_thread(duty)
        except Exception:
            # A failing pass (database away, a bug) must not end the daemon.
            log.exception(failed)
        await _wait(stop, period)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def heartbeat(sessions: sessionmaker[Session], holder: str, lease_seconds: float,
              pool: Sequence[str], clock: Callable[[], datetime]) -> None:
    """Announce this daemon, so the others count it in when they share the mailboxes."""
    ttl = timedelta(seconds=lease_seconds)
    try:
        with sessions.begin() as session:
            mailboxes.heartbeat(session, holder, ttl, clock(), pool=list(pool))
    except DBAPIError as exc:
        log.warning("daemon.heartbeat_failed", error=str(exc.orig))


def leave(sessions: sessionmaker[Session], holder: str) -> None:
    """Leave the heartbeat table, so the other daemons' shares grow at once."""
    with contextlib.suppress(DBAPIError), sessions.begin() as session:
        mailboxes.retire(session, holder)


def run_timers(sessions: sessionmaker[Session], ctx: IngestContext, holder: str,
               lease_seconds: float, clock: Callable[[], datetime]) -> int:
    """One pass of the time-driven rules; returns how many fired.

    The pass reads only tickets whose stored deadline has passed (helpdesk.desk.timers),
    in chunks, one transaction each: a long first pass (after an upgrade or a
    change of the timers) does not hold row locks that ingest waits for. Each
    chunk re-takes the lease, so a daemon that lost it stops.
    """
    if ctx.rules is None or ctx.actions is None or not ctx.rules.timers:
        return 0
    now = clock()
    lease = timedelta(seconds=max(TIMER_INTERVAL * 2, lease_seconds))
    fired = 0
    seen: set[int] = set()
    while True:
        with sessions.begin() as session:
            if not mailboxes.acquire_lease(session, TIMERS_LEASE, holder, lease, clock()):
                return fired
            part = timers.run_chunk(session, ctx.rules.timers, ctx.actions, now, seen=seen)
        fired += len(part.fired)
        if part.done:
            return fired
