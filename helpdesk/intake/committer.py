"""Group commit: one writer thread stores the prepared mail of every source in shared transactions.

A commit costs far more than storing one more mail in it (an fsync on
PostgreSQL, a WAL write on SQLite), so the committer takes what every source
has handed it — all of one IMAP fetch batch, several LMTP deliveries at once,
a Maildir's new files — up to `batch_max` mails, waits up to `batch_ms` for
more when fewer are there, and stores them in ONE transaction
(`helpdesk.flow.ingest.ingest_batch`: one savepoint for the batch, and a
savepoint a mail only when one fails): one mail's failure quarantines that
mail alone.

Only after the commit are the callers' futures resolved, so a source
acknowledges a mail (IMAP move, Maildir rename, LMTP 250) only once it is
durable. When the store fails (at BEGIN, inside, or at COMMIT) every request of
the batch gets `StoreUnavailable`: nothing is acknowledged, everything comes
again. The `message.ingested` lines are written after the commit, and so is
what the `observer` (metrics) hears, once per mail.

One writer also means SQLite's write lock is never contended between the
daemon's own sources.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from helpdesk.errors import StoreUnavailable
from helpdesk.flow.ingest import IngestContext, ingest_batch, log_ingested
from helpdesk.mail.prepare import Prepared
from helpdesk.observe import NULL_OBSERVER, Observer
from helpdesk.store.queries import contacts_apart
from helpdesk.values import IngestOutcome, Origin

log = structlog.get_logger()

__all__ = ["Committer", "store_now"]

Item = tuple[bytes, Origin, Prepared]


@dataclass
class _Request:
    items: Sequence[Item]
    future: Future[list[IngestOutcome]] = field(default_factory=Future)


def store_now(
    sessions: sessionmaker[Session], items: Sequence[Item], ctx: IngestContext,
    observer: Observer = NULL_OBSERVER,
) -> list[IngestOutcome]:
    """Store `items` in one transaction in the calling thread; logs (and tells `observer`)
    after the commit.

    Raises `StoreUnavailable` when the store fails, at BEGIN and COMMIT too.
    """
    started = time.perf_counter()
    try:
        with sessions.begin() as session:
            contacts_apart(session)
            outcomes = ingest_batch(session, items, ctx)
    except DBAPIError as exc:
        # Only an outage can reach here: ingest_batch quarantines what one mail caused.
        raise StoreUnavailable(f"database error: {exc.orig}") from exc
    seconds = (time.perf_counter() - started) / max(1, len(items))
    for (raw, origin, prepared), outcome in zip(items, outcomes, strict=True):
        log_ingested(outcome, origin, size=len(raw), seconds=seconds + prepared.seconds)
        # Committed is committed: a failing observer must not make the batch look failed.
        with contextlib.suppress(Exception):
            observer.ingested(origin, outcome, seconds + prepared.seconds)
    return outcomes


class Committer:
    """The one writer thread; `submit()` from any thread, `start()`/`stop()` around its life."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        context: Callable[[], IngestContext],
        *,
        batch_max: int = 200,
        batch_ms: float = 0.0,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self.sessions = sessions
        self.observer = observer
        self.context = context
        self.batch_max = batch_max
        self.batch_ms = batch_ms
        self.commits = 0
        self.stored = 0
        self.last_commit = time.monotonic()
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def submit(self, items: Sequence[Item]) -> Future[list[IngestOutcome]]:
        """Queue `items` for the next group commit; the future resolves after it."""
        request = _Request(items)
        if self._stopped.is_set():
            request.future.set_exception(StoreUnavailable("the committer has stopped"))
        elif not items:
            request.future.set_result([])
        else:
            self._queue.put(request)
        return request.future

    def store(self, items: Sequence[Item]) -> list[IngestOutcome]:
        """`submit` and wait; raises what the commit raised."""
        return self.submit(items).result()

    def start(self) -> Committer:
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive (the daemon's /healthz asks)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then end the thread."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopped.set()
        self._fail_queued()

    # -- the writer ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            self._commit(batch)
            if stop:
                return

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """`first` and whatever else is queued, up to batch_max mails or batch_ms."""
        batch, count = [first], len(first.items)
        deadline = time.monotonic() + self.batch_ms / 1000
        while count < self.batch_max:
            try:
                wait = deadline - time.monotonic()
                more = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return batch, True
            batch.append(more)
            count += len(more.items)
        return batch, False

    def _commit(self, batch: list[_Request]) -> None:
        items = [item for request in batch for item in request.items]
        try:
            outcomes = store_now(self.sessions, items, self.context(), self.observer)
        except StoreUnavailable as exc:
            for request in batch:
                request.future.set_exception(exc)
            return
        except Exception as exc:
            log.exception("committer.failed", messages=len(items))
            for request in batch:
                request.future.set_exception(exc)
            return
        self.commits += 1
        self.stored += len(items)
        self.last_commit = time.monotonic()
        position = 0
        for request in batch:
            size = len(request.items)
            request.future.set_result(outcomes[position:position + size])
            position += size

    def _fail_queued(self) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None and not request.future.done():
                request.future.set_exception(StoreUnavailable("the committer has stopped"))
