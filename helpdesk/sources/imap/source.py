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
* One message never stops the mailbox (issue 9): see `passes.py` for
  messages the server cannot return, messages over `max_message_bytes` and
  refused MOVEs.
* Faults (connection lost, server restart, login refused, folder missing, the
  store unavailable) never end `run()`: each is logged once per outage with its
  reason, retried with capped exponential backoff and jitter, and
  ``imap.recovered`` is logged when the source works again. Only `stop` ends it.
* Several daemons may watch the same mailbox; a lease row in the store lets one
  of them work it at a time (`helpdesk.flow.mailboxes`). The others stand by without
  an IMAP connection and take over when the lease is released or expires.

Blocking, like imapclient: the daemon runs `run()` in a worker thread, and
watches `last_beat` to notice a source that hangs.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from structlog.contextvars import bound_contextvars

from helpdesk.errors import StoreUnavailable
from helpdesk.flow import mailboxes
from helpdesk.flow.mailboxes import LeaseLost
from helpdesk.settings import AfterProcessing, MailboxSettings, Tls
from helpdesk.sources.base import Backoff, Sink, SourceStats, Stage
from helpdesk.sources.imap.fetching import Link
from helpdesk.sources.imap.passes import FolderPass, Progress
from helpdesk.sources.imap.protocol import (
    HEALTH,
    PROCESSED_KEYWORD,
    FolderMissing,
    UidValidityChanged,
    announces_mail,
    classify_fault,
    close,
    folder_status,
    input_buffered,
    logout,
    reason,
    state_data,
    take_untagged,
)
from helpdesk.store.models import utcnow

log = structlog.get_logger()

# RFC 2177 §3: servers may drop a client that idles 30 minutes without a
# command; re-issue IDLE well before that (and NAT boxes often forget sooner).
DEFAULT_IDLE_TIMEOUT = 600.0
# How often IDLE wakes to look at `stop`: the daemon's shutdown bound.
IDLE_CHECK = 1.0
# Read timeout on the socket: a server that stops answering is a lost connection.
DEFAULT_IO_TIMEOUT = 60.0
# Without a limit from the daemon: [intake] max_message_bytes's default.
DEFAULT_MAX_MESSAGE_BYTES = 50 * 1024 * 1024


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
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        share_of: Sequence[str] | None = None,
        log: Any = log,
        stage: Stage | None = None,
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
        self._lease_lock = threading.RLock()
        self._stop: threading.Event | None = None
        self._outage: str | None = None
        self._exists = 0  # messages in the folder when it was last selected
        self._outage_started = 0.0
        self._health: str | None = None  # as last recorded in the store
        # The mailboxes the daemons share: this one takes at most its fair share.
        self.share_of = list(share_of) if share_of is not None else None
        # Monotonic time of the last sign of life; the daemon's watchdog reads it.
        self.last_beat = time.monotonic()
        self._pass = FolderPass(
            settings, sink, self._state, self.stats,
            max_message_bytes=max_message_bytes, may_go_on=self._may_go_on,
            ensure_folder=self._ensure_folder, now=clock, log=self._log, holder=holder,
            stage=stage,
        )

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
        progress = Progress(safe_uid=last_uid, flushed_uid=last_uid, uidvalidity=uidvalidity)
        link = Link(current=self._connected, reconnect=lambda: self._reconnect(uidvalidity))
        with self._keeping_lease():
            processed = self._pass.run(link, uidvalidity, uids, progress)
        if not progress.interrupted and not progress.blocked and uidnext:
            # Every UID below UIDNEXT that the search did not return is gone
            # (moved, expunged) or carries our keyword: done, as far as we care.
            progress.done(uidnext - 1)
            self._pass.flush(progress)
        self.stats.last_success_at = self._clock()
        return processed

    def _begin_pass(self, uidvalidity: int) -> int:
        now = self._clock()
        with self._state() as session:
            previous = mailboxes.get_state(session, self.name).uidvalidity
            changed = mailboxes.record_uidvalidity(session, self.name, uidvalidity,
                                                   holder=self.holder)
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

    def _may_go_on(self) -> bool:
        """Not stopping, and the lease is still ours (renewed when due)."""
        self.last_beat = time.monotonic()
        return not self._stopping() and self._renew_if_due()

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

    def _reconnect(self, uidvalidity: int) -> Any:
        """A fresh connection with the folder selected, after the server ended the last one."""
        self._disconnect()
        client = self._connected()
        current, _uidnext = self._select(client)
        if current != uidvalidity:
            raise UidValidityChanged(uidvalidity, current)
        return client

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
            close(client)
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
        take_untagged(client, "EXISTS", "EXPUNGE")
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
        taken = take_untagged(self._client, "EXISTS", "EXPUNGE")
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
            logout(client)
        else:
            close(client)

    # -- lease -----------------------------------------------------------------

    @property
    def holds_lease(self) -> bool:
        """Whether this source holds the mailbox's lease (works it) right now."""
        return bool(self._holding)

    def _take_lease(self) -> bool:
        with self._lease_lock:
            return self._take_lease_locked()

    def _take_lease_locked(self) -> bool:
        now = self._clock()
        with self._state() as session:
            got = mailboxes.acquire_lease(session, self.name, self.holder, self.lease_ttl, now,
                                          share_of=self.share_of)
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
        with self._lease_lock:
            if self._lease_at is not None and self._clock() - self._lease_at < self.lease_ttl / 3:
                return True
            return self._take_lease_locked()

    @contextlib.contextmanager
    def _keeping_lease(self) -> Iterator[None]:
        """Renew the lease from a helper thread while the pass waits on long work.

        A batch of slow mail (each up to the intake's time limit) can take
        longer than the lease; without this another daemon would take the
        mailbox over under our feet and read the same messages again.
        """
        done = threading.Event()
        period = max(0.05, self.lease_ttl.total_seconds() / 3)

        def keep() -> None:
            while not done.wait(period):
                try:
                    if not self._renew_if_due():
                        return  # lost: the pass notices at its next batch
                except StoreUnavailable:
                    continue  # the pass will hit the same outage itself

        keeper = threading.Thread(target=keep, name=f"lease:{self.name}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join(5.0)

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
                    self.last_beat = time.monotonic()
                    try:
                        self.run_once()
                        self._recovered()
                        if not stop.is_set():
                            self._wait_for_mail(stop)
                    except LeaseLost as exc:
                        # Another daemon holds the mailbox now: stand by, no backoff.
                        self._log.warning("imap.lease_lost", mailbox=self.name,
                                          holder=self.holder, reason=str(exc))
                        with self._lease_lock:
                            self._holding, self._lease_at = False, None
                        self._disconnect(polite=True)
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
                self.last_beat = time.monotonic()
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
            news = input_buffered(client)
            while not news and not stop.is_set() and time.monotonic() < deadline:
                started = self.last_beat = time.monotonic()
                responses = client.idle_check(timeout=IDLE_CHECK)
                if any(announces_mail(r) for r in responses):
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
        event, reconnect = classify_fault(exc)
        if reconnect:
            self._disconnect()
        if event == "daemon.stopping":
            return 0.0  # the pool closed under a batch: nothing was acknowledged
        self.stats.up = False
        delay = self.backoff.next_delay()
        if event != self._outage:
            if self._outage is None:
                self._outage_started = time.monotonic()
            self._outage = event
            self._log.warning(
                event,
                mailbox=self.name,
                reason=reason(exc),
                retry_in=round(delay, 2),
                exc_info=event == "imap.unexpected_error",
            )
            self._record_health(HEALTH.get(event, "error"), reason(exc))
        else:
            self._log.debug(
                "imap.retrying", mailbox=self.name, fault=event, reason=reason(exc),
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
        self.stats.up = True
        if self._health != "ok":
            self._record_health("ok", None)

    def _record_health(self, health: str, error: str | None) -> None:
        """Keep the mailbox's state for `helpdesk mailbox list`; once per change."""
        try:
            with self._state() as session:
                mailboxes.record_health(session, self.name, health, error, self._clock())
        except StoreUnavailable:
            return  # the store is what is wrong; the next change tries again
        self._health = health

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
            folders = [folder_status(client, flags, name)
                       for flags, _delimiter, name in client.list_folders()]
        finally:
            logout(client)
        with self._state() as session:
            state = mailboxes.find_state(session, self.name)
            progress = state_data(state) if state is not None else None
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
