"""Prepare functions for pool tests: importable by reference from worker processes."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from helpdesk.mail.prepare import PrepareConfig, Prepared, prepare

# Catastrophic backtracking: the regex engine holds the GIL for as long as it runs.
_RUNAWAY = re.compile(r"^(a+)+$")


def runaway_on_marker(raw: bytes, config: PrepareConfig, sender: str | None) -> Prepared:
    """Like `prepare`, but a mail containing RUNAWAY spins in C code with the GIL held."""
    if b"RUNAWAY" in raw:
        _RUNAWAY.match("a" * 64 + "!")  # ~2**64 steps: never finishes in a test
    return prepare(raw, config, sender)


def crash_on_marker(raw: bytes, config: PrepareConfig, sender: str | None) -> Prepared:
    """A mail containing CRASH kills its worker; CRASH-ONCE:<path> only while <path> is absent."""
    match = re.search(rb"CRASH-ONCE:(\S+)", raw)
    if match is not None:
        flag = Path(match.group(1).decode())
        if not flag.exists():
            flag.write_text("crashed")
            os.kill(os.getpid(), signal.SIGKILL)
    elif b"CRASH" in raw:
        os.kill(os.getpid(), signal.SIGKILL)
    return prepare(raw, config, sender)
