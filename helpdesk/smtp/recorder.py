"""Writing delivery results until they are committed, and the sender's view of the store.

The relay's 250 is the moment a mail has gone out; until the result is
committed, a crash would send it again once the claim expires. So results
wait here, in memory, and are written as soon as they come, in a thread, so
that the next mail's conversation goes on meanwhile (the sender holds that
mail's final dot until the commit is done). A commit that fails is retried
with backoff, as long as it takes; the sender starts no new mail meanwhile
(issue 9 item 5).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import exc as sa_exc

from helpdesk.delivery.claims import DeliveryReport, Recorded
from helpdesk.errors import StoreUnavailable

log = structlog.get_logger()

# The sender starts no new mail while this many results wait for their commit,
# or the oldest has waited this long (seconds): the bound on what a crash at
# that moment sends twice. A group commit normally takes a few milliseconds.
MAX_WAITING = 2
MAX_AGE = 0.25

# What a database that is down, locked, read-only or out of space raises.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.InternalError,
    sa_exc.TimeoutError,
    StoreUnavailable,
)

@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter (half fixed, half random), in seconds."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** max(0, failures - 1))
        jitter: float = (rng or random).random()
        return ceiling / 2 + jitter * ceiling / 2


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {text[0] if text else ''}"


class StoreHealth:
    """The sender's view of the database: one log line per change, and a backoff."""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.failing: str | None = None
        self._logged: set[str] = set()
        self._failures = 0
        self._retry_at = 0.0
        self._unexpected: str | None = None

    def failed(self, event: str, exc: BaseException, *, backoff: bool = False) -> None:
        """A store operation failed; logged once per kind of operation per outage."""
        self.failing = _short(exc)
        if event not in self._logged:
            self._logged.add(event)
            log.warning(event, error=self.failing)
        if backoff:
            self._failures += 1
            self._retry_at = time.monotonic() + self.backoff.delay(self._failures)

    def ok(self) -> None:
        """A store operation succeeded: the outage (if any) is over."""
        if self.failing is not None:
            log.info("outbox.store_recovered", after=self.failing)
        self.failing = None
        self._logged.clear()
        self._failures = 0
        self._retry_at = 0.0
        self._unexpected = None

    def waiting(self) -> float:
        """Seconds to wait before the next pass after a failed one."""
        return max(0.0, self._retry_at - time.monotonic())

    def unexpected(self, exc: BaseException) -> None:
        """A bug: its traceback once, not once per pass."""
        key = f"{type(exc).__name__}: {exc}"
        if key != self._unexpected:
            self._unexpected = key
            log.error("outbox.pass_failed", error=key, exc_info=exc)


class Recorder:
    """Delivery results waiting for their commit; see the module docstring."""

    def __init__(
        self,
        write: Callable[[list[DeliveryReport]], list[Recorded]],
        on_recorded: Callable[[Sequence[Recorded], Sequence[Any]], None],
        health: StoreHealth,
        backoff: Backoff | None = None,
    ) -> None:
        self._write = write
        self._on_recorded = on_recorded
        self._health = health
        self._backoff = backoff or Backoff(base=0.05, cap=2.0)
        self._pending: list[tuple[DeliveryReport, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, report: DeliveryReport, row: Any) -> None:
        """Keep `report` until it is committed; the writing starts at once."""
        self._pending.append((report, row))
        self._start()

    def item_ids(self) -> list[int]:
        """The rows whose results are not committed yet."""
        return [report.item_id for report, _ in self._pending]

    async def flush(self) -> None:
        """Return once every result so far is committed (however long that takes)."""
        while self._pending:
            self._start()
            assert self._task is not None
            await self._task

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="outbox-recorder")

    async def _drain(self) -> None:
        failures = 0
        while self._pending:
            batch = list(self._pending)
            try:
                recorded = await asyncio.to_thread(self._write, [r for r, _ in batch])
            except STORE_ERRORS as exc:
                self._health.failed("outbox.record_failed", exc)
                failures += 1
                await asyncio.sleep(self._backoff.delay(failures))
                continue
            # Only ever appended to meanwhile: the batch is still the head of the list.
            del self._pending[:len(batch)]
            if failures:
                self._health.ok()
                failures = 0
            self._on_recorded(recorded, [row for _, row in batch])
