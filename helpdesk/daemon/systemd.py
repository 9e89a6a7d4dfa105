"""sd_notify (READY, STATUS, WATCHDOG, STOPPING) over $NOTIFY_SOCKET; silent without systemd."""

from __future__ import annotations

import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger()


class Notifier:
    """sd_notify over $NOTIFY_SOCKET; silent when not run by systemd."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog = int(usec) / 1_000_000 if usec.isdigit() else None

    def send(self, **fields: str) -> None:
        if not self.address:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc))
