"""Loaded by a daemon under test (PYTHONPATH): a worker counts as stuck after 3 s, not minutes.

The real limit (`helpdesk.daemon.service.stuck_after`) is four message time
limits plus four minutes; a test cannot wait that long for /healthz to notice
a mailbox thread hanging on a frozen IMAP server. Only the stuck-worker test
puts this directory on PYTHONPATH; everything else about the daemon is as shipped.
"""

from __future__ import annotations

import os

if os.environ.get("HELPDESK_TEST_STUCK_AFTER"):
    import helpdesk.daemon.service as service

    _limit = float(os.environ["HELPDESK_TEST_STUCK_AFTER"])
    service.stuck_after = lambda _settings: _limit  # type: ignore[assignment]
