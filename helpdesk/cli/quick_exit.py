"""Leaving the `helpdesk` process without the interpreter's teardown of its modules.

Why (issue 13): once a command has done its work, CPython still tears down
every module it imported, class by class. With SQLAlchemy and psycopg loaded
that takes 0.05-0.15 s, up to a third of a whole `helpdesk tickets list` on
PostgreSQL, and an MTA pays it again on every mail it pipes to `helpdesk
ingest`. Nothing of ours needs that teardown: the store's connections are
closed when the command's context closes, the logging handlers and the
worker processes are looked after by `atexit` handlers, and the output is
flushed below.

So `leave` does what the interpreter's exit does that matters (it runs the
`atexit` handlers, flushes stdout and stderr) and then ends the process with
`os._exit`. It falls back on the ordinary exit whenever that shortcut could
change the outcome: a thread that Python would wait for is still running, the
exit status is not a number, or the output cannot be flushed (a closed pipe),
which Python reports and turns into its exit status 120 as it always has.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

__all__ = ["leave"]


def leave(code: object) -> NoReturn:
    """End the process with `code`, as `sys.exit(code)` would, minus the module teardown."""
    status = 0 if code is None else code
    if not isinstance(status, int) or _others_running():
        raise SystemExit(code)
    atexit._run_exitfuncs()  # the handlers the interpreter would run; they are cleared after
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            # The interpreter's own exit reports it and exits 120, as without us.
            raise SystemExit(code) from None
    os._exit(status & 0xFF)


def _others_running() -> bool:
    """Whether a thread the interpreter waits for at exit is still alive."""
    main = threading.main_thread()
    return any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate())
