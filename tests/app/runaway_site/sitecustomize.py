"""Loaded by every Python process of a daemon under test (PYTHONPATH): its parsing workers spin.

A mail containing RUNAWAY makes the worker preparing it loop in the regex
engine with the GIL held, as a pathological pattern would; every other mail is
prepared as usual. Only the daemon fault tests put this directory on
PYTHONPATH.
"""

from __future__ import annotations

import re

import helpdesk.intake.worker as worker
from helpdesk.mail.prepare import PrepareConfig, Prepared, prepare

_RUNAWAY = re.compile(r"^(a+)+$")


def runaway(raw: bytes, config: PrepareConfig, sender: str | None) -> Prepared:
    if b"RUNAWAY" in raw:
        _RUNAWAY.match("a" * 64 + "!")
    return prepare(raw, config, sender)


worker.prepare = runaway  # type: ignore[assignment]
