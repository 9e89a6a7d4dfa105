"""The daemon (`helpdesk run`): see `service.py` for its lifecycle."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helpdesk.daemon.duties import TIMERS_LEASE
    from helpdesk.daemon.service import (
        EXIT_DEADLINE_SECONDS,
        GRACE_SECONDS,
        STARTUP_FAILURE,
        Daemon,
        StartupError,
        outbox_claim,
    )
    from helpdesk.daemon.systemd import Notifier

__all__ = ["EXIT_DEADLINE_SECONDS", "GRACE_SECONDS", "STARTUP_FAILURE", "TIMERS_LEASE", "Daemon",
           "Notifier", "StartupError", "outbox_claim"]

# Imported on first use: the outbox sender's process runs `daemon/sender_process.py`,
# which runs this file first, and need not load the whole daemon (its sources, the IMAP
# and LMTP libraries, the rules): 4 MB of its memory (issue 13 item 7).
_LAZY = {"EXIT_DEADLINE_SECONDS": "service", "GRACE_SECONDS": "service",
         "STARTUP_FAILURE": "service", "Daemon": "service", "StartupError": "service",
         "outbox_claim": "service", "TIMERS_LEASE": "duties", "Notifier": "systemd"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
