"""Intake: how raw mail from any source becomes stored tickets, fast and safely.

Two stages (design.md §1, issues 9, 12 and 13):

1. **prepare** (pure, CPU-heavy): parse, classify, sender recovery, command and
   forward detection — in worker processes (`pool.PreparePool`), several
   mails at once, each under `message_time_limit`, before any transaction
   opens;
2. **store** (the database): dedupe, thread, store, rules, actions, outbox —
   in group commits (`committer.Committer`); one mail's failure quarantines
   that mail alone (`helpdesk.flow.ingest.ingest_batch`).

`Intake` is the `BatchSink` every source calls: it takes `Incoming` mails and
returns one `IngestOutcome` per mail once they are committed, or raises
`StoreUnavailable` (nothing committed) or `PoolClosed` (stopping). A source
acknowledges exactly the mails it got outcomes for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helpdesk.intake.committer import Committer
    from helpdesk.intake.pool import PoolClosed, PreparePool
    from helpdesk.intake.sink import (
        BatchSink,
        Commit,
        Intake,
        Stage,
        in_process_sink,
        prepare_once,
        store_in_batches,
    )

__all__ = ["BatchSink", "Commit", "Committer", "Intake", "PoolClosed", "PreparePool", "Stage",
           "header_of", "in_process_sink", "prepare_once", "store_in_batches", "too_large"]

# Imported on first use: the parsing workers import `helpdesk.intake.worker`, which
# runs this file first, and must not pull in the store, the ORM and the rules
# (a worker's memory and its start-up; issue 13 item 7).
_LAZY = {"Committer": "committer", "PoolClosed": "pool", "PreparePool": "pool",
         "BatchSink": "sink", "Commit": "sink", "Intake": "sink", "Stage": "sink",
         "in_process_sink": "sink", "prepare_once": "sink", "store_in_batches": "sink"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def header_of(raw: bytes, limit: int = 256 * 1024) -> bytes:
    """The header section of a raw message (up to its first empty line), at most `limit` bytes."""
    head = raw[:limit]
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = head.find(separator)
        if end != -1:
            return head[:end + len(separator)]
    return head


def too_large(size: int, limit: int) -> str:
    """The quarantine error of a mail over `max_message_bytes`."""
    return (f"too large ({size} bytes; the limit is {limit} bytes, [intake] max_message_bytes); "
            "only its headers are kept")
