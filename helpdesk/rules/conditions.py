"""Condition kinds: one small pure predicate per key of a rule's ``[rule.when]`` table.

Each kind is registered in `CONDITIONS` under its TOML key by the `condition`
decorator, together with the parser that validates and compiles the value an
admin wrote (a regex string becomes a compiled pattern, a business-hours table
becomes a `Hours`). Adding a condition kind is adding one parser and one
function here; the schema and the engine pick it up from the registry.

A predicate takes the compiled value and the `Facts` about one mail and returns
``(held, reason)``. The reason is a short sentence that is true whether or not
the condition held (``sender dana@example.com matches *@example.com``,
``not a new ticket``), so the trace can say why a rule fired or did not.

Parsers raise `Invalid` with every problem they find, each relative to the
condition's key (``""`` for the value itself, ``"days"`` for a sub-key), and the
schema turns those into `RuleProblem` values naming file, rule and key.

Everything here is pure: the clock is `Facts.now`, passed in by the caller.
Admin-written regexes run with a time bound (`helpdesk.rules.regexes`): a
search that runs out does not match, and its reason says so, starting with
`REGEX_TIMED_OUT` (the trace shows it and the action layer records an event).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from fnmatch import fnmatchcase
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import regex

from helpdesk.rules.regexes import (
    REGEX_BUDGET,
    REGEX_TIMED_OUT,
    REGEX_TIMEOUT,
    AdminRegex,
    RegexBudget,
    compile_admin_regex,
    regex_timed_out,
)
from helpdesk.values import ParsedMessage, RuleInput, TicketView

__all__ = [
    "CONDITIONS",
    "REGEX_BUDGET",
    "REGEX_TIMED_OUT",
    "REGEX_TIMEOUT",
    "AdminRegex",
    "ConditionKind",
    "Facts",
    "Hours",
    "Invalid",
    "RegexBudget",
    "Result",
    "condition",
    "describe_type",
    "given",
    "regex_timed_out",
]

T = TypeVar("T")

Result = tuple[bool, str]
"""What a predicate returns: whether the condition held, and a reason saying why."""

# Reasons stay one short line: long subjects and body excerpts are cut here.
_QUOTE_LIMIT = 80
_PATTERN_LIMIT = 60
_EXCERPT_CONTEXT = 25

_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_CLOCK = re.compile(r"(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2})")

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_ALIASES = {
    **{name: index for index, name in enumerate(DAY_NAMES)},
    **{
        name: index
        for index, name in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
}


# --- the facts a predicate sees ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything a condition may look at for one mail; `now` is timezone-aware."""

    message: ParsedMessage
    ticket: TicketView | None
    rule_input: RuleInput
    now: datetime
    # Shared by the conditions of one evaluation; the engine makes one per mail.
    regex_budget: RegexBudget = field(default_factory=RegexBudget, compare=False)

    @property
    def body(self) -> str:
        """The text the requester wrote: the new part of a reply, else the whole text."""
        return self.message.new_text or self.message.text

    @property
    def recipients(self) -> tuple[str, ...]:
        """Envelope recipients; To and Cc when the caller knows no envelope."""
        if self.rule_input.recipients:
            return tuple(address.lower() for address in self.rule_input.recipients)
        return tuple(address.address.lower() for address in (*self.message.to, *self.message.cc))


# --- validation ---------------------------------------------------------------


class Invalid(Exception):
    """A condition value is unusable; `problems` are ``(sub_key, problem)`` pairs."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problem for _, problem in problems))

    @classmethod
    def because(cls, problem: str) -> Invalid:
        """One problem with the value itself."""
        return cls(("", problem))


def describe_type(value: object) -> str:
    """The TOML name of a parsed value's type, for "expected X, got Y"."""
    # bool before int: a bool is an int in Python, not in TOML.
    names: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (datetime, "date-time"),
        (time, "time"),
    ]
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def given(value: object) -> str:
    """``got string 'x'``, ``got true``, ``got table``: what the admin wrote, briefly."""
    kind = describe_type(value)
    if isinstance(value, bool):
        return f"got {'true' if value else 'false'}"
    if isinstance(value, str | int | float):
        return f"got {kind} {value!r}"
    return f"got {kind}"


def parse_bool(value: object) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise Invalid.because(f"must be true or false ({given(value)})")
    return value


def parse_strings(value: object) -> tuple[str, ...]:
    """A non-empty string, or a non-empty array of them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise Invalid.because(f"must be a string or a non-empty array of strings ({given(value)})")
    problems = [
        (
            f"[{index}]" if isinstance(value, list) else "",
            f"must be a non-empty string ({given(item)})",
        )
        for index, item in enumerate(items)
        if not isinstance(item, str) or not item.strip()
    ]
    if problems:
        raise Invalid(*problems)
    return tuple(item.strip() for item in items)


def parse_globs(value: object) -> tuple[str, ...]:
    """Address globs (``*@example.com``), compared case-insensitively."""
    return tuple(pattern.lower() for pattern in parse_strings(value))


def parse_domains(value: object) -> tuple[str, ...]:
    """Domain names (``example.com``); a leading ``@`` is forgiven."""
    domains = tuple(item.lower().removeprefix("@") for item in parse_strings(value))
    problems = [
        ("", f"must be a domain like example.com; use `sender` for globs (got {domain!r})")
        for domain in domains
        if not _DOMAIN.fullmatch(domain)
    ]
    if problems:
        raise Invalid(*problems)
    return domains


def parse_regex(value: object) -> AdminRegex:
    """A Python regular expression, searched anywhere in the text, ignoring case.

    Case-insensitive by default because admins write "vpn" and users write
    "VPN"; `(?-i:...)` makes a part case-sensitive where that matters. The
    syntax is the standard `re` module's; matching is done with a time bound
    (`helpdesk.rules.regexes`).
    """
    if not isinstance(value, str) or not value:
        raise Invalid.because(f"must be a non-empty regular expression string ({given(value)})")
    try:
        return compile_admin_regex(value)
    except (re.error, regex.error) as error:
        where = f" at position {error.pos}" if error.pos is not None else ""
        raise Invalid.because(f"invalid regular expression {value!r}: {error.msg}{where}") from None


def parse_header_patterns(value: object) -> tuple[tuple[str, AdminRegex], ...]:
    """A table of header name to regex, e.g. ``{ "X-Priority" = "^1" }``."""
    if not isinstance(value, dict) or not value:
        raise Invalid.because(
            f'must be a table of header name to regex, e.g. {{ "X-Priority" = "^1" }} '
            f"({given(value)})"
        )
    patterns: list[tuple[str, AdminRegex]] = []
    problems: list[tuple[str, str]] = []
    for name, pattern in value.items():
        try:
            patterns.append((name, parse_regex(pattern)))
        except Invalid as invalid:
            problems.extend((name, problem) for _, problem in invalid.problems)
    if problems:
        raise Invalid(*problems)
    return tuple(patterns)


# --- business hours -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hours:
    """A weekly window: `days` (0 = Monday) from `start` to `end` minutes after midnight.

    An `end` before `start` is a window across midnight; the days name the
    day it starts on (``days = "fri", from = "22:00", to = "06:00"`` covers
    Saturday 03:00). ``to = "24:00"`` is the end of the day.
    """

    days: frozenset[int]
    start: int
    end: int
    zone: ZoneInfo
    spec: str  # days and times as the admin wrote them, for reasons

    def contains(self, now: datetime) -> bool:
        """Whether the aware datetime `now` falls inside the window."""
        local = now.astimezone(self.zone)
        minute = local.hour * 60 + local.minute + local.second / 60
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        yesterday = (today - 1) % 7
        return (today in self.days and minute >= self.start) or (
            yesterday in self.days and minute < self.end
        )


def parse_days(text: str) -> frozenset[int]:
    """``mon-fri``, ``mon,wed,fri``, ``sat-sun``; ranges may wrap (``fri-mon``)."""
    days: set[int] = set()
    for item in text.lower().split(","):
        first, dash, last = (part.strip() for part in item.partition("-"))
        if first not in _DAY_ALIASES or (dash and last not in _DAY_ALIASES):
            raise ValueError(
                f"must be days like mon-fri, mon,wed,fri or sat-sun; days are "
                f"{', '.join(DAY_NAMES)} (got {text!r})"
            )
        start = _DAY_ALIASES[first]
        stop = _DAY_ALIASES[last] if last else start
        span = (stop - start) % 7
        days.update((start + offset) % 7 for offset in range(span + 1))
    return frozenset(days)


def parse_clock(value: object, *, end: bool) -> int:
    """``"08:00"`` (or a TOML time ``08:00:00``) as minutes after midnight."""
    if isinstance(value, time):
        return value.hour * 60 + value.minute
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'must be a time like "08:00" ({given(value)})')
    hour, minute = int(match["hour"]), int(match["minute"])
    # 24:00 is how people write "until the end of the day".
    if (hour, minute) == (24, 0) and end:
        return 24 * 60
    if hour > 23 or minute > 59:
        upper = " or 24:00" if end else ""
        raise ValueError(f"must be a time from 00:00 to 23:59{upper} (got {value!r})")
    return hour * 60 + minute


def parse_zone(value: object) -> ZoneInfo:
    """An IANA time zone name such as ``Europe/Berlin``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f'must be a time zone name like "Europe/Berlin" ({given(value)})')
    try:
        return ZoneInfo(value)
    # ZoneInfo raises ZoneInfoNotFoundError for unknown names, ValueError for
    # malformed keys ("../x") and OSError for a directory such as "Europe".
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f'unknown time zone {value!r}; use an IANA name like "Europe/Berlin" or "UTC"'
        ) from None


def parse_hours(value: object) -> Hours:
    """``{ days = "mon-fri", from = "08:00", to = "18:00", timezone = "Europe/Berlin" }``."""
    keys = ("days", "from", "to", "timezone")
    if not isinstance(value, dict):
        raise Invalid.because(
            'must be a table like { days = "mon-fri", from = "08:00", to = "18:00", '
            f'timezone = "Europe/Berlin" }} ({given(value)})'
        )
    problems = [
        (key, f"unknown key; allowed: {', '.join(keys)}") for key in value if key not in keys
    ]
    problems += [(key, "is required") for key in keys if key not in value]
    parsed: dict[str, Any] = {}
    readers: dict[str, Callable[[object], Any]] = {
        "days": _read_days,
        "from": lambda raw: parse_clock(raw, end=False),
        "to": lambda raw: parse_clock(raw, end=True),
        "timezone": parse_zone,
    }
    for key, read in readers.items():
        if key in value:
            try:
                parsed[key] = read(value[key])
            except ValueError as error:
                problems.append((key, str(error)))
    if not problems and parsed["from"] == parsed["to"]:
        problems.append(("to", "must differ from `from`: the window would be empty"))
    if problems:
        raise Invalid(*problems)
    spec = f"{value['days']} {_clock(parsed['from'])}-{_clock(parsed['to'])}"
    return Hours(parsed["days"], parsed["from"], parsed["to"], parsed["timezone"], spec)


def _read_days(value: object) -> frozenset[int]:
    if not isinstance(value, str):
        raise ValueError(f'must be a string like "mon-fri" ({given(value)})')
    return parse_days(value)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# --- the registry ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConditionKind(Generic[T]):
    """A condition key: how its value is validated and how it is checked."""

    key: str
    parse: Callable[[object], T]
    check: Callable[[T, Facts], Result]

    @property
    def summary(self) -> str:
        """The first line of the predicate's docstring, for `rules` help output."""
        doc = self.check.__doc__ or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


CONDITIONS: dict[str, ConditionKind[Any]] = {}
"""Every condition kind, by its key in ``[rule.when]``, in registration order."""

# `any` is a group of conditions, not a predicate: the schema and the engine
# handle it, and it must not be registered as a kind.
RESERVED_KEYS = frozenset({"any"})


def condition(
    key: str, parse: Callable[[object], T]
) -> Callable[[Callable[[T, Facts], Result]], Callable[[T, Facts], Result]]:
    """Register the decorated predicate under `key`, with `parse` to validate its value."""

    def register(check: Callable[[T, Facts], Result]) -> Callable[[T, Facts], Result]:
        if key in CONDITIONS or key in RESERVED_KEYS:
            raise ValueError(f"condition {key!r} is registered twice")
        CONDITIONS[key] = ConditionKind(key, parse, check)
        return check

    return register


# --- reason helpers -------------------------------------------------------------


def _quote(text: str, limit: int = _QUOTE_LIMIT) -> str:
    """A text for a one-line reason: cut to `limit` characters, quoted, escapes shown."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _pattern(pattern: AdminRegex) -> str:
    """A regex for a one-line reason: (?x) layout collapsed, long ones cut."""
    text = " ".join(pattern.pattern.split())
    return text if len(text) <= _PATTERN_LIMIT else text[: _PATTERN_LIMIT - 1] + "…"


def _timed_out(where: str, pattern: AdminRegex) -> str:
    return (
        f"{REGEX_TIMED_OUT}: {where} against {_pattern(pattern)} "
        f"(more than {REGEX_TIMEOUT} s, or the {REGEX_BUDGET} s for this mail spent): "
        "not matched"
    )


def _excerpt(text: str, match: Any) -> str:
    """The matched part of a long text with a little context, on one line."""
    start = max(0, match.start() - _EXCERPT_CONTEXT)
    end = min(len(text), match.end() + _EXCERPT_CONTEXT)
    piece = " ".join(text[start:end].split())
    return _quote(("…" if start else "") + piece + ("…" if end < len(text) else ""))


def _listing(items: Sequence[str]) -> str:
    return ", ".join(items)


def _glob_hit(address: str, patterns: Sequence[str]) -> str | None:
    return next((pattern for pattern in patterns if fnmatchcase(address, pattern)), None)


# --- the predicates -------------------------------------------------------------


@condition("mailbox", parse_strings)
def mailbox(names: tuple[str, ...], facts: Facts) -> Result:
    """The mail was fetched from one of these ``[[mailbox]]`` entries."""
    current = facts.rule_input.mailbox
    if current is None:
        return False, "mail did not come from a configured mailbox"
    if current in names:
        return True, f"mailbox {current} is one of {_listing(names)}"
    return False, f"mailbox {current} is not one of {_listing(names)}"


@condition("recipient", parse_globs)
def recipient(patterns: tuple[str, ...], facts: Facts) -> Result:
    """A recipient address matches one of these globs (case-insensitive)."""
    recipients = facts.recipients
    for address in recipients:
        hit = _glob_hit(address, patterns)
        if hit is not None:
            return True, f"recipient {address} matches {hit}"
    if not recipients:
        return False, "no recipients known"
    return False, f"no recipient ({_listing(recipients)}) matches {_listing(patterns)}"


@condition("sender", parse_globs)
def sender(patterns: tuple[str, ...], facts: Facts) -> Result:
    """The From address matches one of these globs (case-insensitive)."""
    if facts.message.from_ is None:
        return False, "no sender address"
    address = facts.message.from_.address.lower()
    hit = _glob_hit(address, patterns)
    if hit is not None:
        return True, f"sender {address} matches {hit}"
    return False, f"sender {address} matches none of {_listing(patterns)}"


@condition("sender_domain", parse_domains)
def sender_domain(domains: tuple[str, ...], facts: Facts) -> Result:
    """The From address's domain is one of these or a subdomain of one."""
    if facts.message.from_ is None:
        return False, "no sender address"
    domain = facts.message.from_.address.lower().rpartition("@")[2]
    for wanted in domains:
        if domain == wanted or domain.endswith("." + wanted):
            return True, f"sender domain {domain} is within {wanted}"
    return False, f"sender domain {domain} is not within {_listing(domains)}"


@condition("subject", parse_regex)
def subject(pattern: AdminRegex, facts: Facts) -> Result:
    """The subject matches this regex (searched, Python syntax)."""
    text = facts.message.subject
    try:
        match = facts.regex_budget.search(pattern, text)
    except TimeoutError:
        return False, _timed_out("subject", pattern)
    if match:
        return True, f"subject matches {_pattern(pattern)}: {_quote(text)}"
    return False, f"subject does not match {_pattern(pattern)}: {_quote(text)}"


@condition("body", parse_regex)
def body(pattern: AdminRegex, facts: Facts) -> Result:
    """The new text (quoted history cut off; the whole text if nothing is new) matches."""
    text = facts.body
    try:
        match = facts.regex_budget.search(pattern, text)
    except TimeoutError:
        return False, _timed_out("body", pattern)
    if match:
        return True, f"body matches {_pattern(pattern)}: {_excerpt(text, match)}"
    return False, f"body does not match {_pattern(pattern)}"


@condition("subject_or_body", parse_regex)
def subject_or_body(pattern: AdminRegex, facts: Facts) -> Result:
    """The subject or the new text matches: keyword routing written once, not twice."""
    held, reason = subject(pattern, facts)
    if held:
        return held, reason
    timed_out = reason if REGEX_TIMED_OUT in reason else None
    held, reason = body(pattern, facts)
    if held:
        return held, reason
    if timed_out is not None or REGEX_TIMED_OUT in reason:
        return False, timed_out or reason
    return (
        False,
        f"neither subject nor body matches {_pattern(pattern)}: {_quote(facts.message.subject)}",
    )


@condition("header", parse_header_patterns)
def header(patterns: tuple[tuple[str, AdminRegex], ...], facts: Facts) -> Result:
    """Each named header has a value matching its regex (names case-insensitive)."""
    reasons: list[str] = []
    for name, pattern in patterns:
        values = facts.message.header_all(name)
        if not values:
            return False, f"no {name} header"
        try:
            hit = next(
                (value for value in values if facts.regex_budget.search(pattern, value)), None
            )
        except TimeoutError:
            return False, _timed_out(f"header {name}", pattern)
        if hit is None:
            return False, f"header {name} {_quote(values[0])} does not match {_pattern(pattern)}"
        reasons.append(f"header {name} {_quote(hit)} matches {_pattern(pattern)}")
    return True, "; ".join(reasons)


@condition("has_attachment", parse_bool)
def has_attachment(expected: bool, facts: Facts) -> Result:
    """The mail has (true) or has not (false) an attachment; inline images do not count."""
    # Inline parts are mostly signature logos and pasted screenshots: counting
    # them would make nearly every Outlook mail "have an attachment".
    names = [part.filename for part in facts.message.attachments if not part.inline]
    if names:
        return expected, f"has {len(names)} attachment(s): {_quote(_listing(names))}"
    return not expected, "has no attachments"


@condition("is_new", parse_bool)
def is_new(expected: bool, facts: Facts) -> Result:
    """The mail opens a new ticket (true) or is a reply on an existing one (false)."""
    # The caller decides (`RuleInput.is_new`): the ticket snapshot cannot, since
    # ingest may already have created the ticket this very mail opens.
    if facts.rule_input.is_new:
        return expected, "a new ticket"
    where = f" on ticket #{facts.ticket.id}" if facts.ticket is not None else ""
    return not expected, f"not a new ticket: a reply{where}"


@condition("automated", parse_bool)
def automated(expected: bool, facts: Facts) -> Result:
    """The mail was classified as automated (auto-reply, bounce, list, our own) or not."""
    verdict = facts.rule_input.verdict
    if not verdict.automated:
        return not expected, f"not automated: {verdict.mail_class.value}"
    why = f" ({'; '.join(verdict.reasons)})" if verdict.reasons else ""
    return expected, f"automated: {verdict.mail_class.value}{why}"


def _hours_reason(hours: Hours, facts: Facts) -> tuple[bool, str]:
    local = facts.now.astimezone(hours.zone)
    inside = hours.contains(facts.now)
    where = "within" if inside else "outside"
    return inside, f"{local:%a %Y-%m-%d %H:%M} {hours.zone.key} is {where} {hours.spec}"


@condition("business_hours", parse_hours)
def business_hours(hours: Hours, facts: Facts) -> Result:
    """`now` is inside the weekly window (days, from, to, timezone)."""
    return _hours_reason(hours, facts)


@condition("outside_business_hours", parse_hours)
def outside_business_hours(hours: Hours, facts: Facts) -> Result:
    """`now` is outside the weekly window: the inverse of `business_hours`."""
    inside, reason = _hours_reason(hours, facts)
    return not inside, reason
