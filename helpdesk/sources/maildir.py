"""The Maildir source: a local MTA or MDA delivers into `new/`; we ingest and move to `cur/`.

Contract: a file is moved from `new/` to `cur/` (with the ``:2,S`` info of the
Maildir spec: "seen") only after the sink returned, that is after its
transaction committed. A crash in between leaves it in `new/`; the next pass
ingests it again and ingest recognises the duplicate. Files are taken in name
order, which for Maildir names (``<time>.<unique>.<host>``) is delivery order.
A file that vanished meanwhile (another reader moved it) is skipped.

`StoreUnavailable` from the sink ends the pass with the file left in `new/`;
`run()` backs off and retries. Any other exception from the sink is a bug: it
is logged, the file stays in `new/` and the pass goes on with the next file.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from helpdesk.errors import StoreUnavailable
from helpdesk.sources.base import Backoff, Sink, SourceStats
from helpdesk.values import Origin

log = structlog.get_logger()

# "2," starts the flags part of a Maildir name's info; S is "seen" (cr.yp.to/proto/maildir.html).
INFO_SEEN = ":2,S"


class MaildirSource:
    """Ingest every message delivered to `path/new`."""

    def __init__(
        self,
        path: Path,
        sink: Sink,
        *,
        name: str,
        backoff: Backoff | None = None,
        log: Any = log,
    ) -> None:
        self.path = Path(path)
        self.name = name
        self.backoff = backoff or Backoff(base=1.0, cap=300.0)
        self.stats = SourceStats()
        self._sink = sink
        self._log = log
        self._stop: threading.Event | None = None
        self._outage: str | None = None

    def run_once(self) -> int:
        """Ingest what is in `new/` now; returns how many files were moved to `cur/`."""
        new, cur = self.path / "new", self.path / "cur"
        done = 0
        for entry in sorted(os.listdir(new)):
            if self._stop is not None and self._stop.is_set():
                break
            if entry.startswith("."):  # Maildir readers ignore dot files
                continue
            if self._one(new / entry, cur):
                done += 1
        return done

    def _one(self, source: Path, cur: Path) -> bool:
        try:
            raw = source.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return False  # taken by another reader meanwhile
        origin = Origin(source="maildir", mailbox=self.name, path=source.name)
        started = time.perf_counter()
        with bound_contextvars(mailbox=self.name, path=source.name):
            try:
                outcome = self._sink(raw, origin)
            except StoreUnavailable:
                raise
            except Exception:  # noqa: BLE001 - a bug must not stall the directory
                self._log.exception("maildir.message_failed", mailbox=self.name, path=source.name)
                self.stats.errors += 1
                return False
            try:
                os.rename(source, cur / (_base_name(source.name) + _seen_info(source.name)))
            except FileNotFoundError:
                return False  # moved by another reader after we stored it; dedupe covers it
            self.stats.count(outcome)
            self._log.debug(
                "maildir.message_done",
                mailbox=self.name,
                path=source.name,
                message_id=outcome.message_id,
                ticket_id=outcome.ticket_id,
                outcome=outcome.kind.value,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        return True

    def run(self, stop: threading.Event, poll_interval: float = 5.0) -> None:
        """Poll until `stop` is set; store and file-system faults are retried with backoff."""
        self._stop = stop
        try:
            while not stop.is_set():
                try:
                    self.run_once()
                except (StoreUnavailable, OSError) as exc:
                    stop.wait(self._fault(exc))
                    continue
                if self._outage is not None:
                    self._log.info("maildir.recovered", mailbox=self.name, after=self._outage)
                    self._outage = None
                self.backoff.reset()
                stop.wait(poll_interval)
        finally:
            self._stop = None

    def _fault(self, exc: StoreUnavailable | OSError) -> float:
        event = "store.unavailable" if isinstance(exc, StoreUnavailable) else "maildir.unavailable"
        delay = self.backoff.next_delay()
        if event != self._outage:  # once per outage, not once per retry
            self._outage = event
            self._log.warning(event, mailbox=self.name, reason=str(exc), retry_in=round(delay, 2))
        return delay


def _base_name(name: str) -> str:
    return name.split(":", 1)[0]


def _seen_info(name: str) -> str:
    """The info part for `cur/`: existing flags kept (they are sorted by the spec), S added."""
    _, _, info = name.partition(":")
    if not info.startswith("2,"):
        return INFO_SEEN
    flags = set(info[2:]) | {"S"}
    return ":2," + "".join(sorted(flags))
