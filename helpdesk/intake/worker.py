"""What a parsing worker process runs: `serve` a pipe, `prepare_and_search` each mail.

Kept apart from `pool`, the parent's side, so that the forkserver and every
worker it forks import only the pure stage: no logging library, no threads,
no store (issue 13 item 7: each of them is a process of its own in the
daemon's memory). The parent logs what happens to its workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection

from helpdesk.mail.prepare import PrepareConfig, Prepared, detach_payloads, prepare
from helpdesk.rules.regexes import presearch

__all__ = ["PrepareFunction", "prepare_and_search", "serve"]

_PR_SET_PDEATHSIG = 1

PrepareFunction = Callable[[bytes, PrepareConfig, str | None], Prepared]


def prepare_and_search(raw: bytes, config: PrepareConfig,
                       envelope_sender: str | None = None) -> Prepared:
    """`prepare`, then the rules' regexes searched in the mail's subject and body.

    Rule regexes are most of what the rules cost; searched here, in a worker,
    they run beside the other mails' parsing instead of in the one writer.
    """
    prepared = prepare(raw, config, envelope_sender)
    msg = prepared.msg
    if not config.rule_patterns or msg is None or prepared.problem is not None:
        return prepared
    try:
        searched = presearch(config.rule_patterns, msg.subject, msg.new_text or msg.text)
    except Exception:  # noqa: BLE001 - an optimisation: the writer searches itself
        return prepared
    return dataclasses.replace(prepared, searched=searched)


def serve(conn: Connection, function: PrepareFunction) -> None:
    """A worker's life: prepare each mail it is sent until its pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    while True:
        try:
            config, envelope_sender = conn.recv()
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        started = time.perf_counter()
        try:
            result = function(raw, config, envelope_sender)
        except Exception as exc:  # noqa: BLE001 - prepare promises not to raise; report, don't die
            result = Prepared.failed(f"internal error while parsing: {exc!r}",
                                     traceback.format_exc(limit=8))
        # Large attachments stay behind: the store decodes them from the raw mail.
        result = dataclasses.replace(detach_payloads(result),
                                     seconds=time.perf_counter() - started)
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            return


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when its parent process ends."""
    if not sys.platform.startswith("linux"):
        return
    # Imported here, in the worker: ctypes costs a command that parses one piped mail
    # tens of milliseconds, and only a Linux worker needs it.
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
