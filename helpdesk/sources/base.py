"""What every source shares: the sink it feeds, backoff between retries, counters.

The contract between a source and the rest of helpdesk (design.md §1):

* A source never opens an ingest transaction itself. It hands a batch of
  `Incoming` mails (raw bytes and their `Origin`) to a `Sink`
  (`helpdesk.intake.Intake` in the daemon), which prepares and stores them and
  COMMITS before it returns one `IngestOutcome` per mail, in order.
* The sink raises `StoreUnavailable` when the database cannot take the batch
  (down, locked, full): nothing of it was committed. The source then
  acknowledges nothing of that batch, backs off and retries. `PoolClosed`
  means the daemon is stopping: acknowledge nothing, stop.
* Only after the sink returned does the source acknowledge the mails to
  wherever they came from (IMAP move or flag, Maildir `new/` -> `cur/`, LMTP
  250). A crash between the commit and the acknowledgement re-delivers them,
  and ingest recognises them as duplicates: at-least-once delivery plus dedupe
  gives exactly-once storage.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from helpdesk.flow.ingest import IngestContext
from helpdesk.intake import BatchSink, in_process_sink
from helpdesk.intake import Stage as Stage  # re-exported: what IMAP and Maildir may be given
from helpdesk.values import IngestOutcome, OutcomeKind

Sink = BatchSink
"""Ingest a batch of mails and commit; raises `StoreUnavailable` when the store is down."""


def ingest_sink(sessions: sessionmaker[Session], ctx: IngestContext) -> Sink:
    """A sink that prepares in this process and stores each batch in one transaction."""
    return in_process_sink(sessions, ctx)


class Backoff:
    """Capped exponential backoff with full jitter.

    The n-th delay is uniform in [0, min(cap, base * factor**n)): "full jitter"
    spreads the reconnects of many daemons after a shared outage instead of
    having them hammer the server in lockstep. `rand` returns a float in
    [0, 1) and is injectable so tests get deterministic delays.
    """

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 300.0,
        factor: float = 2.0,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if base <= 0 or cap < base or factor < 1:
            raise ValueError("backoff needs 0 < base <= cap and factor >= 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.attempts = 0
        self._rand = rand

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        # min() before the power would overflow after ~1,000 attempts.
        exponent = min(self.attempts, 64)
        return min(self.cap, self.base * self.factor**exponent)

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; each call widens the window."""
        delay = self._rand() * self.ceiling()
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """Start again from `base` (after a success)."""
        self.attempts = 0


@dataclass
class SourceStats:
    """Counters of one source since it started (the store keeps the running totals)."""

    fetched: int = 0
    ingested: int = 0
    duplicates: int = 0
    quarantined: int = 0
    errors: int = 0
    last_poll_at: datetime | None = field(default=None)
    # Automatic replies not sent, by reason (automated, rate_limit, bounced, ...).
    suppressed: dict[str, int] = field(default_factory=dict)
    # For the daemon's metrics: whether the source's last attempt worked (False
    # until the first one did), and when it last completed a pass over its mail.
    up: bool = False
    last_success_at: datetime | None = field(default=None)

    def count(self, outcome: IngestOutcome) -> dict[str, int]:
        """Add one message's outcome; returns the deltas, for `mailboxes.add_counters`."""
        deltas = {"fetched": 1}
        if outcome.kind is OutcomeKind.DUPLICATE:
            deltas["duplicates"] = 1
        elif outcome.kind is OutcomeKind.QUARANTINED:
            deltas["quarantined"] = 1
        else:
            deltas["ingested"] = 1
        for reason in outcome.suppressed:
            key = f"suppressed_{reason}"
            deltas[key] = deltas.get(key, 0) + 1
        self.add(deltas)
        return deltas

    def add(self, deltas: dict[str, int]) -> None:
        """Add counter deltas by name."""
        for name, delta in deltas.items():
            if name.startswith("suppressed_"):
                reason = name.removeprefix("suppressed_")
                self.suppressed[reason] = self.suppressed.get(reason, 0) + delta
            else:
                setattr(self, name, getattr(self, name) + delta)

    def as_dict(self) -> dict[str, object]:
        return {
            "fetched": self.fetched,
            "ingested": self.ingested,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "errors": self.errors,
            "suppressed": dict(self.suppressed),
            "last_poll_at": self.last_poll_at.isoformat() if self.last_poll_at else None,
        }
