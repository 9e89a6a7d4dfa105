"""The sender: claims due outbox rows and hands them to the relay, once each.

One pass (`run_once`) claims a batch, sends it over one SMTP connection (kept
open while there is work, reconnected when it fails) and records what the
relay said about each recipient. `run(stop)` repeats that whenever a commit
queued mail (`wake`, from any thread; a NOTIFY from another daemon or a
change to the SQLite file from another process, see `helpdesk.smtp.watch`),
when retries come due (`interval`, also the safety net), and until `stop`.

The promises (issue 9 items 5-9):

* A result the relay accepted is kept in memory and written by the
  recorder, which retries with backoff until the commit succeeds; on stop it
  is written before the claims are given back. The next mail goes out up to
  its content meanwhile, but its final dot (the moment the relay takes it)
  waits for that commit: at no moment is more than one accepted mail
  unrecorded, so a process dying between a 250 and its commit (a few
  milliseconds) sends at most that one mail twice.
* While a batch is held its claims are renewed every third of the lease,
  and each mail's conversation has one deadline: the SMTP timeout for the
  whole mail (twice that when a connection must be set up first), never
  beyond the time the claim is known to hold, nor beyond a few seconds
  after a stop. So no second sender can take a row that is being sent.
* On stop: no new mail is started, the one in hand is finished (or cut off
  after STOP_GRACE and given back), results are recorded, claims released.
* Problems of the relay itself (`RelayProblem`) leave the mail untouched:
  the sender backs off, logs once per change of problem, and records the
  problem in `relay_state` for `outbox list` and `helpdesk status`. A
  database outage is logged once per change too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn, TypeVar

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from helpdesk.delivery import claims, outbox
from helpdesk.observe import NULL_OBSERVER, Observer
from helpdesk.settings import SmtpSettings
from helpdesk.smtp.conversation import Envelope, Problem, Relay, RelayProblem
from helpdesk.smtp.recorder import STORE_ERRORS, Backoff, Recorder, StoreHealth
from helpdesk.smtp.watch import Watcher, start_watcher
from helpdesk.store.models import utcnow

log = structlog.get_logger()

T = TypeVar("T")

# After a stop, the mail in hand may take this much longer; then it is given back.
STOP_GRACE = 5.0


@dataclass(frozen=True)
class Claimed:
    """A claimed row, as much of it as the conversation and the log lines need."""

    item_id: int
    envelope: Envelope
    correlation_id: str | None


class Sender:
    """Delivers the outbox: `run_once()` for one batch, `run(stop)` as a daemon task."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: SmtpSettings,
        policy: outbox.OutboxPolicy,
        *,
        holder: str,
        batch: int = 50,
        lease: timedelta = timedelta(minutes=5),
        interval: float = 2.0,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        relay_backoff: Backoff | None = None,
        reuse_connection: bool = True,
        watch: bool = True,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self.sessions = sessions
        # Told the relay's answer about each recipient of each attempt (metrics).
        self.observer = observer
        self.settings = settings
        self.policy = policy
        self.holder = holder
        self.batch = batch
        self.lease = lease
        self.interval = interval
        self.clock = clock
        self.rng = rng
        self.relay_backoff = relay_backoff or Backoff(base=1.0, cap=60.0)
        self.watch = watch
        self.relay = Relay(settings, reuse=reuse_connection)
        self.sent = 0  # rows accepted for at least one recipient since start
        self.handled = 0  # rows the last pass finished with (any answer about recipients)
        self.relay_problem: RelayProblem | None = None
        self.store = StoreHealth()
        self.recorder = Recorder(self._write, self._log_recorded, self.store)
        self._relay_failures = 0
        self._relay_retry_at = 0.0
        self._relay_known_ok = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        self._woken = False
        self._stop_at: float | None = None
        self._claim_valid_until = 0.0
        self._row_deadline = 0.0
        self._timeout: asyncio.Timeout | None = None

    @property
    def _lease_s(self) -> float:
        return self.lease.total_seconds()

    @property
    def _margin(self) -> float:
        # Stop using a claim this long before it would expire: room for clock
        # drift between us and the database and for the recorder's commit.
        return min(self._lease_s / 4, 5.0)

    # -- one batch -------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim due rows, send them over one connection, record the answers.

        Returns how many rows the relay accepted for at least one recipient.
        Called on its own (tests, `outbox send`), it closes the connection at
        the end; under `run` the connection stays open while there is work.
        """
        try:
            return await self._batch()
        finally:
            if self._loop is None:
                await self.relay.close()

    async def _batch(self) -> int:
        self.handled = 0
        if self._stop_at is not None or self.relay_waiting() > 0:
            return 0
        started = time.monotonic()
        claimed = await asyncio.to_thread(self._claim)
        if not claimed:
            return 0
        self._claim_valid_until = started + self._lease_s
        heartbeat = asyncio.create_task(self._heartbeat(), name="outbox-claims")
        given: set[int] = set()
        try:
            accepted = await self._deliver_batch(claimed, given)
            # Written before anything else happens: until then the rows stay claimed.
            await self.recorder.flush()
            rest = [c.item_id for c in claimed if c.item_id not in given]
            if rest:
                await asyncio.to_thread(self._release, rest)
        finally:
            heartbeat.cancel()
        self.sent += accepted
        return accepted

    async def _deliver_batch(self, claimed: Sequence[Claimed], given: set[int]) -> int:
        accepted = 0
        for row in claimed:
            if self._stop_at is not None or not self._claim_holds():
                break
            if self.store.failing:
                # The store refuses writes: start nothing until the results are in.
                await self.recorder.flush()
            try:
                replies = await self._deliver_one(row)
            except RelayProblem as problem:
                # The relay's own refusal has a code (MAIL FROM, AUTH); a lost
                # connection or a timeout has none.
                self.observer.send_attempted(problem.code, len(row.envelope.recipients))
                if problem.problem is not Problem.TIMEOUT or self._stop_at is None:
                    await self._relay_failed(problem)
                break
            except _ClaimRunningOut:
                break  # given back before its dot: not an attempt the relay answered
            for reply in replies:
                self.observer.send_attempted(reply.code)
            await self._relay_ok()
            given.add(row.item_id)
            self.recorder.add(claims.DeliveryReport(row.item_id, replies), row)
            self.handled += 1
            if any(r.accepted for r in replies):
                accepted += 1
        return accepted

    async def _deliver_one(self, row: Claimed) -> tuple[claims.RecipientReply, ...]:
        """One mail under one deadline; its final dot only once the previous result is in."""
        budget = self.settings.timeout * (1 if self.relay.connected else 2)
        self._row_deadline = time.monotonic() + budget
        prepared = await self._within_deadline(lambda: self.relay.prepare(row.envelope), budget)
        if prepared.waiting:
            # At most one mail accepted and not yet recorded, ever: a crash sends
            # at most that one twice. The wait is the store's, not the relay's.
            waited = time.monotonic()
            await self.recorder.flush()
            self._row_deadline += time.monotonic() - waited
            if self._remaining() < self._dot_reserve:
                # Once the dot is out the mail is the relay's; never send it without
                # time left to hear the answer (RFC 1047), nor past our claim.
                self._cut(budget)
        return await self._within_deadline(lambda: self.relay.finish(prepared), budget)

    @property
    def _dot_reserve(self) -> float:
        return min(self.settings.timeout, self._lease_s - self._margin) / 2

    async def _within_deadline(self, step: Callable[[], Awaitable[T]], budget: float) -> T:
        if self._remaining() <= 0:
            self._cut(budget)
        timeout = asyncio.timeout(self._remaining())
        try:
            async with timeout:
                self._timeout = timeout
                return await step()
        except TimeoutError:
            if not timeout.expired():
                raise
            self._cut(budget)
        finally:
            self._timeout = None

    def _cut(self, budget: float) -> NoReturn:
        """The deadline has come: drop the connection and say why."""
        self.relay.abort()
        claim_limit = self._claim_valid_until - self._margin
        if self._stop_at is None and claim_limit <= self._row_deadline:
            raise _ClaimRunningOut()
        # After a stop, TIMEOUT only gives the mail back (see _deliver_batch).
        raise RelayProblem(Problem.TIMEOUT, f"no answer within {budget:g} s")

    def _deadline(self) -> float:
        limits = [self._row_deadline, self._claim_valid_until - self._margin]
        if self._stop_at is not None:
            limits.append(self._stop_at + STOP_GRACE)
        return min(limits)

    def _remaining(self) -> float:
        return max(0.0, self._deadline() - time.monotonic())

    def _reschedule(self) -> None:
        if self._timeout is not None and not self._timeout.expired():
            loop = asyncio.get_running_loop()
            self._timeout.reschedule(loop.time() + self._remaining())

    def _claim_holds(self) -> bool:
        return time.monotonic() < self._claim_valid_until - self._margin

    async def _heartbeat(self) -> None:
        """Renew our claims every third of the lease while a batch is in hand."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            started = time.monotonic()
            try:
                await asyncio.to_thread(self._renew)
            except STORE_ERRORS as exc:
                self.store.failed("outbox.claims_not_renewed", exc)
                continue
            self._claim_valid_until = started + self._lease_s
            self._reschedule()

    # -- the relay's state ------------------------------------------------------------

    def relay_waiting(self) -> float:
        """Seconds until the relay is tried again after a problem (0: now)."""
        return max(0.0, self._relay_retry_at - time.monotonic())

    async def _relay_failed(self, problem: RelayProblem) -> None:
        self._relay_failures += 1
        delay = self.relay_backoff.delay(self._relay_failures, self.rng)
        self._relay_retry_at = time.monotonic() + delay
        previous, self.relay_problem = self.relay_problem, problem
        self._relay_known_ok = False
        if previous is None or previous.key != problem.key:
            # One line per change of problem, not one per mail or per retry.
            log.warning("smtp.relay_failed", relay=self.relay.name, problem=problem.problem.value,
                        code=problem.code, error=problem.detail, retry_in=round(delay, 1))
        await self._save_relay_state(problem, delay)

    async def _relay_ok(self) -> None:
        self._relay_failures = 0
        self._relay_retry_at = 0.0
        if self.relay_problem is not None:
            log.info("smtp.relay_recovered", relay=self.relay.name,
                     after=self.relay_problem.problem.value)
            self.relay_problem = None
        if not self._relay_known_ok:
            self._relay_known_ok = await self._save_relay_state(None, 0.0)

    async def _save_relay_state(self, problem: RelayProblem | None, delay: float) -> bool:
        now = self.clock()
        next_try = now + timedelta(seconds=delay) if problem is not None else None

        def save() -> None:
            with self.sessions.begin() as session:
                outbox.set_relay_state(
                    session, self.relay.name, holder=self.holder,
                    problem=problem.problem.value if problem else None,
                    error=problem.detail if problem else None, now=now, next_try_at=next_try)

        try:
            await asyncio.to_thread(save)
        except STORE_ERRORS as exc:
            self.store.failed("outbox.relay_state_not_saved", exc)
            return False
        return True

    # -- the loop ---------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due mail now; callable from any thread (the commit hooks call it)."""
        loop, event = self._loop, self._wake_event
        if loop is None or event is None:
            self._woken = True
            return
        # The loop is gone when the daemon has stopped; the mail waits for the next start.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set: after each wake-up, each `interval`, and at once
        again after a pass that did something."""
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        if self._woken:
            self._wake_event.set()
        watcher = self._start_watcher()
        stopper = asyncio.create_task(self._on_stop(stop), name="outbox-stop")
        try:
            while not stop.is_set():
                self._wake_event.clear()
                if await self._pass():
                    continue
                await self._idle(stop)
        finally:
            stopper.cancel()
            try:
                await self._shutdown()
            finally:
                if watcher is not None:
                    watcher.stop()

    def _start_watcher(self) -> Watcher | None:
        bind = self.sessions.kw.get("bind")
        if not self.watch or not isinstance(bind, Engine):
            return None
        return start_watcher(bind, self.wake)

    async def _on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stop_at = time.monotonic()
        self._reschedule()

    async def _pass(self) -> bool:
        """One batch; True when it did something and the next should follow at once."""
        if self.store.waiting() > 0:
            return False
        try:
            await self._batch()
        except STORE_ERRORS as exc:
            self.store.failed("outbox.store_unavailable", exc, backoff=True)
            return False
        except Exception as exc:  # noqa: BLE001 - a bug must not end the sender
            self.store.unexpected(exc)
            return False
        self.store.ok()
        return self.handled > 0 and self.relay_waiting() == 0

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait for a wake-up, the stop, or the interval; while the relay or the store
        is backing off, only for the stop or the end of the backoff."""
        assert self._wake_event is not None
        backing_off = max(self.relay_waiting(), self.store.waiting())
        events = [stop] if backing_off else [stop, self._wake_event]
        woken = await _first_of(events, backing_off or self.interval)
        if not woken and self.relay.connected:
            await self.relay.close()  # idle: do not hold a connection at the relay

    async def _shutdown(self) -> None:
        try:
            await self.recorder.flush()
        except asyncio.CancelledError:
            log.error("outbox.results_unrecorded", outbox_ids=self.recorder.item_ids(),
                      note="accepted by the relay but not recorded: sent again after the "
                           "claims expire")
            raise
        try:
            await asyncio.to_thread(self._release, None)
        except STORE_ERRORS as exc:
            self.store.failed("outbox.claims_not_released", exc)
        await self.relay.close()

    # -- the store -------------------------------------------------------------------

    def _claim(self) -> list[Claimed]:
        with self.sessions.begin() as session:
            items = claims.claim_due(
                session, holder=self.holder, limit=self.batch, now=self.clock(), lease=self.lease
            )
            return [Claimed(i.id, Envelope(i.envelope_from, i.recipients, i.raw), i.correlation_id)
                    for i in items]

    def _renew(self) -> None:
        with self.sessions.begin() as session:
            claims.renew_claims(session, holder=self.holder, lease=self.lease, now=self.clock())

    def _release(self, item_ids: list[int] | None) -> None:
        with self.sessions.begin() as session:
            claims.release_claims(session, self.holder, item_ids)

    def _write(self, reports: list[claims.DeliveryReport]) -> list[claims.Recorded]:
        # A Core transaction: once per mail, and an ORM session cost more than the
        # statements it would run.
        bind = self.sessions.kw.get("bind")
        if isinstance(bind, Engine):
            with bind.begin() as conn:
                return self._record(conn, reports)
        with self.sessions.begin() as session:
            return self._record(session.connection(), reports)

    def _record(self, conn: Connection, reports: list[claims.DeliveryReport]
                ) -> list[claims.Recorded]:
        return claims.record(conn, reports, holder=self.holder, now=self.clock(),
                             policy=self.policy, rng=self.rng)

    def _log_recorded(self, recorded: Sequence[claims.Recorded], rows: Sequence[Claimed]) -> None:
        by_id = {row.item_id: row for row in rows}
        for done in recorded:
            row = by_id.get(done.item_id)
            fields = {"outbox_id": done.item_id,
                      "correlation_id": row.correlation_id if row else None}
            if done.outcome == "sent":
                log.info("outbox.sent", **fields, recipients=list(done.sent))
            elif done.outcome == "partial":
                log.warning("outbox.partly_sent", **fields, sent=list(done.sent),
                            retrying=list(done.deferred), failed=list(done.dead),
                            error=done.error)
            elif done.dead:
                log.warning("outbox.refused", **fields, error=done.error)
            else:
                log.info("outbox.retry_scheduled", **fields, error=done.error,
                         next_attempt_at=done.next_attempt_at.isoformat()
                         if done.next_attempt_at else None)
            for address in done.dead:
                log.warning("outbox.recipient_failed", **fields, recipient=address)


class _ClaimRunningOut(Exception):
    """The claim could not be renewed in time; the mail in hand is given back unsent."""


async def _first_of(events: Sequence[asyncio.Event], timeout: float) -> bool:
    """Wait until one of `events` is set or `timeout` passes; True if one was set."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
