"""The daemon (`helpdesk run`): see `service.py` for its lifecycle."""

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
