"""A real aiosmtpd SMTP server that records what it receives and can be told to refuse."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.servers import free_port
from tests.servers.smtp_controller import ClosingController


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    # When the 250 was given (time.monotonic, the test process's clock). The
    # client may be dead by then: its final dot can wait in the socket's buffer.
    accepted_at: float = field(default_factory=time.monotonic)
    # When the first RCPT was answered: the client was alive then, since it
    # sends DATA, the content and the dot only after that answer.
    handed_at: float = 0.0


@dataclass
class RecordingHandler:
    """Keeps every accepted message; `refuse_next` queues replies for the next DATA commands."""

    messages: list[Received] = field(default_factory=list)
    refuse_next: collections.deque[str] = field(default_factory=collections.deque)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse_next:
            return self.refuse_next.popleft()
        content: Any = envelope.original_content or envelope.content
        handed_at = getattr(envelope, "handed_at", None) or time.monotonic()
        self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                                      bytes(content), handed_at=handed_at))
        return "250 2.0.0 Message accepted for delivery"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not envelope.rcpt_tos:
            envelope.handed_at = time.monotonic()  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"


class SmtpSink:
    """aiosmtpd on a free loopback port (recipe: shared/docs/test-servers.md §3)."""

    def __init__(self, port: int | None = None) -> None:
        self.handler = RecordingHandler()
        self.port = port or free_port()
        self.controller = ClosingController(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages
