"""One pass over the watched folder: find what is new, fetch it in bounded batches, store, ack.

The order within a batch is the contract of design.md §1: fetch, hand the
batch to the sink (which commits), and only then acknowledge on the server —
move to `processed_folder`, flag, or move what was quarantined to
`failed_folder`. The next batch is fetched while one is parsed and committed
(in a thread of the pass), so the server and the store work at the same
time; batches are still acknowledged one after the other, in UID order.
Progress (`MailboxState.last_uid`) only moves past a UID once that UID is
acknowledged or known to be gone, so a crash anywhere re-reads at most the
two batches in hand, and dedupe recognises what was already stored.

Nothing here stops the mailbox for one message (issue 9 §1): a message the
server cannot return is counted (in the store, across restarts) and retried
on later passes, then quarantined without bytes and moved out of the way; a
MOVE the server refuses falls back to flagging, so the message is still
marked as handled. Only a lost connection or an unavailable store ends a pass
early, and the source retries it with backoff.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from sqlalchemy.orm import Session

from helpdesk.errors import StoreUnavailable
from helpdesk.flow import mailboxes
from helpdesk.flow.mailboxes import LeaseLost
from helpdesk.intake import header_of, too_large
from helpdesk.settings import AfterProcessing, MailboxSettings
from helpdesk.sources.base import Sink, SourceStats, Stage
from helpdesk.sources.imap.fetching import (
    Fetched,
    Link,
    fetch_bodies,
    fetch_headers,
    fetch_index,
    plan_batches,
)
from helpdesk.sources.imap.protocol import (
    DELETED,
    FAILED_KEYWORD,
    PROCESSED_KEYWORD,
    SEEN,
    chunks,
    is_network_fault,
    reason,
)
from helpdesk.values import Incoming, IngestOutcome, Origin, OutcomeKind

# Sizes are asked for this many UIDs at a time, before their bodies.
SIZE_CHUNK = 500

# Acknowledgement "targets" besides folder names: flag in place, or nothing to
# do because the message went away (another client moved or expunged it).
FLAG = "\\flag"
GONE = "\\gone"

StateTransaction = Callable[[], contextlib.AbstractContextManager[Session]]


@dataclass
class Progress:
    """Bookkeeping of one pass over the folder.

    `safe_uid` is the highest UID below which every message is done. A message
    left for a later pass (the server would not return it yet) blocks it, so
    the next pass finds that message again while the ones after it, already
    moved or flagged, are not re-read.
    """

    safe_uid: int
    flushed_uid: int
    uidvalidity: int | None = None  # the one the pass selected; progress only counts under it
    blocked: bool = False
    interrupted: bool = False  # stopped early: stop was set or the lease was lost
    deltas: Counter[str] = field(default_factory=Counter)

    def done(self, uid: int) -> None:
        if not self.blocked:
            self.safe_uid = max(self.safe_uid, uid)

    def skipped(self) -> None:
        self.blocked = True


@dataclass
class Acks:
    """The messages of one batch and where each is to be acknowledged (None: not at all)."""

    targets: dict[int, str | None] = field(default_factory=dict)

    def by_target(self) -> dict[str, list[int]]:
        grouped: dict[str, list[int]] = {}
        for uid in sorted(self.targets):
            target = self.targets[uid]
            if target is not None and target != GONE:
                grouped.setdefault(target, []).append(uid)
        return grouped

    def in_order(self) -> Iterator[tuple[int, str | None]]:
        for uid in sorted(self.targets):
            yield uid, self.targets[uid]

    def acknowledged(self) -> int:
        return sum(1 for target in self.targets.values() if target not in (None, GONE))


@dataclass
class _Batch:
    """One fetched batch: what goes to the sink, and what to acknowledge once it committed."""

    uidvalidity: int
    acks: Acks = field(default_factory=Acks)
    incoming: list[tuple[int, Incoming]] = field(default_factory=list)
    given_up: list[int] = field(default_factory=list)


class FolderPass:
    """One pass over `settings.folder` on an open connection (see the module docstring)."""

    def __init__(
        self,
        settings: MailboxSettings,
        sink: Sink,
        state: StateTransaction,
        stats: SourceStats,
        *,
        max_message_bytes: int,
        may_go_on: Callable[[], bool],
        ensure_folder: Callable[[Any, str], None],
        now: Callable[[], Any],
        log: Any,
        holder: str | None = None,
        stage: Stage | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.sink = sink
        # With a stage, a batch is prepared in this thread while the one before commits.
        self.stage = stage
        self.state = state
        self.stats = stats
        self.max_message_bytes = max_message_bytes
        self.may_go_on = may_go_on
        self.ensure_folder = ensure_folder
        self.now = now
        self.log = log
        self.holder = holder

    def run(self, link: Link, uidvalidity: int, uids: list[int], progress: Progress) -> int:
        """Work through `uids` batch by batch; returns how many were acknowledged.

        Pipelined: while one batch is committed (in a thread of its own), the
        next one is fetched and, given a `stage`, prepared (parsed in the
        workers); a batch is acknowledged only once its commit is done, and
        batches are committed and acknowledged in UID order.
        """
        processed = 0
        in_flight: tuple[_Batch, Future[list[IngestOutcome]]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"store-{self.name}") as store:
            try:
                for batch, arrived in self._planned(link, uids, progress):
                    fetched = self._collect(link, uidvalidity, batch, arrived)
                    commit = self._prepared(fetched)
                    if in_flight is not None:
                        settled, in_flight = in_flight, None
                        processed += self._settle(link, *settled, progress)
                        if not self._going_on(progress):
                            break  # told to stop meanwhile: what was fetched comes again
                    in_flight = (fetched, store.submit(commit))
                if in_flight is not None:
                    settled, in_flight = in_flight, None
                    processed += self._settle(link, *settled, progress)
            except BaseException:
                if in_flight is not None:
                    # Let its commit finish (or fail) before giving up the pass:
                    # what it stored is recognised and acknowledged by the next pass.
                    with contextlib.suppress(BaseException):
                        in_flight[1].result()
                # Keep what was acknowledged so far; the original error matters more.
                with contextlib.suppress(StoreUnavailable, LeaseLost):
                    self.flush(progress)
                raise
        return processed

    def _planned(self, link: Link, uids: list[int], progress: Progress
                 ) -> Iterator[tuple[list[tuple[int, int]], dict[int, datetime]]]:
        """The batches to fetch, sizes asked first; stops when the pass may not go on."""
        for chunk in chunks(uids, SIZE_CHUNK):
            index = fetch_index(link, chunk)
            planned = plan_batches(((uid, index.sizes[uid]) for uid in chunk),
                                   count=self.settings.batch_size,
                                   total_bytes=self.settings.fetch_batch_bytes)
            for batch in planned:
                if not self._going_on(progress):
                    return
                yield batch, index.arrived

    def _going_on(self, progress: Progress) -> bool:
        """Whether the pass may take another batch (not stopped, lease still held)."""
        if progress.interrupted or not self.may_go_on():
            progress.interrupted = True
        return not progress.interrupted

    # -- one batch -------------------------------------------------------------------

    def _collect(self, link: Link, uidvalidity: int, batch: list[tuple[int, int]],
                 arrived: dict[int, datetime]) -> _Batch:
        """Fetch one batch and say what to hand the sink for each of its messages."""
        limit = self.max_message_bytes
        large = [uid for uid, size in batch if size > limit]
        fetched = fetch_bodies(link, [uid for uid, size in batch if size <= limit])
        headers = fetch_headers(link, large) if large else {}
        sizes = dict(batch)
        collected = _Batch(uidvalidity)
        for uid, _size in batch:
            origin = Origin(source="imap", mailbox=self.name, uidvalidity=uidvalidity, uid=uid)
            item = self._incoming(uid, origin, sizes[uid], fetched, headers, collected.given_up)
            if item is None:
                collected.acks.targets[uid] = GONE if uid in fetched.gone else None
            else:
                collected.incoming.append(
                    (uid, dataclasses.replace(item, arrived_at=arrived.get(uid))))
        return collected

    def _prepared(self, batch: _Batch) -> Callable[[], list[IngestOutcome]]:
        """The batch's one commit, to run in the store thread; prepared now if we can."""
        incoming = [item for _, item in batch.incoming]
        if not incoming:
            return list
        if self.stage is not None:
            return self.stage(incoming)
        return lambda: self.sink(incoming)

    def _settle(self, link: Link, batch: _Batch, stored: Future[list[IngestOutcome]],
                progress: Progress) -> int:
        """Wait for a batch's commit, then acknowledge it; returns how many were acknowledged.

        StoreUnavailable from the commit leaves all of the batch unacknowledged.
        """
        outcomes = stored.result()
        acks = batch.acks
        for (uid, _item), outcome in zip(batch.incoming, outcomes, strict=True):
            progress.deltas.update(self.stats.count(outcome))
            acks.targets[uid] = self._target(outcome)
        if batch.given_up:
            with self.state() as session:
                mailboxes.forget_fetch_failures(session, self.name, batch.uidvalidity,
                                                batch.given_up)
        self._acknowledge(link, acks, progress)
        self.flush(progress)
        return acks.acknowledged()

    def _incoming(self, uid: int, origin: Origin, size: int, fetched: Fetched,
                  headers: dict[int, bytes], given_up: list[int]) -> Incoming | None:
        """What to hand the sink for `uid`, or None: gone, or to be tried again later."""
        limit = self.max_message_bytes
        if uid in headers:
            return Incoming(headers[uid], origin, problem=too_large(size, limit))
        body = fetched.bodies.get(uid)
        if body is not None:
            if len(body) > limit:  # the server did not tell its size beforehand
                return Incoming(header_of(body), origin, problem=too_large(len(body), limit))
            return Incoming(body, origin)
        error = fetched.failed.get(uid)
        if error is None:
            return None  # gone
        with self.state() as session:
            attempts = mailboxes.record_fetch_failure(
                session, self.name, origin.uidvalidity or 0, uid, error, self.now()
            )
        if attempts < self.settings.fetch_attempts:
            self.log.warning("imap.fetch_failed", mailbox=self.name, uid=uid, attempts=attempts,
                             reason=error, retry="on a later pass")
            return None
        given_up.append(uid)
        self.log.error("imap.fetch_given_up", mailbox=self.name, uid=uid, attempts=attempts,
                       reason=error, target=self.settings.failed_folder)
        return Incoming(b"", origin, problem=(
            f"the IMAP server could not return it ({attempts} attempts): {error}; "
            "no raw bytes are available, the message stays on the server in "
            f"{self.settings.failed_folder!r}"))

    # -- acknowledging -----------------------------------------------------------------

    def _target(self, outcome: IngestOutcome) -> str:
        if outcome.kind is OutcomeKind.QUARANTINED:
            # Kept in the store's quarantine; out of the way of people and of
            # the next pass, yet still on the server for whoever looks.
            return self.settings.failed_folder
        return FLAG if self.settings.after is AfterProcessing.FLAG else \
            self.settings.processed_folder

    def _acknowledge(self, link: Link, acks: Acks, progress: Progress) -> None:
        """Tell the server what is stored; only ever for messages whose batch committed."""
        for destination, uids in acks.by_target().items():
            if not self._tell(link, destination, uids):
                for uid in uids:
                    acks.targets[uid] = None
        for uid, target in acks.in_order():
            if target is None:
                progress.skipped()
            else:
                progress.done(uid)

    def _tell(self, link: Link, destination: str, uids: list[int]) -> bool:
        """Move or flag `uids`; a refused MOVE falls back to flagging. False if neither worked."""
        try:
            if destination == FLAG:
                link.current().add_flags(uids, [SEEN, PROCESSED_KEYWORD], silent=True)
            else:
                self._move(link.current(), uids, destination)
            self.log.debug("imap.acknowledged", mailbox=self.name, target=destination,
                           count=len(uids), first_uid=uids[0], last_uid=uids[-1])
            return True
        except IMAPClientError as exc:
            if is_network_fault(exc):
                raise
            problem = reason(exc)
            if isinstance(exc, IMAPClientAbortError):
                link.reconnect()
        failed = destination == self.settings.failed_folder
        keyword = FAILED_KEYWORD if failed else PROCESSED_KEYWORD
        self.log.warning("imap.move_failed", mailbox=self.name, folder=destination,
                         count=len(uids), reason=problem, fallback=keyword.decode())
        try:
            link.current().add_flags(uids, [SEEN, keyword], silent=True)
        except IMAPClientError as exc:
            if is_network_fault(exc):
                raise
            self.log.error("imap.flag_failed", mailbox=self.name, count=len(uids),
                           reason=reason(exc), retry="on a later pass")
            return False
        return True

    def _move(self, client: Any, uids: list[int], folder: str) -> None:
        self.ensure_folder(client, folder)
        if client.has_capability("MOVE"):
            client.move(uids, folder)  # RFC 6851: atomic
            return
        client.copy(uids, folder)
        client.add_flags(uids, [DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            # RFC 4315 §2.1: expunge exactly these UIDs, not whatever else another
            # client happened to mark \Deleted.
            client.uid_expunge(uids)
        else:
            # RFC 3501 §6.4.3: the only expunge there is removes every \Deleted
            # message of the folder; acceptable for a folder we own.
            client.expunge()

    # -- progress ------------------------------------------------------------------------

    def flush(self, progress: Progress) -> None:
        """Store how far the pass got and its counters, in one short transaction."""
        if progress.safe_uid == progress.flushed_uid and not progress.deltas:
            return
        with self.state() as session:
            if progress.safe_uid > progress.flushed_uid:
                # Refused (LeaseLost) when another daemon took the mailbox over or the
                # UIDVALIDITY changed: stale progress must not make it skip mail.
                mailboxes.record_progress(session, self.name, progress.safe_uid,
                                          holder=self.holder, uidvalidity=progress.uidvalidity)
            if progress.deltas:
                mailboxes.add_counters(session, self.name, **progress.deltas)
        progress.flushed_uid = progress.safe_uid
        progress.deltas.clear()


__all__ = ["FLAG", "GONE", "Acks", "FolderPass", "Progress"]
