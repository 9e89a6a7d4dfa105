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

import functools
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import regex

from helpdesk.values import RegexResults

__all__ = [
    "REGEX_BUDGET",
    "REGEX_TIMED_OUT",
    "REGEX_TIMEOUT",
    "AdminRegex",
    "RegexBudget",
    "Span",
    "compile_admin_regex",
    "presearch",
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


@dataclass(frozen=True, slots=True)
class Span:
    """Where a search found its first match, as `regex` match objects tell it."""

    first: int
    last: int

    def start(self) -> int:
        return self.first

    def end(self) -> int:
        return self.last


class RegexBudget:
    """The time left for admin regex searches on one mail (`REGEX_BUDGET` seconds).

    Mutable on purpose: one budget is shared by every condition of one
    evaluation, so that a mail crafted against many rules cannot cost more.
    `known`: searches already done in a parsing worker (`presearch`), looked
    up instead of searched again when they were made on the very same text.
    """

    __slots__ = ("known", "left")

    def __init__(self, seconds: float = REGEX_BUDGET, known: RegexResults | None = None) -> None:
        self.left = seconds
        self.known = known

    def search(self, pattern: AdminRegex, text: str) -> Any | None:
        """`pattern.compiled.search(text)` within the time left; raises TimeoutError."""
        known = self.known
        if known is not None:
            # By identity: the worker's strings come back with the message they were
            # searched in (one pickle), and any other text is searched here.
            found = (known.in_subject if text is known.subject
                     else known.in_body if text is known.body else None)
            if found is not None and pattern.pattern in found:
                span = found[pattern.pattern]
                return Span(*span) if span is not None else None
        if self.left <= 0:
            raise TimeoutError("no time left for regexes on this mail")
        started = time.perf_counter()
        try:
            return pattern.compiled.search(text, timeout=min(REGEX_TIMEOUT, self.left))
        finally:
            self.left -= time.perf_counter() - started


def presearch(patterns: Iterable[str], subject: str, body: str) -> RegexResults:
    """Search each pattern in `subject` and `body` (in a parsing worker), within one budget.

    Only definite answers are kept: a search that ran out of time, or every
    one after the budget is spent, is left out and made again when the rules
    run, under that evaluation's own budget.
    """
    budget = RegexBudget()
    results: tuple[dict[str, tuple[int, int] | None], dict[str, tuple[int, int] | None]] = ({}, {})
    for pattern in dict.fromkeys(patterns):
        compiled = _compiled(pattern)
        for text, found in zip((subject, body), results, strict=True):
            try:
                match = budget.search(compiled, text)
            except TimeoutError:
                continue
            found[pattern] = match.span() if match is not None else None
    return RegexResults(subject, body, results[0], results[1])


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> AdminRegex:
    """Patterns a worker is sent again with every mail, compiled once per worker."""
    return compile_admin_regex(pattern)


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
