"""The Maildir source: a local MTA or MDA delivers into `new/`; we ingest and move to `cur/`.

Contract: a file is moved from `new/` to `cur/` (with the ``:2,S`` info of the
Maildir spec: "seen") only after the sink returned, that is after the batch it
was in committed. A crash in between leaves it in `new/`; the next pass
ingests it again and ingest recognises the duplicate. Files are taken in name
order, which for Maildir names (``<time>.<unique>.<host>``) is delivery order,
up to `batch_max` files (and `batch_bytes`) per commit.

One bad file never stops the directory (issue 9 §2): a file that cannot be
read (permissions, an I/O error, a directory, an empty file) is logged once
with its path, counted, skipped, and tried again on later passes with
backoff; after `file_attempts` tries it is reported — an error line, the
mailbox's health and counters in the store (`helpdesk mailbox list`) — and
still retried now and then, never silently dropped. A file that vanished
meanwhile (another reader moved it) is simply gone. A file larger than
`max_message_bytes` is quarantined with its headers and moved to `cur/`.

`StoreUnavailable` from the sink ends the pass with the batch left in
`new/`; `run()` backs off and retries.

Given a `stage` (the daemon's intake: prepare now, commit later), a pass
reads and prepares the next batch while the one before commits (in a thread
of its own), as the IMAP source does; batches still commit in name order, and
each batch's files are moved only after its own commit.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from structlog.contextvars import bound_contextvars

from helpdesk.errors import StoreUnavailable
from helpdesk.flow import mailboxes
from helpdesk.intake import PoolClosed, header_of, too_large
from helpdesk.sources.base import Backoff, Sink, SourceStats, Stage
from helpdesk.store.models import utcnow
from helpdesk.values import Incoming, IngestOutcome, Origin

log = structlog.get_logger()

# "2," starts the flags part of a Maildir name's info; S is "seen" (cr.yp.to/proto/maildir.html).
INFO_SEEN = ":2,S"
DEFAULT_MAX_MESSAGE_BYTES = 50 * 1024 * 1024
# What one batch may hold, so that a directory of huge files is not read at once.
BATCH_BYTES = 20 * 1024 * 1024
# Only the start of an oversized file is read, for its headers.
HEADER_BYTES = 256 * 1024


@dataclass
class _FileFault:
    """A file that could not be read, and when to try it again."""

    attempts: int
    error: str
    next_try: float
    reported: bool = False


class MaildirSource:
    """Ingest every message delivered to `path/new`."""

    def __init__(
        self,
        path: Path,
        sink: Sink,
        *,
        name: str,
        sessions: sessionmaker[Session] | None = None,
        backoff: Backoff | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        batch_max: int = 100,
        file_attempts: int = 5,
        file_retry: Callable[[int], float] = lambda attempts: min(300.0, 2.0 ** attempts),
        clock: Callable[[], datetime] = utcnow,
        log: Any = log,
        stage: Stage | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.backoff = backoff or Backoff(base=1.0, cap=300.0)
        self.stats = SourceStats()
        self.max_message_bytes = max_message_bytes
        self.batch_max = batch_max
        self.file_attempts = file_attempts
        self.last_beat = time.monotonic()
        self._sink = sink
        # With a stage, a batch is prepared in this thread while the one before commits.
        self._stage = stage
        self._sessions = sessions
        self._file_retry = file_retry
        self._clock = clock
        self._log = log
        self._stop: threading.Event | None = None
        self._outage: str | None = None
        self._faults: dict[str, _FileFault] = {}

    # -- one pass ----------------------------------------------------------------

    def run_once(self) -> int:
        """Ingest what is in `new/` now; returns how many files were moved to `cur/`."""
        new = self.path / "new"
        names = sorted(e for e in os.listdir(new) if not e.startswith("."))  # spec: skip dot files
        present = set(names)
        self._faults = {n: f for n, f in self._faults.items() if n in present}
        if self._stage is None:
            return sum(self._store(batch, self._sink([item for _, item in batch]))
                       for batch in self._batches(new, names))
        return self._pipelined(self._stage, self._batches(new, names))

    def _batches(self, new: Path, names: list[str]) -> Iterator[list[tuple[str, Incoming]]]:
        """The readable files in name order, in batches of `batch_max` and BATCH_BYTES."""
        batch: list[tuple[str, Incoming]] = []
        batch_bytes = 0
        for entry in names:
            if self._stop is not None and self._stop.is_set():
                break
            self.last_beat = time.monotonic()
            item = self._read(new / entry)
            if item is None:
                continue
            batch.append((entry, item))
            batch_bytes += len(item.raw)
            if len(batch) >= self.batch_max or batch_bytes >= BATCH_BYTES:
                yield batch
                batch, batch_bytes = [], 0
        if batch:
            yield batch

    def _pipelined(self, stage: Stage,
                   batches: Iterator[list[tuple[str, Incoming]]]) -> int:
        """Prepare each batch while the one before commits; move each after its own commit."""
        done = 0
        in_flight: tuple[list[tuple[str, Incoming]], Future[list[IngestOutcome]]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"store-{self.name}") as store:
            try:
                for batch in batches:
                    commit = stage([item for _, item in batch])
                    if in_flight is not None:
                        settled, in_flight = in_flight, None
                        done += self._store(settled[0], settled[1].result())
                    in_flight = (batch, store.submit(commit))
                if in_flight is not None:
                    settled, in_flight = in_flight, None
                    done += self._store(settled[0], settled[1].result())
            except BaseException:
                if in_flight is not None:
                    # Its commit may yet succeed: then move its files, or the next pass
                    # finds them again (as duplicates, which is safe, but slower).
                    with contextlib.suppress(BaseException):
                        self._store(in_flight[0], in_flight[1].result())
                raise
        return done

    def _read(self, source: Path) -> Incoming | None:
        """The file's mail, or None when it is gone or cannot be read (yet)."""
        fault = self._faults.get(source.name)
        if fault is not None and time.monotonic() < fault.next_try:
            return None
        origin = Origin(source="maildir", mailbox=self.name, path=source.name)
        try:
            size = source.stat().st_size
            if size > self.max_message_bytes:
                with source.open("rb") as handle:
                    head = header_of(handle.read(HEADER_BYTES))
                return Incoming(head, origin, problem=too_large(size, self.max_message_bytes))
            raw = source.read_bytes()
            if not raw:
                # MDAs write to tmp/ and rename, so new/ never holds a file being
                # written; an empty one is broken, but may yet be rewritten.
                raise OSError("the file is empty")
        except FileNotFoundError:
            self._faults.pop(source.name, None)
            return None  # taken by another reader meanwhile
        except OSError as exc:
            self._file_failed(source, exc)
            return None
        if fault is not None:
            self._faults.pop(source.name, None)
            self._log.info("maildir.file_readable", mailbox=self.name, path=source.name,
                           attempts=fault.attempts)
        return Incoming(raw, origin)

    def _store(self, batch: list[tuple[str, Incoming]], outcomes: list[IngestOutcome]) -> int:
        """Move the files of a committed batch to cur/; returns how many were moved."""
        moved = 0
        cur = self.path / "cur"
        for (entry, _item), outcome in zip(batch, outcomes, strict=True):
            with bound_contextvars(mailbox=self.name, path=entry):
                try:
                    os.rename(self.path / "new" / entry,
                              cur / (_base_name(entry) + _seen_info(entry)))
                except FileNotFoundError:
                    continue  # moved by another reader after we stored it; dedupe covers it
                except OSError as exc:
                    # Stored, yet still in new/: the next pass finds a duplicate.
                    self._file_failed(self.path / "new" / entry, exc)
                    continue
                self.stats.count(outcome)
                moved += 1
                self._log.debug("maildir.message_done", mailbox=self.name, path=entry,
                                message_id=outcome.message_id, ticket_id=outcome.ticket_id,
                                outcome=outcome.kind.value)
        return moved

    # -- files that cannot be read --------------------------------------------------

    def _file_failed(self, source: Path, exc: OSError) -> None:
        error = f"{type(exc).__name__}: {exc.strerror or exc}"
        fault = self._faults.get(source.name)
        attempts = (fault.attempts if fault else 0) + 1
        fault = _FileFault(attempts, error, time.monotonic() + self._file_retry(attempts),
                           reported=fault.reported if fault else False)
        self._faults[source.name] = fault
        self.stats.errors += 1
        if attempts == 1:
            self._log.warning("maildir.file_unreadable", mailbox=self.name, path=str(source),
                              error=error, retry_in=round(fault.next_try - time.monotonic(), 1))
        if attempts >= self.file_attempts and not fault.reported:
            fault.reported = True
            self._log.error("maildir.file_stuck", mailbox=self.name, path=str(source),
                            error=error, attempts=attempts,
                            action="fix the file's permissions or move it out of new/")
            self._report(source, error)

    def _report(self, source: Path, error: str) -> None:
        if self._sessions is None:
            return
        try:
            with self._sessions.begin() as session:
                mailboxes.add_counters(session, self.name, unreadable_files=1)
                mailboxes.record_health(session, self.name, "unreadable files",
                                        f"{source.name}: {error}", self._clock())
        except (OperationalError, InterfaceError):
            return  # the store's own outage is reported by the next pass

    @property
    def stuck_files(self) -> dict[str, str]:
        """Files given up on for now (path: error), for status reports."""
        return {name: f.error for name, f in self._faults.items() if f.reported}

    # -- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event, poll_interval: float = 5.0) -> None:
        """Poll until `stop` is set; store and file-system faults are retried with backoff."""
        self._stop = stop
        try:
            while not stop.is_set():
                self.last_beat = time.monotonic()
                try:
                    self.run_once()
                except PoolClosed:
                    break  # stopping: the batch in hand was not acknowledged
                except Exception as exc:  # noqa: BLE001 - _fault() sorts and logs every kind
                    stop.wait(self._fault(exc))
                    continue
                if self._outage is not None:
                    self._log.info("maildir.recovered", mailbox=self.name, after=self._outage)
                    self._outage = None
                    self._set_health("ok", None)
                self.stats.up = True
                self.stats.last_success_at = self._clock()
                self.backoff.reset()
                stop.wait(poll_interval)
        finally:
            self._stop = None

    def _fault(self, exc: Exception) -> float:
        if isinstance(exc, StoreUnavailable):
            event, health = "store.unavailable", "store unavailable"
        elif isinstance(exc, OSError):
            event, health = "maildir.unavailable", "unreadable directory"
        else:
            event, health = "maildir.unexpected_error", "internal error"
        self.stats.up = False
        delay = self.backoff.next_delay()
        if event != self._outage:  # once per outage, not once per retry
            self._outage = event
            self._log.warning(event, mailbox=self.name, reason=f"{type(exc).__name__}: {exc}",
                              retry_in=round(delay, 2),
                              exc_info=event == "maildir.unexpected_error")
            self._set_health(health, str(exc))
        return delay

    def _set_health(self, health: str, error: str | None) -> None:
        if self._sessions is None:
            return
        try:
            with self._sessions.begin() as session:
                mailboxes.record_health(session, self.name, health, error, self._clock())
        except (OperationalError, InterfaceError):
            return


def _base_name(name: str) -> str:
    return name.split(":", 1)[0]


def _seen_info(name: str) -> str:
    """The info part for `cur/`: existing flags kept (they are sorted by the spec), S added."""
    _, _, info = name.partition(":")
    if not info.startswith("2,"):
        return INFO_SEEN
    flags = set(info[2:]) | {"S"}
    return ":2," + "".join(sorted(flags))
