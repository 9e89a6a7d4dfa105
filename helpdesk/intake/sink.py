"""The `BatchSink`s: the daemon's `Intake`, a command's batches, and the in-process sink."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy.orm import Session, sessionmaker

from helpdesk.flow.ingest import IngestContext
from helpdesk.intake.committer import Committer, Item, store_now
from helpdesk.intake.pool import PreparePool
from helpdesk.mail.prepare import Prepared, prepare_with
from helpdesk.values import Incoming, IngestOutcome

BatchSink = Callable[[Sequence[Incoming]], list[IngestOutcome]]
"""Ingest mails and commit; raises `StoreUnavailable` when the store is down."""

Commit = Callable[[], list[IngestOutcome]]
Stage = Callable[[Sequence[Incoming]], Commit]
"""A `BatchSink` in two steps: prepare the mails now, and return the call that stores and
commits them. A source that has the next batch in hand while one commits prepares it
meanwhile, and calls the commits in its own order."""


class Intake:
    """Prepare in worker processes, store in group commits (see the module docstring)."""

    def __init__(
        self,
        pool: PreparePool,
        committer: Committer,
        context: Callable[[], IngestContext],
    ) -> None:
        self.pool = pool
        self.committer = committer
        self.context = context

    def __call__(self, incoming: Sequence[Incoming]) -> list[IngestOutcome]:
        return self.stage(incoming)()

    def stage(self, incoming: Sequence[Incoming]) -> Commit:
        """Prepare `incoming` in the workers now; the returned call stores and commits it."""
        if not incoming:
            return list
        config = self.context().prepare
        prepared = self.pool.prepare_many([item.raw for item in incoming], config,
                                          [item.envelope_sender for item in incoming])
        items = _items(incoming, prepared)
        return lambda: self.committer.store(items)

    @property
    def last_progress(self) -> float:
        """Monotonic time of the last mail prepared or batch committed: a sign of life."""
        return max(self.pool.last_progress, self.committer.last_commit)

    def close(self) -> None:
        """Stop both stages: the pool first, so that nothing new reaches the writer."""
        self.pool.close()
        self.committer.stop()


def store_in_batches(
    sessions: sessionmaker[Session],
    ctx: IngestContext,
    incoming: Iterable[Incoming],
    pool: PreparePool,
    *,
    batch_max: int,
) -> Iterator[tuple[list[Incoming], list[IngestOutcome]]]:
    """For a command working through many mails: prepare and commit them batch by batch.

    While one batch is stored (in this thread), the next one is already being
    prepared by the pool, so the database and the parsing workers work at the
    same time. Each batch is one transaction; yields (batch, outcomes) after
    its commit. `StoreUnavailable` ends it: what was yielded is committed.
    """
    source = iter(incoming)
    batches = iter(lambda: list(itertools.islice(source, batch_max)), [])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-ahead") as ahead:

        def start(batch: list[Incoming]) -> Future[list[Prepared]]:
            return ahead.submit(pool.prepare_many, [item.raw for item in batch], ctx.prepare,
                                [item.envelope_sender for item in batch])

        current = next(batches, None)
        pending = start(current) if current is not None else None
        while current is not None and pending is not None:
            prepared = pending.result()
            following = next(batches, None)
            pending = start(following) if following is not None else None
            yield current, store_now(sessions, _items(current, prepared), ctx)
            current = following


def prepare_once(raw: bytes, ctx: IngestContext, *, time_limit: float) -> Prepared:
    """Prepare one mail in a forked worker under `time_limit` (for a command's single mail)."""
    with PreparePool(1, time_limit=time_limit, start_method="fork") as pool:
        return pool.prepare(raw, ctx.prepare)


def in_process_sink(sessions: sessionmaker[Session], ctx: IngestContext) -> BatchSink:
    """A sink without worker processes or a writer thread: prepare here, one transaction.

    No time limit: for tests and for tools that trust their input.
    """

    def sink(incoming: Sequence[Incoming]) -> list[IngestOutcome]:
        prepared = [prepare_with(item.raw, parse=ctx.parse, is_own_address=ctx.is_own_address,
                                 loop_id=ctx.loop_id, trust=ctx.trust,
                                 envelope_sender=item.envelope_sender) for item in incoming]
        return store_now(sessions, _items(incoming, prepared), ctx)

    return sink


def _items(incoming: Sequence[Incoming], prepared: Sequence[Prepared]) -> list[Item]:
    items: list[Item] = []
    for item, result in zip(incoming, prepared, strict=True):
        if item.problem is not None:
            # What the source knew before parsing wins; the parse of what bytes
            # we have still fills the quarantine's subject and sender.
            result = dataclasses.replace(result, problem=item.problem, detail="")
        items.append((item.raw, item.origin, result))
    return items
