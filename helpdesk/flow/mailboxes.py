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

Whose clock: on PostgreSQL, lease expiry (and daemon heartbeats) are measured
by the database's ``now()``, never by the host's clock, so that daemons on
hosts whose clocks disagree still agree on who holds a lease. The `now`
callers pass is used on SQLite only, where every process is on one host.

Progress belongs to its lease and its UIDVALIDITY: `record_progress` and
`record_uidvalidity` refuse (`LeaseLost`) a writer that no longer holds the
lease or read another UIDVALIDITY, so a stale daemon cannot make the new
holder skip mail.

Sharing the work: daemons announce themselves with `heartbeat`; with
`acquire_lease(..., share_of=mailboxes)` a daemon takes at most its fair share
(ceil(mailboxes / live daemons)) and hands back what it holds beyond it when a
live daemon that holds less asks for one, so two daemons with two mailboxes
work one each. A mailbox that nobody has taken for a whole lease period (its
would-be holder is stuck) is taken by anyone, share or not.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from helpdesk.errors import HelpdeskError
from helpdesk.store import schema
from helpdesk.store.models import DaemonBeat, ImapFetchFailure, MailboxState, utcnow
from helpdesk.store.upsert import dialect_insert

COUNTERS = ("fetched", "ingested", "duplicates", "quarantined", "errors")


class LeaseLost(HelpdeskError):
    """A mailbox write was refused: the writer no longer holds the lease, or the folder's
    UIDVALIDITY is not the one it read."""

    def __init__(self, mailbox: str, holder: str, reason: str) -> None:
        self.mailbox = mailbox
        self.holder = holder
        self.reason = reason
        super().__init__(f"mailbox {mailbox}: {holder} may not record progress: {reason}")


def database_now(session: Session, now: datetime) -> datetime:
    """The time leases are measured by: the database's `now()` on PostgreSQL, else `now`.

    `now()` is the start of the current transaction; lease transactions are short.
    """
    if session.get_bind().dialect.name == "postgresql":
        value = session.execute(select(func.now())).scalar_one()
        assert isinstance(value, datetime)
        return value
    return now


def get_state(session: Session, name: str) -> MailboxState:
    """The state row of mailbox `name`, created (empty) when missing."""
    return _load(session, name, lock=False)


def find_state(session: Session, name: str) -> MailboxState | None:
    """The state row of mailbox `name`, or None; never writes."""
    return _select(session, name, lock=False)


def list_states(session: Session) -> list[MailboxState]:
    """Every mailbox's state row, by name."""
    return list(session.scalars(select(MailboxState).order_by(MailboxState.name)))


def record_uidvalidity(session: Session, name: str, uidvalidity: int, *,
                       holder: str | None = None) -> bool:
    """Remember the folder's UIDVALIDITY; True when a different one was recorded before.

    A changed UIDVALIDITY means every UID we knew is void (RFC 3501 §2.3.1.1,
    RFC 9051 §2.3.1.1), so `last_uid` goes back to 0 and the next pass rescans
    the folder; ingest's dedupe recognises the messages already stored.
    With `holder`, LeaseLost unless `holder` holds the lease (a stale daemon
    must not turn the UIDVALIDITY back and make the holder rescan).
    """
    state = _load(session, name, lock=True)
    if holder is not None:
        _check_holder(state, holder)
    changed = state.uidvalidity is not None and state.uidvalidity != uidvalidity
    if state.uidvalidity != uidvalidity:
        state.uidvalidity = uidvalidity
    if changed:
        state.last_uid = 0
    session.flush()
    return changed


def record_progress(session: Session, name: str, uid: int, *, holder: str | None = None,
                    uidvalidity: int | None = None) -> None:
    """Everything up to `uid` is done; `last_uid` never goes backwards.

    With `holder` and `uidvalidity` (the lease holder's name and the
    UIDVALIDITY it read when it selected the folder), LeaseLost when another
    daemon holds the lease now or the recorded UIDVALIDITY differs: UIDs of
    another UIDVALIDITY mean other messages, and progress from a daemon that
    lost its lease could make the new holder skip mail. The row is locked, so
    the check and the write are one step.
    """
    state = _load(session, name, lock=True)
    if holder is not None:
        _check_holder(state, holder)
    if uidvalidity is not None and state.uidvalidity != uidvalidity:
        raise LeaseLost(name, holder or "?",
                        f"UIDVALIDITY is {state.uidvalidity} now, not {uidvalidity}")
    if uid > state.last_uid:
        state.last_uid = uid
        session.flush()


def _check_holder(state: MailboxState, holder: str) -> None:
    # Under the row lock: a daemon taking the lease over writes its name first,
    # so a lapsed lease nobody took yet is still the writer's own.
    if state.lease_holder != holder:
        now_held = f"held by {state.lease_holder}" if state.lease_holder else "released"
        raise LeaseLost(state.name, holder, f"the lease is {now_held}")


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
    session: Session, name: str, holder: str, ttl: timedelta, now: datetime, *,
    share_of: Sequence[str] | None = None,
) -> bool:
    """Take or renew the lease on `name` for `ttl`; False when someone else holds it.

    `share_of`: the mailboxes the daemons share. Then `holder` takes at most
    its fair share of them (see the module docstring), and a renewal beyond it
    gives the lease back (False) when a live daemon that holds less is asking.
    """
    state = _load(session, name, lock=True)
    clock = database_now(session, now)
    if not _free_for(state, holder, clock):
        if share_of is not None:
            _note_wanting(session, holder, clock)
        return False
    if share_of is not None and not _within_share(session, state, holder, ttl, clock, share_of):
        return False
    state.lease_holder = holder
    state.lease_expires_at = clock + ttl
    session.flush()
    return True


def _free_for(state: MailboxState, holder: str, clock: datetime) -> bool:
    return (
        state.lease_holder is None
        or state.lease_holder == holder
        or state.lease_expires_at is None
        or state.lease_expires_at <= clock
    )


def _within_share(session: Session, state: MailboxState, holder: str, ttl: timedelta,
                  clock: datetime, pool: Sequence[str]) -> bool:
    """Whether `holder` may take or keep `state`'s lease under the fair share.

    Below its share: yes. Holding it beyond its share: it hands the lease over
    (frees it, False) when a live daemon below its share asked for a lease
    within the last `ttl`, else keeps it. Taking one more beyond its share:
    only a mailbox free for a whole `ttl` (nobody else is taking it).
    """
    _lock_beat(session, holder)
    beats = _live(session, clock, pool)
    live = set(beats) | {holder}
    share = math.ceil(len(set(pool) | {state.name}) / len(live))
    held = _held(session, pool, clock)
    mine = sum(1 for mailbox, who in held.items() if who == holder and mailbox != state.name)
    if mine < share:
        return True
    if held.get(state.name) == holder:
        per_holder = Counter(held.values())
        asking = [other for other, wants_at in beats.items()
                  if other != holder and per_holder[other] < share
                  and wants_at is not None and clock - wants_at < ttl]
        if not asking:
            return True
        state.lease_holder = None
        state.lease_expires_at = clock  # free since now
        session.flush()
        return False
    if state.lease_expires_at is None:
        # Never held: start its clock, so that if the daemon meant to take it
        # never does (stuck), anyone may after a lease period.
        state.lease_expires_at = clock
        session.flush()
        return False
    return clock - state.lease_expires_at >= ttl


def _held(session: Session, pool: Sequence[str], clock: datetime) -> dict[str, str]:
    """Who holds each unexpired lease among `pool`."""
    rows = session.execute(
        select(MailboxState.name, MailboxState.lease_holder).where(
            MailboxState.name.in_(sorted(set(pool))),
            MailboxState.lease_holder.is_not(None),
            MailboxState.lease_expires_at > clock,
        )
    )
    return {mailbox: who for mailbox, who in rows if who is not None}


def release_lease(session: Session, name: str, holder: str, now: datetime | None = None) -> bool:
    """Give the lease up if `holder` has it; True when it did.

    The expiry becomes the release time (the database's on PostgreSQL): with
    no holder it says since when the mailbox is free, which fair sharing reads.
    """
    state = _select(session, name, lock=True)
    if state is None or state.lease_holder != holder:
        return False
    state.lease_holder = None
    state.lease_expires_at = database_now(session, now or utcnow())
    session.flush()
    return True


# -- daemons ---------------------------------------------------------------------


def pool_key(pool: Sequence[str]) -> str:
    """Daemons share leases with daemons configured with the same mailboxes only."""
    return hashlib.sha256("\n".join(sorted(set(pool))).encode()).hexdigest()[:32]


def heartbeat(session: Session, holder: str, ttl: timedelta, now: datetime, *,
              pool: Sequence[str] = ()) -> None:
    """Announce that `holder` is alive for `ttl` more (the database's clock on PostgreSQL).

    `pool`: the mailboxes it works; daemons share leases with those announcing
    the same set. Call it more often than `ttl` (e.g. every third of it).
    """
    clock = database_now(session, now)
    values = {"holder": holder, "started_at": clock, "seen_at": clock,
              "expires_at": clock + ttl, "pool": pool_key(pool)}
    dialect = session.get_bind().dialect.name
    insert = dialect_insert(dialect)
    statement = insert(schema.daemons).values(**values)
    session.execute(statement.on_conflict_do_update(
        index_elements=["holder"],
        set_={"seen_at": clock, "expires_at": clock + ttl, "pool": values["pool"]},
    ))


def live_daemons(session: Session, now: datetime, *, pool: Sequence[str] | None = None
                 ) -> list[str]:
    """The daemons whose heartbeat has not expired, by name; with `pool`, those sharing it."""
    return sorted(_live(session, database_now(session, now), pool))


def retire(session: Session, holder: str) -> None:
    """Remove `holder`'s heartbeat (a daemon shutting down): the others' shares grow at once."""
    session.execute(delete(DaemonBeat).where(DaemonBeat.holder == holder))


def _live(session: Session, clock: datetime, pool: Sequence[str] | None
          ) -> dict[str, datetime | None]:
    """Live daemons (sharing `pool` when given) and when each last asked for a lease."""
    query = select(DaemonBeat.holder, DaemonBeat.wants_at).where(DaemonBeat.expires_at > clock)
    if pool is not None:
        query = query.where(DaemonBeat.pool == pool_key(pool))
    return {holder: wants_at for holder, wants_at in session.execute(query)}


def _note_wanting(session: Session, holder: str, clock: datetime) -> None:
    """`holder` asked for a lease someone else holds: a holder beyond its share may hand over."""
    session.execute(update(DaemonBeat).where(DaemonBeat.holder == holder)
                    .values(wants_at=clock))


def _lock_beat(session: Session, holder: str) -> None:
    # One holder's lease decisions one at a time (its mailbox threads renew
    # concurrently): without this, two of them over the share could both give
    # their lease back. SQLite ignores FOR UPDATE; BEGIN IMMEDIATE serialises.
    session.execute(select(DaemonBeat.holder).where(DaemonBeat.holder == holder)
                    .with_for_update())


# -- rows ------------------------------------------------------------------------


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
    if dialect in ("postgresql", "sqlite"):
        session.execute(dialect_insert(dialect)(MailboxState).values(**values)
                        .on_conflict_do_nothing())
    elif session.get(MailboxState, name) is None:
        session.add(MailboxState(**values))
        session.flush()
