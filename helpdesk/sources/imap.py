"""The IMAP source: watch one folder, ingest every message once, then move or flag it.

Contract (design.md §1, style.md §7.6):

* A message is acknowledged on the server only after the sink returned, that
  is after its transaction committed: moved to `processed_folder` (or flagged
  ``\\Seen`` + ``$HelpdeskProcessed`` when ``after = "flag"``), or moved to
  `failed_folder` when ingest quarantined it. Acknowledgements go out once per
  FETCH batch (one UID MOVE for the batch's committed messages), and before
  the source stops or backs off for an unavailable store. A crash in between
  re-delivers those messages on the next pass and ingest reports duplicates,
  so nothing is lost and nothing is stored twice.
* Messages are read with ``BODY.PEEK[]``, which never sets ``\\Seen`` (RFC 3501
  §6.4.5; RFC 9051 §6.4.5): a message we did not store looks unread to people.
* Progress is UID-based: each pass searches for UIDs above the highest one
  done (`MailboxState.last_uid`) under the folder's UIDVALIDITY. When
  UIDVALIDITY changes, all UIDs are void (RFC 3501 §2.3.1.1): progress goes back
  to 0 and the folder is rescanned; ingest's dedupe (Message-ID + content)
  recognises what is already stored.
* Faults (connection lost, server restart, login refused, folder missing, the
  store unavailable) never end `run()`: each is logged once per outage with its
  reason, retried with capped exponential backoff and jitter, and
  ``imap.recovered`` is logged when the source works again. Only `stop` ends it.
* Several daemons may watch the same mailbox; a lease row in the store lets one
  of them work it at a time (`helpdesk.mailboxes`). The others stand by without
  an IMAP connection and take over when the lease is released or expires.

Blocking, like imapclient: the daemon runs `run()` in a worker thread.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from structlog.contextvars import bound_contextvars

from helpdesk import mailboxes
from helpdesk.errors import StoreUnavailable
from helpdesk.settings import AfterProcessing, MailboxSettings, Tls
from helpdesk.sources.base import Backoff, Sink, SourceStats
from helpdesk.store.models import MailboxState, utcnow
from helpdesk.values import IngestOutcome, Origin, OutcomeKind

log = structlog.get_logger()

SEEN = b"\\Seen"
DELETED = b"\\Deleted"
# A keyword (RFC 3501 §2.3.2) marks what we stored in "flag" mode. \Seen alone
# cannot: a person reading the mailbox sets it too.
PROCESSED_KEYWORD = b"$HelpdeskProcessed"

# RFC 2177 §3: servers may drop a client that idles 30 minutes without a
# command; re-issue IDLE well before that (and NAT boxes often forget sooner).
DEFAULT_IDLE_TIMEOUT = 600.0
# How often IDLE wakes to look at `stop`: the daemon's shutdown bound.
IDLE_CHECK = 1.0
# Read timeout on the socket: a server that stops answering is a lost connection.
DEFAULT_IO_TIMEOUT = 60.0


class FolderMissing(Exception):
    """The folder to watch does not exist on the server."""

    def __init__(self, folder: str) -> None:
        super().__init__(f"folder {folder!r} does not exist on the server")
        self.folder = folder


@dataclass
class _Pass:
    """Bookkeeping of one pass over the folder.

    `safe_uid` is the highest UID below which every message is done. A message
    skipped because of a bug blocks it, so the next pass finds that message
    again while the ones after it, already moved or flagged, are not re-read.
    """

    safe_uid: int
    flushed_uid: int
    blocked: bool = False
    interrupted: bool = False  # stopped early: stop was set or the lease was lost
    deltas: Counter[str] = field(default_factory=Counter)

    def done(self, uid: int) -> None:
        if not self.blocked:
            self.safe_uid = max(self.safe_uid, uid)

    def skipped(self) -> None:
        self.blocked = True


# Acknowledgement "targets" besides folder names: flag in place, or nothing to
# do because the message went away (another client moved or expunged it).
FLAG = "\\flag"
GONE = "\\gone"


@dataclass
class _Batch:
    """The messages of one FETCH batch, in UID order, and where each is to be acknowledged.

    A target of None means skipped (a bug in the sink): no acknowledgement, and
    progress stops before it so that the next pass tries it again.
    """

    entries: list[tuple[int, str | None]] = field(default_factory=list)

    def add(self, uid: int, target: str | None) -> None:
        self.entries.append((uid, target))

    def by_target(self) -> dict[str, list[int]]:
        grouped: dict[str, list[int]] = {}
        for uid, target in self.entries:
            if target is not None and target != GONE:
                grouped.setdefault(target, []).append(uid)
        return grouped

    def acknowledged(self) -> int:
        return sum(1 for _uid, target in self.entries if target not in (None, GONE))


class ImapSource:
    """Ingest the messages of one IMAP folder; see the module docstring for the contract."""

    def __init__(
        self,
        settings: MailboxSettings,
        sink: Sink,
        sessions: sessionmaker[Session],
        *,
        holder: str,
        lease_ttl: timedelta = timedelta(seconds=60),
        clock: Callable[[], datetime] = utcnow,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        io_timeout: float = DEFAULT_IO_TIMEOUT,
        backoff: Backoff | None = None,
        log: Any = log,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.holder = holder
        self.lease_ttl = lease_ttl
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout
        self.backoff = backoff or Backoff(base=1.0, cap=300.0)
        self.stats = SourceStats()
        self._sink = sink
        self._sessions = sessions
        self._clock = clock
        self._log = log
        self._client: Any = None  # IMAPClient while connected
        self._folders: set[str] = set()  # known to exist, on this connection
        self._holding: bool | None = None  # None: not asked yet
        self._lease_at: datetime | None = None
        self._stop: threading.Event | None = None
        self._outage: str | None = None
        self._exists = 0  # messages in the folder when it was last selected
        self._outage_started = 0.0

    # -- one pass ------------------------------------------------------------

    def run_once(self) -> int:
        """One pass: everything new in the folder is ingested and acknowledged.

        Returns how many messages were processed (0 while another daemon holds
        the lease). Faults propagate; `run()` turns them into retries.
        """
        # The lease comes before the connection: a daemon on standby should not
        # hold one of the server's (limited) connections per user.
        if not self._take_lease():
            self._disconnect(polite=True)
            return 0
        client = self._connected()
        uidvalidity, uidnext = self._select(client)
        last_uid = self._begin_pass(uidvalidity)
        uids = self._search(client, last_uid)
        progress = _Pass(safe_uid=last_uid, flushed_uid=last_uid)
        processed = self._process(client, uidvalidity, uids, progress)
        if not progress.interrupted and not progress.blocked and uidnext:
            # Every UID below UIDNEXT that the search did not return is gone
            # (moved, expunged) or carries our keyword: done, as far as we care.
            progress.done(uidnext - 1)
            self._flush(progress)
        return processed

    def _begin_pass(self, uidvalidity: int) -> int:
        now = self._clock()
        with self._state() as session:
            previous = mailboxes.get_state(session, self.name).uidvalidity
            changed = mailboxes.record_uidvalidity(session, self.name, uidvalidity)
            mailboxes.record_poll(session, self.name, now)
            last_uid = mailboxes.get_state(session, self.name).last_uid
        self.stats.last_poll_at = now
        if changed:
            # Every UID we knew is void; rescan from 1 and let dedupe recognise
            # the messages already stored.
            self._log.warning(
                "imap.uidvalidity_changed",
                mailbox=self.name,
                folder=self.settings.folder,
                uidvalidity=uidvalidity,
                previous_uidvalidity=previous,
            )
        return last_uid

    def _search(self, client: Any, last_uid: int) -> list[int]:
        criteria: list[str | bytes] = ["UID", f"{last_uid + 1}:*"]
        if self.settings.after is AfterProcessing.FLAG:
            criteria += ["NOT", "KEYWORD", PROCESSED_KEYWORD]
        # "n:*" always includes the highest UID in the folder, even when it is
        # below n (RFC 3501 §6.4.8, RFC 9051 §6.4.9): filter those out.
        return sorted(uid for uid in client.search(criteria) if uid > last_uid)

    def _process(self, client: Any, uidvalidity: int, uids: list[int], progress: _Pass) -> int:
        processed = 0
        try:
            for chunk in _chunks(uids, self.settings.batch_size):
                if progress.interrupted:
                    break
                processed += self._batch(client, uidvalidity, chunk, progress)
                self._flush(progress)
        except BaseException:
            # Keep what was acknowledged so far; the original error matters more.
            with contextlib.suppress(StoreUnavailable):
                self._flush(progress)
            raise
        return processed

    def _batch(self, client: Any, uidvalidity: int, uids: list[int], progress: _Pass) -> int:
        """Sink each message of one FETCH batch, then acknowledge them together.

        Acknowledging per batch (one UID MOVE for all) instead of per message
        made the backlog twice as fast: Dovecot spent ~2.7 ms on each single
        MOVE. Every message acknowledged was committed first; a crash before
        the acknowledgement re-delivers at most one batch, as duplicates.
        """
        # BODY.PEEK[] leaves \Seen alone; imapclient keys the answer by UID
        # and reports the item as b"BODY[]".
        fetched = client.fetch(uids, ["BODY.PEEK[]"])
        batch = _Batch()
        try:
            for uid in uids:
                if not self._may_go_on():
                    progress.interrupted = True
                    break  # the messages in hand are acknowledged below
                item = fetched.get(uid)
                if item is None or b"BODY[]" not in item:
                    batch.add(uid, GONE)  # expunged by someone else meanwhile
                    continue
                batch.add(uid, self._one(uid, uidvalidity, item[b"BODY[]"] or b"", progress))
        except StoreUnavailable:
            self._acknowledge(client, batch, progress)  # what was committed before
            raise
        self._acknowledge(client, batch, progress)
        return batch.acknowledged()

    def _may_go_on(self) -> bool:
        """Not stopping, and the lease is still ours (renewed when due)."""
        return not self._stopping() and self._renew_if_due()

    def _one(self, uid: int, uidvalidity: int, raw: bytes, progress: _Pass) -> str | None:
        """Sink one message; its acknowledgement target, or None when it was skipped for a bug."""
        origin = Origin(source="imap", mailbox=self.name, uidvalidity=uidvalidity, uid=uid)
        with bound_contextvars(mailbox=self.name, uid=uid):
            try:
                outcome = self._sink(raw, origin)
            except StoreUnavailable:
                raise
            except Exception:  # noqa: BLE001 - a bug must not stall the mailbox
                # Ingest quarantines bad mail itself, so this is our bug, not the
                # mail's. Without the store we cannot quarantine it: leave it
                # unacknowledged, count it, go on; the next pass retries it.
                self._log.exception(
                    "imap.message_failed", mailbox=self.name, uid=uid, uidvalidity=uidvalidity
                )
                self.stats.errors += 1
                progress.deltas["errors"] += 1
                return None
        progress.deltas.update(self.stats.count(outcome))
        return self._target(outcome)

    def _flush(self, progress: _Pass) -> None:
        """Store how far the pass got and its counters, in one short transaction."""
        if progress.safe_uid == progress.flushed_uid and not progress.deltas:
            return
        with self._state() as session:
            if progress.safe_uid > progress.flushed_uid:
                mailboxes.record_progress(session, self.name, progress.safe_uid)
            if progress.deltas:
                mailboxes.add_counters(session, self.name, **progress.deltas)
        progress.flushed_uid = progress.safe_uid
        progress.deltas.clear()

    # -- acknowledging ---------------------------------------------------------

    @property
    def _flagging(self) -> bool:
        return self.settings.after is AfterProcessing.FLAG

    def _target(self, outcome: IngestOutcome) -> str:
        if outcome.kind is OutcomeKind.QUARANTINED:
            # Kept in the store's quarantine; out of the way of people and of
            # the next pass, yet still on the server for whoever looks.
            return self.settings.failed_folder
        return FLAG if self._flagging else self.settings.processed_folder

    def _acknowledge(self, client: Any, batch: _Batch, progress: _Pass) -> None:
        """Tell the server what is stored; only ever for messages whose sink returned."""
        for destination, uids in batch.by_target().items():
            if destination == FLAG:
                client.add_flags(uids, [SEEN, PROCESSED_KEYWORD], silent=True)
            else:
                self._move(client, uids, destination)
            self._log.debug("imap.acknowledged", mailbox=self.name, target=destination,
                            count=len(uids), first_uid=uids[0], last_uid=uids[-1])
        for uid, target in batch.entries:
            if target is None:
                progress.skipped()
            else:
                progress.done(uid)

    def _move(self, client: Any, uids: list[int], folder: str) -> None:
        self._ensure_folder(client, folder)
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

    def _ensure_folder(self, client: Any, folder: str) -> None:
        if folder in self._folders:
            return
        if not client.folder_exists(folder):
            try:
                client.create_folder(folder)
                self._log.info("imap.folder_created", mailbox=self.name, folder=folder)
            except IMAPClientAbortError:
                raise
            except IMAPClientError:
                # Another daemon may have created it a moment ago (RFC 5530 ALREADYEXISTS).
                if not client.folder_exists(folder):
                    raise
        self._folders.add(folder)

    # -- connection ------------------------------------------------------------

    def _connected(self) -> Any:
        if self._client is None:
            self._client = self._open()
            self._folders.clear()
            self._log.info(
                "imap.connected",
                mailbox=self.name,
                host=self.settings.host,
                port=self.settings.port,
                tls=self.settings.tls.value,
            )
        return self._client

    def _open(self) -> Any:
        """A new connection, TLS as configured (certificates checked), logged in."""
        tls = self.settings.tls
        context = self._tls_context() if tls is not Tls.NONE else None
        client = IMAPClient(
            self.settings.host,
            port=self.settings.port,
            ssl=tls is Tls.SSL,
            ssl_context=context,
            timeout=self.io_timeout,
        )
        try:
            if tls is Tls.STARTTLS:
                client.starttls(context)  # RFC 3501 §6.2.1; imapclient re-reads capabilities
            client.login(self.settings.username, self.settings.password.get_secret_value())
        except BaseException:
            _close(client)
            raise
        return client

    def _tls_context(self) -> ssl.SSLContext:
        # Certificate and host name checks on; ca_file adds a private CA.
        cafile = str(self.settings.ca_file) if self.settings.ca_file else None
        return ssl.create_default_context(cafile=cafile)

    def _select(self, client: Any) -> tuple[int, int | None]:
        """Select the folder, each pass (that reveals a new UIDVALIDITY); (UIDVALIDITY, UIDNEXT)."""
        folder = self.settings.folder
        try:
            info = client.select_folder(folder)
        except IMAPClientAbortError:
            raise
        except IMAPClientError as exc:
            if not client.folder_exists(folder):
                raise FolderMissing(folder) from exc
            raise
        # The size the pass starts from; see _news_arrived().
        self._exists = int(info.get(b"EXISTS", 0))
        _take_untagged(client, "EXISTS", "EXPUNGE")
        # Both are required in the SELECT answer (RFC 3501 §6.3.1); UIDNEXT is
        # only an optimisation here, so a server that omits it still works.
        uidnext = info.get(b"UIDNEXT")
        return int(info[b"UIDVALIDITY"]), int(uidnext) if uidnext else None

    def _news_arrived(self) -> bool:
        """Whether the server announced new mail since the pass's SELECT.

        A server reports new messages in the answer to whatever command the
        session sends next (RFC 3501 §7.3.1: "* n EXISTS"), typically the UID
        MOVE that acknowledges a batch. imaplib files those away and IDLE does
        not announce them again, so without this check mail arriving while a
        batch is acknowledged waited for the safety-net poll (a minute by
        default). Sizes are compared, not merely looked for: a server that
        repeats EXISTS without news must not keep the source from idling.
        Mail the pass's SEARCH already found costs one more, empty, pass.
        """
        if self._client is None:
            return False
        taken = _take_untagged(self._client, "EXISTS", "EXPUNGE")
        exists, expunged = taken["EXISTS"], taken["EXPUNGE"]
        if not exists:
            return False
        try:
            size = int(exists[-1])
        except (TypeError, ValueError):
            return True  # cannot tell: one more pass costs a SELECT and a SEARCH
        return size > self._exists - len(expunged)

    def _disconnect(self, *, polite: bool = False) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if polite:
            _logout(client)
        else:
            _close(client)

    # -- lease -----------------------------------------------------------------

    def _take_lease(self) -> bool:
        now = self._clock()
        with self._state() as session:
            got = mailboxes.acquire_lease(session, self.name, self.holder, self.lease_ttl, now)
        if got and not self._holding:
            self._log.info("imap.lease_acquired", mailbox=self.name, holder=self.holder)
        elif not got and self._holding:
            self._log.warning("imap.lease_lost", mailbox=self.name, holder=self.holder)
        elif not got and self._holding is None:
            self._log.info("imap.standby", mailbox=self.name, holder=self.holder,
                           reason="another daemon holds the lease")
        self._holding = got
        self._lease_at = now if got else None
        return got

    def _renew_if_due(self) -> bool:
        """Renew the lease when a third of its time has passed; False when it was lost."""
        if self._lease_at is not None and self._clock() - self._lease_at < self.lease_ttl / 3:
            return True
        return self._take_lease()

    def _release_lease(self) -> None:
        if not self._holding:
            return
        self._holding = None
        self._lease_at = None
        try:
            with self._state() as session:
                mailboxes.release_lease(session, self.name, self.holder)
        except StoreUnavailable as exc:
            # It expires on its own; another daemon takes over after lease_ttl.
            self._log.warning("imap.lease_not_released", mailbox=self.name, reason=str(exc))
        else:
            self._log.info("imap.lease_released", mailbox=self.name, holder=self.holder)

    @contextlib.contextmanager
    def _state(self) -> Iterator[Session]:
        """A short transaction on the mailbox state; database failures are StoreUnavailable."""
        try:
            with self._sessions.begin() as session:
                yield session
        except (OperationalError, InterfaceError) as exc:
            raise StoreUnavailable(f"database error: {exc.orig}") from exc

    # -- the loop --------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Work the mailbox until `stop` is set: passes, then IDLE or a poll wait, and again.

        Never returns on a fault, only on `stop`; then it finishes the message in
        hand (sink and acknowledgement), logs out and releases the lease.
        """
        self._stop = stop
        with bound_contextvars(mailbox=self.name):
            try:
                while not stop.is_set():
                    try:
                        self.run_once()
                        self._recovered()
                        if not stop.is_set():
                            self._wait_for_mail(stop)
                    except Exception as exc:  # noqa: BLE001 - _fault() sorts and logs every kind
                        stop.wait(self._fault(exc))
            finally:
                self._shutdown()

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _wait_for_mail(self, stop: threading.Event) -> None:
        """Return when new mail may be there: IDLE news, the safety-net poll, or stop."""
        if not self._holding or self._client is None:
            # Standby: look at the lease again soon enough to take over promptly.
            stop.wait(min(self.settings.poll_interval, self.lease_ttl.total_seconds() / 3))
            return
        if self._news_arrived():
            return  # mail came in while the pass ran: another pass, right away
        # Even while idling, poll every poll_interval: a missed notification
        # must not leave mail lying for long.
        deadline = time.monotonic() + min(self.settings.poll_interval, self.idle_timeout)
        if self._client.has_capability("IDLE"):
            self._idle(self._client, stop, deadline)
        else:
            while not stop.is_set() and time.monotonic() < deadline:
                stop.wait(min(IDLE_CHECK, max(0.0, deadline - time.monotonic())))
                if not self._renew_if_due():
                    return

    def _idle(self, client: Any, stop: threading.Event, deadline: float) -> None:
        """RFC 2177 IDLE until new mail, the deadline or stop; checks `stop` every second."""
        client.idle()
        try:
            # Mail that came since the pass's last command is reported right
            # behind the "+ idling" continuation, often in the same TCP segment;
            # imaplib then holds it in its read buffer, where idle_check(),
            # which polls the socket, does not look. Without this check it
            # waited for the next notification or the safety-net poll.
            news = _input_buffered(client)
            while not news and not stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                responses = client.idle_check(timeout=IDLE_CHECK)
                if any(_announces_mail(r) for r in responses):
                    break
                # The socket was readable but held no response: EOF (a dead
                # connection) or a stray TLS record. DONE below tells which.
                if not responses and time.monotonic() - started < IDLE_CHECK / 2:
                    break
                if not self._renew_if_due():
                    break
        except BaseException:
            # The connection may be half-way in IDLE; it cannot be reused.
            self._disconnect()
            raise
        client.idle_done()  # raises on a dead connection, which run() handles

    def _fault(self, exc: Exception) -> float:
        """Log a fault once per outage, drop the connection when needed; the delay to wait."""
        event, reconnect = _classify(exc)
        if reconnect:
            self._disconnect()
        delay = self.backoff.next_delay()
        if event != self._outage:
            if self._outage is None:
                self._outage_started = time.monotonic()
            self._outage = event
            self._log.warning(
                event,
                mailbox=self.name,
                reason=_reason(exc),
                retry_in=round(delay, 2),
                exc_info=event == "imap.unexpected_error",
            )
        else:
            self._log.debug(
                "imap.retrying", mailbox=self.name, fault=event, reason=_reason(exc),
                retry_in=round(delay, 2), attempt=self.backoff.attempts,
            )
        return delay

    def _recovered(self) -> None:
        if self._outage is not None:
            self._log.info(
                "imap.recovered",
                mailbox=self.name,
                after=self._outage,
                attempts=self.backoff.attempts,
                outage_s=round(time.monotonic() - self._outage_started, 2),
            )
            self._outage = None
        self.backoff.reset()

    def close(self) -> None:
        """Log out and release the lease; `run()` does this itself when it ends."""
        self._disconnect(polite=True)
        self._release_lease()

    def _shutdown(self) -> None:
        self.close()
        self._stop = None

    # -- helpdesk mailbox check ------------------------------------------------

    def check(self) -> dict[str, Any]:
        """Connect and log in, then report capabilities, folder counts and ingestion progress."""
        client = self._open()
        try:
            capabilities = sorted(c.decode("ascii", "replace") for c in client.capabilities())
            folders = [_folder_status(client, flags, name)
                       for flags, _delimiter, name in client.list_folders()]
        finally:
            _logout(client)
        with self._state() as session:
            state = mailboxes.find_state(session, self.name)
            progress = _state_data(state) if state is not None else None
        watched = next((f for f in folders if f["name"] == self.settings.folder), None)
        return {
            "mailbox": self.name,
            "host": self.settings.host,
            "port": self.settings.port,
            "tls": self.settings.tls.value,
            "username": self.settings.username,
            "folder": self.settings.folder,
            "folder_exists": watched is not None,
            "capabilities": capabilities,
            "folders": folders,
            "state": progress,
            "uidvalidity_matches": (
                None if watched is None or progress is None or progress["uidvalidity"] is None
                else watched.get("uidvalidity") == progress["uidvalidity"]
            ),
        }


# -- helpers -------------------------------------------------------------------


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _take_untagged(client: Any, *names: str) -> dict[str, list[Any]]:
    """Remove and return the untagged responses imaplib collected under `names`.

    imaplib keeps every untagged response it did not hand to a caller in
    `untagged_responses` (until the next SELECT); imapclient offers no public
    view of them.
    """
    collected = getattr(getattr(client, "_imap", None), "untagged_responses", None)
    if not isinstance(collected, dict):
        return {name: [] for name in names}
    return {name: list(collected.pop(name, None) or ()) for name in names}


def _input_buffered(client: Any) -> bool:
    """Whether imaplib's reader holds server data nobody has read yet (it never waits).

    A non-blocking peek returns what is buffered, or reads what the socket
    (or the TLS layer) already has, or finds nothing.
    """
    peek = getattr(getattr(getattr(client, "_imap", None), "file", None), "peek", None)
    if peek is None:
        return False
    sock = client.socket()
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(peek(1))
    except OSError:  # nothing to read (TLS says so with SSLWantReadError)
        return False
    finally:
        sock.settimeout(timeout)


def _announces_mail(response: tuple[Any, ...]) -> bool:
    # RFC 3501 §7.3.1/§7.3.2 (RFC 9051 drops RECENT): "* n EXISTS" is new mail;
    # a BYE means the server is going away and the pass will find out.
    return len(response) >= 2 and (
        response[1] in (b"EXISTS", b"RECENT") or response[0] == b"BYE"
    )


def _classify(exc: Exception) -> tuple[str, bool]:
    """The log event for a fault, and whether the IMAP connection must be dropped."""
    if isinstance(exc, StoreUnavailable):
        return "store.unavailable", False  # the IMAP side is fine; keep the connection
    if isinstance(exc, LoginError):
        return "imap.login_failed", True
    if isinstance(exc, FolderMissing):
        return "imap.folder_missing", True
    # socket.timeout, ssl.SSLError and ConnectionError are all OSError.
    if isinstance(exc, IMAPClientAbortError | OSError):
        return "imap.connection_lost", True
    if isinstance(exc, IMAPClientError):
        return "imap.command_failed", True
    return "imap.unexpected_error", True


def _reason(exc: BaseException) -> str:
    """`Type: message` for logs; imapclient wraps server text as a bytes repr, undone here."""
    text = str(exc)
    quoted = re.fullmatch(r"b(['\"])(.*)\1", text, flags=re.DOTALL)
    if quoted:
        text = quoted.group(2)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _logout(client: Any) -> None:
    """LOGOUT (RFC 3501 §6.1.3), else close: imaplib leaves the socket open when LOGOUT fails."""
    try:
        client.logout()
    except (IMAPClientError, OSError):
        _close(client)


def _close(client: Any) -> None:
    """Drop a connection without a LOGOUT round trip (it may be dead already)."""
    with contextlib.suppress(Exception):
        client.shutdown()


def _folder_status(client: Any, flags: Sequence[bytes], name: str) -> dict[str, Any]:
    if any(flag.lower() == b"\\noselect" for flag in flags):
        return {"name": name, "selectable": False}
    status = client.folder_status(name, ["MESSAGES", "UNSEEN", "UIDNEXT", "UIDVALIDITY"])
    return {
        "name": name,
        "selectable": True,
        "messages": int(status[b"MESSAGES"]),
        "unseen": int(status[b"UNSEEN"]),
        "uidnext": int(status[b"UIDNEXT"]),
        "uidvalidity": int(status[b"UIDVALIDITY"]),
    }


def _state_data(state: MailboxState) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "uidvalidity": state.uidvalidity,
        "last_uid": state.last_uid,
        "last_poll_at": iso(state.last_poll_at),
        "lease_holder": state.lease_holder,
        "lease_expires_at": iso(state.lease_expires_at),
        "counters": dict(state.counters or {}),
    }
