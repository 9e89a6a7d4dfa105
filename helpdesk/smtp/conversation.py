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

from helpdesk.delivery.claims import RecipientReply
from helpdesk.settings import SmtpSettings, Tls

# RFC 5321 §3.8: 421 means the relay is closing the connection; no recipient's fault.
CLOSING = 421
# RFC 1870 §6.1: 552 to MAIL FROM with SIZE is about the mail's size, not the relay.
TOO_LARGE = 552
# RFC 5321 §4.2.2: 354, start mail input.
START_INPUT = 354


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
        return await self.finish(await self.prepare(envelope))

    async def prepare(self, envelope: Envelope) -> Prepared:
        """Everything but the final dot: MAIL, RCPT per recipient, DATA and the content.

        The relay accepts the mail only when it gets the dot (`finish`), so a
        caller can hold it back until the previous mail's result is safely
        recorded: at no moment is more than one accepted mail unrecorded.
        """
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

    async def finish(self, prepared: Prepared) -> tuple[RecipientReply, ...]:
        """Send the final dot of a prepared mail; the relay's answer per recipient."""
        try:
            if prepared.waiting:
                code, text = await self._end_of_data()
                prepared.answer(code, text)
            return prepared.result()
        finally:
            if not self.reuse:
                await self.close()

    async def close(self) -> None:
        """QUIT politely (bounded by the timeout); a relay that does not answer is cut off."""
        smtp, self._smtp = self._smtp, None
        if smtp is None or not smtp.is_connected:
            return
        transport = smtp.transport
        try:
            await asyncio.wait_for(smtp.quit(), self.settings.timeout)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()
        # After QUIT nothing more is said; a TLS close would wait for the relay's
        # close_notify, and a loop that ends first (a CLI command) leaves the socket open.
        if isinstance(transport, asyncio.Transport):
            transport.abort()
            await asyncio.sleep(0)  # connection_lost runs and closes the socket

    def abort(self) -> None:
        """Drop the connection at once (its state is unknown after a deadline passed)."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            transport = smtp.transport
            smtp.close()
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # a TLS close would wait for the relay's answer

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

    async def _transaction(self, envelope: Envelope) -> Prepared:
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
                    refused = Prepared(envelope.recipients)
                    for address in envelope.recipients:
                        refused.reply(address, exc.code, exc.message)
                    return refused
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
    ) -> Prepared:
        prepared = Prepared(envelope.recipients)
        for address in envelope.recipients:
            if encoding == "ascii" and not address.isascii():
                # RFC 6531: an internationalised address needs SMTPUTF8, which this relay lacks.
                prepared.reply(address, 553, "5.6.7 the relay does not offer SMTPUTF8 (RFC 6531)")
                continue
            try:
                await smtp.rcpt(address, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                if exc.code == CLOSING:
                    raise
                prepared.reply(address, exc.code, exc.message)
            else:
                prepared.accepted.append(address)
        if not prepared.accepted:
            await self._reset(smtp)
            return prepared
        response = await smtp.execute_command(b"DATA")
        if response.code == CLOSING:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        if response.code != START_INPUT:
            prepared.answer(response.code, response.message)
            await self._reset(smtp)
            return prepared
        assert smtp.protocol is not None
        # The content now, the dot (end of data, RFC 5321 §4.1.1.4) in `finish`.
        smtp.protocol.write(dot_stuffed(envelope.raw))
        prepared.waiting = True
        return prepared

    async def _end_of_data(self) -> tuple[int, str]:
        smtp = self._smtp
        if smtp is None:
            raise RelayProblem(Problem.CONNECTION_LOST, "closed before the end of data")
        try:
            response = await smtp.execute_command(b".")
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            # RFC 1047: the relay may have taken the mail; it stays queued all the same.
            self.abort()
            raise RelayProblem(Problem.CONNECTION_LOST, _describe(exc)) from exc
        if response.code == CLOSING:
            self.abort()
            raise RelayProblem(Problem.CONNECTION_LOST, f"{response.code} {response.message}",
                               response.code)
        return response.code, response.message

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


def dot_stuffed(raw: bytes) -> bytes:
    """The content as DATA carries it: CRLF line ends, a final CRLF, and every line that
    starts with a dot given a second one (RFC 5321 §4.5.2)."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not text.endswith(b"\n"):
        text += b"\n"
    text = text.replace(b"\n.", b"\n..")
    if text.startswith(b"."):
        text = b"." + text
    return text.replace(b"\n", b"\r\n")


class Prepared:
    """A mail handed over up to its final dot, and the answers about its recipients."""

    def __init__(self, recipients: tuple[str, ...]) -> None:
        self.recipients = recipients
        self.accepted: list[str] = []
        self.waiting = False  # the content is sent; the dot is not
        self._replies: dict[str, RecipientReply] = {}

    def reply(self, address: str, code: int, text: str) -> None:
        self._replies[address] = RecipientReply(address, code, text)

    def answer(self, code: int, text: str) -> None:
        """The relay's answer to DATA or to the end of data: for every accepted recipient."""
        self.waiting = False
        for address in self.accepted:
            self.reply(address, code, text)

    def result(self) -> tuple[RecipientReply, ...]:
        return tuple(self._replies[a] for a in self.recipients)


class _Stale(Exception):
    """A reused connection was found closed before the relay answered MAIL FROM."""
