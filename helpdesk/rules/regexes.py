"""Admin-written rule regexes, searched with a time bound.

A rule's `subject`, `body`, `subject_or_body` and `header` conditions are
regexes an admin wrote, run against mail anyone can send. A pattern like
``(x+x+)+y`` backtracks for hours on a mail crafted for it, and the standard
`re` can neither be interrupted nor let the daemon's other threads run
meanwhile. So they are compiled and searched with the `regex` package, which
takes a timeout per search and releases the GIL while it matches: one search
may take `REGEX_TIMEOUT` seconds and all the searches for one mail
`REGEX_BUDGET` (a `RegexBudget` shared by the conditions of one evaluation).
A search that runs out raises `TimeoutError`; the condition then does not
hold, and its reason starts with `REGEX_TIMED_OUT`.

The budget's clock is a meter, not logic: nothing is decided by the time
of day, only how long matching may go on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import regex

__all__ = [
    "REGEX_BUDGET",
    "REGEX_TIMED_OUT",
    "REGEX_TIMEOUT",
    "AdminRegex",
    "RegexBudget",
    "compile_admin_regex",
    "regex_timed_out",
]

# Seconds one admin regex search may take, and all of them for one mail. An
# honest pattern searches a mail in microseconds to milliseconds.
REGEX_TIMEOUT = 0.5
REGEX_BUDGET = 2.0
# How the reason of a condition whose regex ran out of time begins.
REGEX_TIMED_OUT = "regex timed out"


@dataclass(frozen=True, slots=True)
class AdminRegex:
    """A regex an admin wrote, compiled by the `regex` package; `str()` is the pattern."""

    pattern: str
    compiled: Any = field(repr=False, compare=False)  # regex.Pattern[str] (no stubs)

    def __str__(self) -> str:
        return self.pattern


class RegexBudget:
    """The time left for admin regex searches on one mail (`REGEX_BUDGET` seconds).

    Mutable on purpose: one budget is shared by every condition of one
    evaluation, so that a mail crafted against many rules cannot cost more.
    """

    __slots__ = ("left",)

    def __init__(self, seconds: float = REGEX_BUDGET) -> None:
        self.left = seconds

    def search(self, pattern: AdminRegex, text: str) -> Any | None:
        """`pattern.compiled.search(text)` within the time left; raises TimeoutError."""
        if self.left <= 0:
            raise TimeoutError("no time left for regexes on this mail")
        started = time.perf_counter()
        try:
            return pattern.compiled.search(text, timeout=min(REGEX_TIMEOUT, self.left))
        finally:
            self.left -= time.perf_counter() - started


def regex_timed_out(reasons: Iterable[str]) -> bool:
    """Whether a rule's trace reasons say that one of its regexes ran out of time."""
    return any(REGEX_TIMED_OUT in reason for reason in reasons)


def compile_admin_regex(pattern: str) -> AdminRegex:
    """`pattern` compiled, ignoring case; raises `re.error` or `regex.error`.

    The syntax is the standard `re` module's, checked by `re` first so that
    its error messages name the problem; `regex` accepts every `re` pattern.
    """
    re.compile(pattern, re.IGNORECASE)
    return AdminRegex(pattern, regex.compile(pattern, regex.IGNORECASE | regex.VERSION0))
