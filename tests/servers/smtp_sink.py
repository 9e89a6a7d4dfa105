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
    # When the 250 was given (time.monotonic, the test process's clock).
    accepted_at: float = field(default_factory=time.monotonic)


@dataclass
class RecordingHandler:
    """Keeps every accepted message; `refuse_next` queues replies for the next DATA commands."""

    messages: list[Received] = field(default_factory=list)
    refuse_next: collections.deque[str] = field(default_factory=collections.deque)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse_next:
            return self.refuse_next.popleft()
        content: Any = envelope.original_content or envelope.content
        self.messages.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), bytes(content))
        )
        return "250 2.0.0 Message accepted for delivery"


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
