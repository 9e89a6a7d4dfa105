"""The SMTP conversation with our relay: one connection, reused for many mails.

`Relay.send` hands one envelope over and returns the relay's answer about
each recipient (RFC 5321 §3.3: RCPT is answered per recipient, the reply to
the end of DATA holds for every accepted one). Whatever is not about a
recipient is the relay's problem, not the mail's, and raises `RelayProblem`:
the connection cannot be made, TLS fails, AUTH is refused, MAIL FROM is
refused, the relay says 421 (closing), or the connection drops.

A connection that sat idle may have been closed by the relay (RFC 5321
§4.5.3.2 lets a server drop an idle client after 5 minutes): a mail that
finds its reused connection gone before MAIL FROM was answered is sent on a
fresh one at once, without counting as a problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from enum import StrEnum

import aiosmtplib

from helpdesk.delivery import RecipientReply
from helpdesk.settings import SmtpSettings, Tls

# RFC 5321 §3.8: 421 means the relay is closing the connection; no recipient's fault.
CLOSING = 421
# RFC 1870 §6.1: 552 to MAIL FROM with SIZE is about the mail's size, not the relay.
TOO_LARGE = 552


class Problem(StrEnum):
    """Why the relay could not take mail, whatever the mail."""

    UNREACHABLE = "unreachable"  # connection refused, no route, DNS, connect timeout
    GREETING = "greeting"  # no 220, or EHLO/HELO refused
    TLS = "tls"  # STARTTLS missing or refused, handshake or certificate failure
    AUTH = "auth"  # AUTH refused (535) or no mechanism we can use
    SENDER_REFUSED = "sender_refused"  # 4xx/5xx to MAIL FROM
    CONNECTION_LOST = "connection_lost"  # dropped, or 421, in the middle of a mail
    TIMEOUT = "timeout"  # the delivery took longer than its deadline


class RelayProblem(Exception):
    """The relay (or our credentials) failed; the mail stays queued as it was."""

    def __init__(self, problem: Problem, detail: str, code: int | None = None) -> None:
        super().__init__(f"{problem.value}: {detail}")
        self.problem = problem
        self.detail = detail
        self.code = code

    @property
    def key(self) -> tuple[str, int | None]:
        """What counts as the same state for logging once per change."""
        return (self.problem.value, self.code)


class Envelope:
    """What the SMTP conversation needs of an outbox row."""

    __slots__ = ("raw", "recipients", "sender")

    def __init__(self, sender: str, recipients: tuple[str, ...], raw: bytes) -> None:
        self.sender = sender
        self.recipients = recipients
        self.raw = raw


def tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    # Certificate checks stay on; ca_file adds a private CA for an internal relay.
    return ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)


def _is_tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    return f"{type(exc).__name__}: {exc}"


class Relay:
    """One SMTP connection to the configured relay, opened on demand and reused."""

    def __init__(self, settings: SmtpSettings, *, reuse: bool = True) -> None:
        self.settings = settings
        self.reuse = reuse
        self.connections = 0  # opened so far (the benchmark and tests look)
        self._smtp: aiosmtplib.SMTP | None = None
        self._local_hostname: str | None = None

    @property
    def name(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def send(self, envelope: Envelope) -> tuple[RecipientReply, ...]:
        """Hand `envelope` over; the relay's answer per recipient. Raises RelayProblem."""
        fresh = not self.connected
        if fresh:
            await self._connect()
        try:
            return await self._transaction(envelope)
        except _Stale:
            if fresh:
                raise RelayProblem(Problem.CONNECTION_LOST, "closed before MAIL FROM") from None
            await self._connect()
            try:
                return await self._transaction(envelope)
            except _Stale:
                raise RelayProblem(Problem.CONNECTION_LOST, "closed before MAIL FROM") from None
        finally:
            if not self.reuse:
                await self.close()

    async def close(self) -> None:
        """QUIT politely (bounded by the timeout); a relay that does not answer is cut off."""
        smtp, self._smtp = self._smtp, None
        if smtp is None or not smtp.is_connected:
            return
        try:
            await asyncio.wait_for(smtp.quit(), self.settings.timeout)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()

    def abort(self) -> None:
        """Drop the connection at once (its state is unknown after a deadline passed)."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    async def _connect(self) -> None:
        self.abort()
        s = self.settings
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        smtp = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout, local_hostname=self._local_hostname,
            use_tls=s.tls == Tls.SSL, start_tls=False,
            tls_context=tls_context(s) if s.tls != Tls.NONE else None,
        )
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise RelayProblem(Problem.GREETING, _describe(exc), exc.code) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            kind = Problem.TLS if _is_tls_error(exc) else Problem.UNREACHABLE
            raise RelayProblem(kind, _describe(exc)) from exc
        self.connections += 1
        try:
            await self._hello_tls_login(smtp)
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp

    async def _hello_tls_login(self, smtp: aiosmtplib.SMTP) -> None:
        s = self.settings
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            try:
                await smtp.helo()
            except aiosmtplib.SMTPResponseException as again:
                raise RelayProblem(Problem.GREETING, _describe(again), again.code) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RelayProblem(Problem.CONNECTION_LOST, _describe(exc)) from exc
        if s.tls == Tls.STARTTLS:
            try:
                await smtp.starttls()
            except aiosmtplib.SMTPResponseException as exc:
                raise RelayProblem(Problem.TLS, _describe(exc), exc.code) from exc
            except (aiosmtplib.SMTPException, OSError) as exc:
                raise RelayProblem(Problem.TLS, _describe(exc)) from exc
        if s.username is None:
            return
        password = s.password.get_secret_value() if s.password else ""
        try:
            await smtp.login(s.username, password)
        except aiosmtplib.SMTPResponseException as exc:
            raise RelayProblem(Problem.AUTH, _describe(exc), exc.code) from exc
        except aiosmtplib.SMTPException as exc:
            raise RelayProblem(Problem.AUTH, _describe(exc)) from exc
        except OSError as exc:
            raise RelayProblem(Problem.CONNECTION_LOST, _describe(exc)) from exc

    async def _transaction(self, envelope: Envelope) -> tuple[RecipientReply, ...]:
        smtp = self._smtp
        assert smtp is not None
        options, encoding = self._options(smtp, envelope)
        try:
            try:
                await smtp.mail(envelope.sender, options=options, encoding=encoding)
            except aiosmtplib.SMTPServerDisconnected as exc:
                raise _Stale() from exc
            except aiosmtplib.SMTPSenderRefused as exc:
                if exc.code == TOO_LARGE:
                    await self._reset(smtp)
                    return tuple(RecipientReply(r, exc.code, exc.message)
                                 for r in envelope.recipients)
                if exc.code == CLOSING:
                    raise
                await self._reset(smtp)
                raise RelayProblem(Problem.SENDER_REFUSED, _describe(exc), exc.code) from exc
            return await self._recipients_and_data(smtp, envelope, encoding)
        except aiosmtplib.SMTPResponseException as exc:
            # 421 anywhere: the relay is closing the connection.
            self.abort()
            raise RelayProblem(Problem.CONNECTION_LOST, _describe(exc), exc.code) from exc
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            self.abort()
            raise RelayProblem(Problem.CONNECTION_LOST, _describe(exc)) from exc

    async def _recipients_and_data(
        self, smtp: aiosmtplib.SMTP, envelope: Envelope, encoding: str
    ) -> tuple[RecipientReply, ...]:
        replies: dict[str, RecipientReply] = {}
        accepted = []
        for address in envelope.recipients:
            if encoding == "ascii" and not address.isascii():
                # RFC 6531: an internationalised address needs SMTPUTF8, which this relay lacks.
                replies[address] = RecipientReply(
                    address, 553, "5.6.7 the relay does not offer SMTPUTF8 (RFC 6531)")
                continue
            try:
                await smtp.rcpt(address, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                if exc.code == CLOSING:
                    raise
                replies[address] = RecipientReply(address, exc.code, exc.message)
            else:
                accepted.append(address)
        if not accepted:
            await self._reset(smtp)
            return tuple(replies[a] for a in envelope.recipients)
        try:
            response = await smtp.data(envelope.raw)
            code, text = response.code, response.message
        except aiosmtplib.SMTPDataError as exc:
            if exc.code == CLOSING:
                raise
            code, text = exc.code, exc.message
            await self._reset(smtp)
        for address in accepted:
            replies[address] = RecipientReply(address, code, text)
        return tuple(replies[a] for a in envelope.recipients)

    def _options(self, smtp: aiosmtplib.SMTP, envelope: Envelope) -> tuple[list[str], str]:
        options = []
        if not envelope.raw.isascii() and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")  # RFC 6152
        needs_utf8 = not (envelope.sender.isascii() and all(
            a.isascii() for a in envelope.recipients))
        if needs_utf8 and smtp.supports_extension("smtputf8"):
            options.append("SMTPUTF8")
            return options, "utf-8"
        return options, "ascii"

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        # RSET ends the envelope (RFC 5321 §4.1.1.5) so the next mail starts clean.
        with contextlib.suppress(aiosmtplib.SMTPResponseException):
            await smtp.rset()


class _Stale(Exception):
    """A reused connection was found closed before the relay answered MAIL FROM."""
