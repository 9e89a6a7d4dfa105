"""aiosmtpd's threaded Controller, made to close its clients' connections when it stops.

aiosmtpd's `stop()` cancels its tasks and stops its loop but leaves the
connections still open where they are; the garbage collector finds them later,
in whatever test runs then, and pytest fails that test with an unraisable
ResourceWarning. Every in-process SMTP server of the tests uses this class.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class ClosingController(Controller):
    """A Controller whose `stop()` first aborts every connection it accepted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._accepted: list[SMTP] = []

    def make_smtp(self) -> SMTP:
        """The protocol object for one connection (subclasses change the class)."""
        return SMTP(self.handler, **self.SMTP_kwargs)

    def factory(self) -> SMTP:
        server = self.make_smtp()
        self._accepted.append(server)
        return server

    def stop(self, no_assert: bool = False) -> None:
        loop = self.loop
        if loop.is_running():
            closing = asyncio.run_coroutine_threadsafe(self._abort_connections(), loop)
            with contextlib.suppress(Exception):
                closing.result(timeout=5)
        super().stop(no_assert=no_assert)

    async def _abort_connections(self) -> None:
        for server in self._accepted:
            # After STARTTLS the protocol's transport is the TLS layer over the original.
            for transport in (server.transport, server._original_transport):
                if isinstance(transport, asyncio.Transport):
                    transport.abort()  # also one already closing: the loop is about to stop
        for _ in range(3):  # let connection_lost run and close the sockets
            await asyncio.sleep(0)
