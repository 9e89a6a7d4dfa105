"""The LMTP source: an MTA (Postfix, Exim) delivers to us over LMTP (RFC 2033), built on aiosmtpd.

Contract:

* RCPT: our own addresses get ``250``; anything else ``550 5.1.1``, so the MTA
  bounces a typo at once instead of us storing mail nobody handles.
* DATA: the message is handed to the sink ONCE, however many recipients it
  has (one ticket, not one per address), in a worker thread so the event loop
  keeps serving other connections. Only after the sink returned (committed)
  do we answer ``250``. RFC 2033 §4.2 wants one reply per accepted recipient,
  in RCPT order, after the final dot: we give every recipient the same answer,
  because they all share the one stored copy.
* Quarantined mail gets ``250`` too: it is kept, and a person will look at it.
* A message over `max_message_bytes` is refused with ``552 5.3.4`` (RFC 3463
  "message too big for system"): the MTA bounces it to its sender, which is
  right for a mail nobody here could take.
* `StoreUnavailable` gets ``451 4.3.0`` for every recipient: nothing was
  stored, and the MTA keeps the mail in its queue and retries (RFC 5321
  §4.2.5, RFC 3463 4.3.0 "other mail system problem"). An unexpected error
  (a bug) gets the same temporary answer: the mail is never acknowledged
  without having been stored.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
from aiosmtpd.controller import BaseThreadedController, Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from helpdesk.errors import StoreUnavailable
from helpdesk.intake import PoolClosed
from helpdesk.sources.base import Sink
from helpdesk.values import Incoming, IngestOutcome, Origin, OutcomeKind

log = structlog.get_logger()

RCPT_OK = "250 2.1.5 OK"
ERR_NO_SUCH_USER = "550 5.1.1 <{address}>: recipient address rejected: not ours"
ERR_451 = "451 4.3.0 store unavailable, try again later"
ERR_STOPPING = "421 4.3.2 shutting down, try again later"

# A reply line is at most 512 octets with its CRLF (RFC 5321 §4.5.3.1.5); the
# Message-ID we echo is cut well below that and kept to printable ASCII.
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")
_MAX_ID_IN_REPLY = 200


class LmtpHandler:
    """aiosmtpd handler: accept our recipients, store each message once, answer each recipient."""

    def __init__(
        self,
        sink: Sink,
        *,
        accept_domains: Iterable[str] = (),
        accept: Callable[[str], bool] | None = None,
        name: str = "lmtp",
        log: Any = log,
    ) -> None:
        self.domains = frozenset(d.lower().strip(".") for d in accept_domains)
        if not self.domains and accept is None:
            raise ValueError("LmtpHandler needs accept_domains or an accept predicate")
        self.name = name
        self._accept = accept
        self._sink = sink
        self._log = log
        self._outage = False

    def accepts(self, address: str) -> bool:
        """Whether `address` is one of ours."""
        address = address.strip().lower()
        _, at, domain = address.rpartition("@")
        if at and domain in self.domains:
            return True
        return self._accept is not None and self._accept(address)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not self.accepts(address):
            self._log.info("lmtp.recipient_rejected", recipient=address)
            return ERR_NO_SUCH_USER.format(address=address)
        # With a handle_RCPT hook, aiosmtpd leaves recording the recipient to us.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        raw = envelope.original_content or _as_bytes(envelope.content)
        recipients = list(envelope.rcpt_tos)
        origin = Origin(source="lmtp", mailbox=self.name, recipient=", ".join(recipients))
        started = time.perf_counter()
        try:
            # The sink blocks (SQLAlchemy); keep the event loop free for other clients.
            # Deliveries that arrive together share a commit (the intake's writer).
            sender = str(envelope.mail_from or "") or None  # "<>" (a bounce) arrives as ""
            (outcome,) = await asyncio.to_thread(
                self._sink, [Incoming(raw, origin, envelope_sender=sender)])
        except PoolClosed:
            return _per_recipient(ERR_STOPPING, recipients)
        except StoreUnavailable as exc:
            if not self._outage:  # once per outage; the MTA retries many times
                self._outage = True
                self._log.warning("store.unavailable", mailbox=self.name, reason=str(exc))
            return _per_recipient(ERR_451, recipients)
        except Exception:  # noqa: BLE001 - a bug: answer 451 so the MTA keeps the mail
            self._log.exception("lmtp.message_failed", mailbox=self.name)
            return _per_recipient(ERR_451, recipients)
        if self._outage:
            self._outage = False
            self._log.info("lmtp.recovered", mailbox=self.name, after="store.unavailable")
        self._log.debug(
            "lmtp.delivered",
            mailbox=self.name,
            recipients=recipients,
            message_id=outcome.message_id,
            ticket_id=outcome.ticket_id,
            outcome=outcome.kind.value,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return _per_recipient(_accepted(outcome), recipients)


def _per_recipient(reply: str, recipients: list[str]) -> str:
    # aiosmtpd writes the returned text and one CRLF: lines joined by CRLF
    # become one final reply per recipient, as RFC 2033 §4.2 requires.
    return "\r\n".join(reply for _ in recipients)


def _accepted(outcome: IngestOutcome) -> str:
    mid = _UNPRINTABLE.sub("", outcome.message_id or "")[:_MAX_ID_IN_REPLY]
    shown = f"<{mid}> " if mid else ""
    if outcome.kind is OutcomeKind.QUARANTINED:
        return f"250 2.0.0 {shown}kept in quarantine as item {outcome.quarantine_id}"
    if outcome.kind is OutcomeKind.DUPLICATE:
        return f"250 2.0.0 {shown}already stored on ticket {outcome.ticket_id}"
    what = "a new ticket" if outcome.kind is OutcomeKind.NEW_TICKET else "a reply"
    return f"250 2.0.0 {shown}queued as ticket {outcome.ticket_id}, {what}"


def _as_bytes(content: bytes | str | None) -> bytes:
    if content is None:
        return b""
    return content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")


class LmtpController(Controller):
    """aiosmtpd's threaded Controller speaking LMTP instead of SMTP."""

    def factory(self) -> LMTP:
        return LMTP(self.handler, **self.SMTP_kwargs)


class _LocalLMTP(LMTP):
    # `helpdesk ingest` hands over a piped mail as it came, and mail from the
    # wild has lines longer than SMTP's 1,000 octets; MTAs fold theirs anyway.
    line_length_limit = 1 << 20


class LmtpSocketController(UnixSocketController):
    """The same on a UNIX socket (Postfix `lmtp:unix:PATH`, `helpdesk ingest`'s hand-over)."""

    def factory(self) -> LMTP:
        return _LocalLMTP(self.handler, **self.SMTP_kwargs)


# Owner and group only: whoever may write to the socket hands us mail as a
# trusted local MTA would (the MX's Authentication-Results are not checked
# for having passed an MX). Give the MTA's user the daemon's group.
SOCKET_MODE = 0o660


def start_lmtp(
    handler: LmtpHandler,
    host: str = "127.0.0.1",
    port: int = 24,
    *,
    socket: Path | None = None,
    max_message_bytes: int | None = None,
    **smtp_options: Any,
) -> BaseThreadedController:
    """Listen on host:port (or on the UNIX `socket`) in a thread of its own; call `.stop()`
    on the result to end it.

    Pass a real port: aiosmtpd's readiness check connects to it, so port 0 fails.
    `max_message_bytes` is announced (RFC 1870 SIZE) and a larger DATA gets 552.
    """
    if max_message_bytes is not None:
        smtp_options.setdefault("data_size_limit", max_message_bytes)
    controller: BaseThreadedController
    if socket is not None:
        # A socket file left by a daemon that died is replaced (asyncio removes it).
        socket.parent.mkdir(parents=True, exist_ok=True)
        controller = LmtpSocketController(handler, unix_socket=str(socket), **smtp_options)
    else:
        controller = LmtpController(handler, hostname=host, port=port, **smtp_options)
    controller.start()
    if socket is not None:
        os.chmod(socket, SOCKET_MODE)
    return controller
