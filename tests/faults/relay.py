"""A real aiosmtpd relay that can be scripted to refuse, stall, greylist and refuse AUTH.

Every reply is given by the real aiosmtpd protocol code; the handler only
chooses what to answer. The relay counts what it accepted per (Message-ID,
recipient), which is what "delivered exactly once to every recipient" means.
"""

from __future__ import annotations

import asyncio
import collections
import email
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.servers import free_port
from tests.servers.smtp_controller import ClosingController


@dataclass
class Accepted:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message_id(self) -> str:
        return str(email.message_from_bytes(self.data)["Message-ID"]).strip("<>")


@dataclass
class Script:
    """What the relay answers; each deque is consumed one reply per command."""

    mail: collections.deque[str] = field(default_factory=collections.deque)
    rcpt: dict[str, collections.deque[str]] = field(default_factory=dict)
    data: collections.deque[str] = field(default_factory=collections.deque)
    # Seconds each DATA takes before the answer (a relay that scans content).
    data_delay: float = 0.0
    # Called in the relay's thread after a message is accepted, before the 250 goes out.
    on_accept: Callable[[Accepted], None] | None = None
    password: bytes = b"s3cret"


class ScriptedHandler:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.accepted: list[Accepted] = []
        self.connections = 0
        self.auth_failures = 0
        self.sessions: list[SMTP] = []
        self.lock = threading.Lock()

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        with self.lock:
            self.connections += 1
            self.sessions.append(server)
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if self.script.mail:
            return self.script.mail.popleft()
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        replies = self.script.rcpt.get(address)
        if replies:
            return replies.popleft()
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.script.data_delay:
            await asyncio.sleep(self.script.data_delay)
        if self.script.data:
            return self.script.data.popleft()
        content: Any = envelope.original_content or envelope.content
        accepted = Accepted(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(content))
        with self.lock:
            self.accepted.append(accepted)
        if self.script.on_accept is not None:
            self.script.on_accept(accepted)
        return "250 2.0.0 queued"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                     mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"helpdesk", self.script.password)
        if not ok:
            with self.lock:
                self.auth_failures += 1
        return AuthResult(success=ok, handled=False)


class ScriptedRelay:
    """aiosmtpd on a free loopback port, optionally requiring AUTH."""

    def __init__(self, *, auth: bool = False, port: int | None = None,
                 script: Script | None = None) -> None:
        self.script = script or Script()
        self.handler = ScriptedHandler(self.script)
        self.port = port or free_port()
        options: dict[str, Any] = {}
        if auth:
            options = {"authenticator": self.handler.authenticate, "auth_required": True,
                       "auth_require_tls": False}
        self.controller = ClosingController(self.handler, hostname="127.0.0.1", port=self.port,
                                     **options)

    def start(self) -> ScriptedRelay:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def accepted(self) -> list[Accepted]:
        with self.handler.lock:
            return list(self.handler.accepted)

    @property
    def connections(self) -> int:
        return self.handler.connections

    def deliveries(self) -> collections.Counter[tuple[str, str]]:
        """How often each (Message-ID, recipient) was accepted."""
        return collections.Counter(
            (a.message_id, rcpt) for a in self.accepted for rcpt in a.recipients)

    def drop_connections(self) -> None:
        """Close every client connection from the relay's side (an idle timeout)."""
        loop = self.controller.loop
        for server in list(self.handler.sessions):
            if server.transport is not None:
                loop.call_soon_threadsafe(server.transport.close)

    def greylist(self, address: str, times: int = 1,
                 reply: str = "450 4.2.0 greylisted, try again later") -> None:
        self.script.rcpt.setdefault(address, collections.deque()).extend([reply] * times)
