"""The sender: claims due outbox rows and hands them to the SMTP server with aiosmtplib.

A row is marked sent only after the server accepted it. 4xx replies and
connection problems are retried with capped exponential backoff; 5xx replies
fail the row after `[outbox] max_permanent_failures`. An SMTP server that is
down is logged once per outage, not once per mail (Mailman's outgoing runner
does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import aiosmtplib
import structlog
from sqlalchemy.orm import Session, sessionmaker

from helpdesk import outbox
from helpdesk.settings import SmtpSettings, Tls
from helpdesk.store.models import utcnow

log = structlog.get_logger()


class Delivery(StrEnum):
    """How one delivery attempt ended."""

    SENT = "sent"
    TEMPORARY = "temporary"  # 4xx, timeouts, connection refused: try again later
    PERMANENT = "permanent"  # 5xx: the server will not take it


@dataclass(frozen=True)
class DeliveryResult:
    outcome: Delivery
    detail: str = ""
    # The server could not be reached at all (as opposed to a reply code).
    unreachable: bool = False


@dataclass(frozen=True)
class Envelope:
    """What the SMTP conversation needs of an outbox row."""

    sender: str
    recipients: tuple[str, ...]
    raw: bytes


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    # Certificate checks stay on; ca_file adds a private CA for an internal relay.
    return ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)


async def deliver(envelope: Envelope, settings: SmtpSettings) -> DeliveryResult:
    """One attempt to hand `envelope` to the configured SMTP server; never raises."""
    password = settings.password.get_secret_value() if settings.password else None
    client = aiosmtplib.SMTP(
        hostname=settings.host,
        port=settings.port,
        use_tls=settings.tls == Tls.SSL,
        start_tls=settings.tls == Tls.STARTTLS,
        tls_context=_tls_context(settings) if settings.tls != Tls.NONE else None,
        username=settings.username,
        password=password,
        timeout=settings.timeout,
    )
    try:
        async with client:
            # SMTP.sendmail, not aiosmtplib.send: send() refuses an empty sender,
            # and "" is how the null sender MAIL FROM:<> of automatic mail is
            # given (RFC 5321 section 4.5.5, RFC 3834 section 3.3).
            errors, response = await client.sendmail(
                envelope.sender, list(envelope.recipients), envelope.raw
            )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        permanent = all(500 <= code < 600 for code in codes)
        return DeliveryResult(Delivery.PERMANENT if permanent else Delivery.TEMPORARY, detail)
    except aiosmtplib.SMTPResponseException as exc:
        outcome = Delivery.PERMANENT if 500 <= exc.code < 600 else Delivery.TEMPORARY
        return DeliveryResult(outcome, f"{exc.code} {exc.message}")
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return DeliveryResult(Delivery.TEMPORARY, f"{type(exc).__name__}: {exc}", unreachable=True)
    refused = "; ".join(f"{rcpt}: {code} {message}" for rcpt, (code, message) in errors.items())
    # Accepted for at least one recipient: the mail is out. Refused ones are noted.
    return DeliveryResult(Delivery.SENT, refused or response)


class Sender:
    """Delivers the outbox: `run_once()` for one pass, `run(stop)` as a daemon task."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: SmtpSettings,
        policy: outbox.OutboxPolicy,
        *,
        holder: str,
        batch: int = 50,
        lease: timedelta = timedelta(minutes=5),
        interval: float = 2.0,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.policy = policy
        self.holder = holder
        self.batch = batch
        self.lease = lease
        self.interval = interval
        self.clock = clock
        self.rng = rng
        self.sent = 0
        self.handled = 0  # rows the last pass finished with (sent, refused or deferred)
        self._outage: str | None = None

    async def run_once(self) -> int:
        """Deliver every due row once; returns how many were accepted."""
        claimed_at = self.clock()
        claimed = await asyncio.to_thread(self._claim)
        # Claims are not renewed: a row is only started while a whole SMTP
        # timeout still fits into its claim, so no other sender can take it
        # over while we are still talking to the server.
        last_start = claimed_at + self.lease - timedelta(seconds=self.settings.timeout)
        accepted = 0
        self.handled = 0
        for index, (item_id, envelope, correlation_id) in enumerate(claimed):
            if self.clock() > last_start:
                await asyncio.to_thread(self._release, [i for i, _, _ in claimed[index:]])
                break
            result = await deliver(envelope, self.settings)
            await asyncio.to_thread(self._record, item_id, result)
            self._log(item_id, envelope, result, correlation_id)
            self.handled += 1
            if result.outcome is Delivery.SENT:
                accepted += 1
            elif result.unreachable:
                # The rest would fail the same way; give them back for the next pass.
                await asyncio.to_thread(self._release, [i for i, _, _ in claimed[index + 1:]])
                self.handled = 0
                break
        self.sent += accepted
        return accepted

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; a pass that did something goes again at once."""
        while not stop.is_set():
            try:
                await self.run_once()
                busy = self.handled > 0
            except Exception:
                log.exception("outbox.pass_failed")
                busy = False
            if busy:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
        await asyncio.to_thread(self._release, None)

    def _claim(self) -> list[tuple[int, Envelope, str | None]]:
        with self.sessions.begin() as session:
            items = outbox.claim_due(
                session, holder=self.holder, limit=self.batch, now=self.clock(), lease=self.lease
            )
            return [
                (i.id, Envelope(i.envelope_from, tuple(i.envelope_to), i.raw), i.correlation_id)
                for i in items
            ]

    def _record(self, item_id: int, result: DeliveryResult) -> None:
        now = self.clock()
        with self.sessions.begin() as session:
            if result.outcome is Delivery.SENT:
                outbox.mark_sent(session, item_id, holder=self.holder, now=now)
            elif result.outcome is Delivery.PERMANENT:
                outbox.mark_permanent_failure(
                    session, item_id, holder=self.holder, error=result.detail, now=now,
                    policy=self.policy, rng=self.rng,
                )
            else:
                outbox.mark_temporary_failure(
                    session, item_id, holder=self.holder, error=result.detail, now=now,
                    policy=self.policy, rng=self.rng,
                )

    def _release(self, item_ids: list[int] | None) -> None:
        with self.sessions.begin() as session:
            outbox.release_claims(session, self.holder, item_ids)

    def _log(
        self, item_id: int, envelope: Envelope, result: DeliveryResult, correlation_id: str | None
    ) -> None:
        fields = {"outbox_id": item_id, "correlation_id": correlation_id,
                  "recipients": list(envelope.recipients)}
        if result.outcome is Delivery.SENT:
            if self._outage is not None:
                log.info("smtp.recovered", after=self._outage)
                self._outage = None
            log.info("outbox.sent", **fields, response=result.detail)
        elif result.unreachable:
            # One line per outage, not one per queued mail.
            if self._outage is None:
                log.warning("smtp.unavailable", host=self.settings.host,
                            port=self.settings.port, error=result.detail)
                self._outage = result.detail
        elif result.outcome is Delivery.PERMANENT:
            log.warning("outbox.refused", **fields, error=result.detail)
        else:
            log.info("outbox.retry_scheduled", **fields, error=result.detail)
