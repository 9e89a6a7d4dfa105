"""Rule tables from TOML, validated once into frozen `Rule` objects.

`build_rule_set` takes the parsed TOML documents of every rule file, checks
every key of every rule and returns a `RuleSet`, or raises one `RuleError`
listing *all* problems across all files, each naming the file, the rule (its
name, or ``rule[0]`` for the first ``[[rule]]`` of a file when it has no
usable name), the dotted key (``when.subject``, ``then.forward.team``) and
what is wrong together with what is allowed. One edit-and-retry cycle fixes a
rules directory.

Team, agent and template names are checked against the sets the caller
passes in (`KnownNames`): this module never looks anything up itself.
Condition keys and their value checks come from the `CONDITIONS` registry.

The format, in short (``rules/README.md`` has it in full)::

    [[rule]]
    name = "vpn"                  # required, unique across all files
    description = "..."           # optional
    stop = false                  # optional: true ends evaluation when this rule matches
    [rule.when]                   # optional; every key must hold; see CONDITIONS
    subject = "(?i)\\bvpn\\b"
    any = [ { sender_domain = "example.com" }, { recipient = "net@*" } ]
    [rule.then]                   # required, at least one action
    team = "networking"           # and assignee, priority, tags, status, auto_reply, forward

Actions come out in one fixed order whatever the order in the file: team,
assignee, priority, tags, status, auto_reply, forward.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from helpdesk.errors import HelpdeskError
from helpdesk.rules.conditions import (
    CONDITIONS,
    Invalid,
    given,
    parse_strings,
)
from helpdesk.rules.timers import Timer, parse_timer
from helpdesk.values import (
    Action,
    AddTags,
    AutoReply,
    Forward,
    Priority,
    SetAssignee,
    SetPriority,
    SetStatus,
    SetTeam,
    TicketStatus,
)

__all__ = [
    "ACTION_KEYS",
    "RULE_KEYS",
    "AnyOf",
    "Condition",
    "ConditionGroup",
    "KnownNames",
    "Rule",
    "RuleError",
    "RuleProblem",
    "RuleSet",
    "build_rule_set",
]

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")

RULE_KEYS = ("name", "description", "stop", "when", "then")
FORWARD_KEYS = ("team", "address", "template")

_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+")


# --- problems -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """One thing wrong in a rule file.

    `rule` is the rule as the message names it (``rule "vpn"``, or ``rule[2]``
    for the third ``[[rule]]`` of the file when it has no name), None for a
    problem with the whole file; `key` is dotted (``then.forward.team``) and
    empty when the file or rule itself is to blame.
    """

    path: Path
    rule: str | None
    key: str
    problem: str

    def __str__(self) -> str:
        parts = [str(self.path), self.rule, self.key, self.problem]
        return ": ".join(part for part in parts if part)


class RuleError(HelpdeskError):
    """The rule files are invalid; lists every problem, one per line."""

    def __init__(self, problems: Sequence[RuleProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


# --- the validated objects ------------------------------------------------------


# Conditions whose value is one regex searched in the subject or the body.
TEXT_CONDITIONS = frozenset({"subject", "body", "subject_or_body"})


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``when`` key and its value as compiled by ``CONDITIONS[key].parse``."""

    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class AnyOf:
    """``any = [ {...}, {...} ]``: at least one of the groups must hold."""

    groups: tuple[ConditionGroup, ...]


@dataclass(frozen=True, slots=True)
class ConditionGroup:
    """Conditions that must all hold, in the order written; empty always holds."""

    items: tuple[Condition | AnyOf, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated ``[[rule]]``: when `when` holds, emit `actions`; `stop` ends evaluation."""

    name: str
    path: Path
    when: ConditionGroup
    actions: tuple[Action, ...]
    stop: bool = False
    description: str = ""

    @property
    def file(self) -> str:
        """The rule file's name, as traces show it."""
        return self.path.name


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every rule of a rules directory, in evaluation order (file name, then position)."""

    rules: tuple[Rule, ...] = ()
    files: tuple[Path, ...] = ()
    # Time-driven rules ([[timer]]), in file order; see helpdesk.rules.timers.
    timers: tuple[Timer, ...] = ()

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def text_patterns(self) -> tuple[str, ...]:
        """The regexes of every subject, body and subject_or_body condition, once each."""
        found: dict[str, None] = {}

        def walk(group: ConditionGroup) -> None:
            for item in group.items:
                if isinstance(item, AnyOf):
                    for inner in item.groups:
                        walk(inner)
                elif item.key in TEXT_CONDITIONS:
                    found[item.value.pattern] = None

        for rule in self.rules:
            walk(rule.when)
        return tuple(found)


@dataclass(frozen=True, slots=True)
class KnownNames:
    """The names rules may refer to; agents are compared lower-cased."""

    teams: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    templates: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, *, teams: Collection[str], agents: Collection[str], templates: Collection[str]
    ) -> KnownNames:
        return cls(
            frozenset(teams), frozenset(agent.lower() for agent in agents), frozenset(templates)
        )


# --- collecting problems --------------------------------------------------------


@dataclass(slots=True)
class _Report:
    """Problems found in one file, each tagged with the rule being read."""

    path: Path
    found: list[RuleProblem]
    rule: str | None = None

    def add(self, key: str, problem: str) -> None:
        self.found.append(RuleProblem(self.path, self.rule, key, problem))

    def add_invalid(self, key: str, invalid: Invalid) -> None:
        for sub_key, problem in invalid.problems:
            self.add(_join(key, sub_key), problem)

    def unknown_key(self, key: str, allowed: Sequence[str]) -> None:
        table, _, last = key.rpartition(".")
        if table and last in RULE_KEYS:
            # TOML puts every key after a [rule.then] header into that table,
            # so a `stop = true` written below it silently moves there.
            self.add(
                key,
                f"unknown key; `{last}` belongs to the rule itself: write it after [[rule]], "
                "before [rule.when] and [rule.then]",
            )
            return
        close = difflib.get_close_matches(last, allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        self.add(key, f"unknown key; {hint}allowed: {', '.join(allowed)}")


def _join(key: str, sub_key: str) -> str:
    if not sub_key:
        return key
    return f"{key}{sub_key}" if sub_key.startswith("[") else f"{key}.{sub_key}"


# --- conditions -----------------------------------------------------------------


def _parse_group(value: object, key: str, report: _Report) -> ConditionGroup:
    """A table of conditions (``when``, or one group of ``any``)."""
    if not isinstance(value, dict):
        report.add(key, f"must be a table of conditions ({given(value)})")
        return ConditionGroup()
    items: list[Condition | AnyOf] = []
    for name, raw in value.items():
        at = f"{key}.{name}"
        if name == "any":
            items.append(_parse_any(raw, at, report))
        elif name in CONDITIONS:
            try:
                items.append(Condition(name, CONDITIONS[name].parse(raw)))
            except Invalid as invalid:
                report.add_invalid(at, invalid)
        else:
            report.unknown_key(at, [*CONDITIONS, "any"])
    return ConditionGroup(tuple(items))


def _parse_any(value: object, key: str, report: _Report) -> AnyOf:
    if not isinstance(value, list) or not value:
        report.add(key, f"must be a non-empty array of condition tables ({given(value)})")
        return AnyOf(())
    groups: list[ConditionGroup] = []
    for index, raw in enumerate(value):
        at = f"{key}[{index}]"
        if isinstance(raw, dict) and not raw:
            # An empty group always holds, which makes the whole `any` pointless.
            report.add(at, "is empty: a group needs at least one condition")
        groups.append(_parse_group(raw, at, report))
    return AnyOf(tuple(groups))


# --- actions --------------------------------------------------------------------


def _string(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid.because(f"must be a non-empty string ({given(value)})")
    return value.strip()


def _known(value: object, known: frozenset[str], what: str, where: str) -> str:
    """A name that must be one of `known`, with a message that lists them."""
    name = _string(value)
    if name in known:
        return name
    allowed = f"known {what}s: {', '.join(sorted(known))}" if known else f"no {what}s {where}"
    raise Invalid.because(f"unknown {what} {name!r}; {allowed}")


def _team(value: object, known: KnownNames) -> str:
    return _known(value, known.teams, "team", "are configured ([[team]] in the configuration)")


def _template(value: object, known: KnownNames) -> str:
    return _known(value, known.templates, "template", "exist in the templates directory")


def _email(value: object) -> str:
    address = _string(value).lower()
    if not _EMAIL.fullmatch(address):
        raise Invalid.because(f"must be an email address like someone@example.org (got {value!r})")
    return address


def _choice(value: object, enum: type[E]) -> E:
    allowed = ", ".join(member.value for member in enum)
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    raise Invalid.because(f"must be one of {allowed} (got {value!r})")


def _set_team(value: object, known: KnownNames) -> Action:
    return SetTeam(_team(value, known))


def _set_assignee(value: object, known: KnownNames) -> Action:
    address = _email(value)
    # Without configured agents any address is accepted: the action layer
    # then decides what an unknown assignee means.
    if known.agents and address not in known.agents:
        raise Invalid.because(
            f"unknown agent {address!r}; known agents: {', '.join(sorted(known.agents))}"
        )
    return SetAssignee(address)


def _set_priority(value: object, known: KnownNames) -> Action:
    return SetPriority(_choice(value, Priority))


def _add_tags(value: object, known: KnownNames) -> Action:
    return AddTags(tuple(dict.fromkeys(parse_strings(value))))


def _set_status(value: object, known: KnownNames) -> Action:
    return SetStatus(_choice(value, TicketStatus))


def _auto_reply(value: object, known: KnownNames) -> Action:
    return AutoReply(_template(value, known))


def _forward(value: object, known: KnownNames) -> Action:
    """``{ team = "security", template = "team-forward" }`` or ``{ address = ..., ... }``."""
    if not isinstance(value, dict):
        raise Invalid.because(
            'must be a table like { team = "security", template = "team-forward" } '
            f"({given(value)})"
        )
    problems = [
        (key, f"unknown key; allowed: {', '.join(FORWARD_KEYS)}")
        for key in value
        if key not in FORWARD_KEYS
    ]
    if ("team" in value) == ("address" in value):
        problems.append(("", "needs exactly one of `team` or `address`"))
    readers: dict[str, Callable[[object], str]] = {
        "team": lambda raw: _team(raw, known),
        "address": _email,
        "template": lambda raw: _template(raw, known),
    }
    parsed: dict[str, str] = {}
    for key, read in readers.items():
        if key in value:
            try:
                parsed[key] = read(value[key])
            except Invalid as invalid:
                problems.extend((key, problem) for _, problem in invalid.problems)
    if "template" not in value:
        problems.append(("template", "is required: the template the forward is written with"))
    if problems:
        raise Invalid(*problems)
    return Forward(parsed["template"], team=parsed.get("team"), address=parsed.get("address"))


_ACTIONS: dict[str, Callable[[object, KnownNames], Action]] = {
    "team": _set_team,
    "assignee": _set_assignee,
    "priority": _set_priority,
    "tags": _add_tags,
    "status": _set_status,
    "auto_reply": _auto_reply,
    "forward": _forward,
}
# The keys of [rule.then], in the order a rule's actions are emitted.
ACTION_KEYS = tuple(_ACTIONS)


def _parse_actions(value: object, report: _Report, known: KnownNames) -> tuple[Action, ...]:
    if not isinstance(value, dict):
        report.add("then", f"must be a table of actions ({given(value)})")
        return ()
    if not value:
        report.add("then", f"needs at least one action; allowed: {', '.join(ACTION_KEYS)}")
    for key in value:
        if key not in _ACTIONS:
            report.unknown_key(f"then.{key}", ACTION_KEYS)
    actions: list[Action] = []
    for key, parse in _ACTIONS.items():  # the fixed emission order, not the file's
        if key in value:
            try:
                actions.append(parse(value[key], known))
            except Invalid as invalid:
                report.add_invalid(f"then.{key}", invalid)
    return tuple(actions)


# --- rules and files ------------------------------------------------------------


def _label(table: Mapping[str, object], index: int) -> str:
    name = table.get("name")
    # Counted from 1, as an admin counts the [[rule]] blocks of a file.
    if isinstance(name, str) and name.strip():
        return f'rule "{name.strip()}"'
    return f"rule[{index + 1}]"


def _parse_rule(
    table: Mapping[str, object], path: Path, report: _Report, known: KnownNames
) -> Rule | None:
    """One ``[[rule]]`` table, or None when it has problems (all reported)."""
    before = len(report.found)
    for key in table:
        if key not in RULE_KEYS:
            report.unknown_key(key, RULE_KEYS)
    name = _field(table, "name", report, _string, required=True)
    description = _field(table, "description", report, _description)
    stop = _field(table, "stop", report, _stop)
    when = _parse_group(table.get("when", {}), "when", report)
    actions: tuple[Action, ...] = ()
    if "then" in table:
        actions = _parse_actions(table["then"], report, known)
    else:
        report.add(
            "then", f"is required: a [rule.then] table with one or more of {', '.join(ACTION_KEYS)}"
        )
    if len(report.found) > before:
        return None
    assert isinstance(name, str)
    return Rule(name, path, when, actions, stop=bool(stop), description=description or "")


def _description(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid.because(f"must be a string ({given(value)})")
    return value.strip()


def _stop(value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid.because(f"must be true or false ({given(value)})")
    return value


def _field(
    table: Mapping[str, object],
    key: str,
    report: _Report,
    parse: Callable[[object], T],
    *,
    required: bool = False,
) -> T | None:
    if key not in table:
        if required:
            report.add(key, "is required")
        return None
    try:
        return parse(table[key])
    except Invalid as invalid:
        report.add_invalid(key, invalid)
        return None


def _rule_tables(data: Mapping[str, object], report: _Report) -> list[object]:
    """The ``[[rule]]`` array of one file; anything else at the top level is a problem."""
    for key in data:
        if key not in ("rule", "timer"):
            report.add(key, "unknown top-level key; a rules file holds [[rule]] and [[timer]] "
                            "tables")
    tables = data.get("rule", [])
    if isinstance(tables, dict):
        report.add("rule", "must be an array of tables: write [[rule]], not [rule]")
        return []
    if not isinstance(tables, list):
        report.add("rule", f"must be an array of [[rule]] tables ({given(tables)})")
        return []
    return tables


def build_rule_set(
    documents: Sequence[tuple[Path, Mapping[str, object]]],
    known: KnownNames,
    *,
    problems: Sequence[RuleProblem] = (),
) -> RuleSet:
    """Validate parsed rule files, in the order given, into a `RuleSet`.

    `problems` found before parsing (unreadable files, TOML syntax errors) are
    reported together with the ones found here. Raises `RuleError` listing
    every problem when there is any, grouped by file.
    """
    found = list(problems)
    rules: list[Rule] = []
    timers: list[Timer] = []
    seen: dict[str, Path] = {}
    for path, data in documents:
        report = _Report(path, found)
        for index, table in enumerate(_rule_tables(data, report)):
            if not isinstance(table, dict):
                report.rule = f"rule[{index + 1}]"
                report.add("", f"must be a table ({given(table)})")
                continue
            report.rule = _label(table, index)
            _check_unique(table.get("name"), path, seen, report)
            rule = _parse_rule(table, path, report, known)
            if rule is not None:
                rules.append(rule)
        timers.extend(_timers(data, path, report, known, seen))
    if found:
        # Stable: by file, and within a file in the order the problems were found.
        found.sort(key=lambda problem: str(problem.path))
        raise RuleError(found)
    return RuleSet(tuple(rules), tuple(path for path, _ in documents), tuple(timers))


def _timers(
    data: Mapping[str, object],
    path: Path,
    report: _Report,
    known: KnownNames,
    seen: dict[str, Path],
) -> list[Timer]:
    """The ``[[timer]]`` tables of one file (helpdesk.rules.timers)."""
    tables = data.get("timer", [])
    if not isinstance(tables, list):
        report.rule = None
        report.add("timer", "must be an array of tables: write [[timer]]")
        return []
    timers = []
    for index, table in enumerate(tables):
        name = table.get("name") if isinstance(table, dict) else None
        report.rule = (f'timer "{name.strip()}"' if isinstance(name, str) and name.strip()
                       else f"timer[{index + 1}]")
        if not isinstance(table, dict):
            report.add("", f"must be a table ({given(table)})")
            continue
        _check_unique(name, path, seen, report)
        timer, problems = parse_timer(table, path, known.templates)
        for key, problem in problems:
            report.add(key, problem)
        if timer is not None:
            timers.append(timer)
    return timers


def _check_unique(name: object, path: Path, seen: dict[str, Path], report: _Report) -> None:
    """Rule names identify rules in traces and events, so they are unique across files."""
    if not isinstance(name, str) or not name.strip():
        return
    name = name.strip()
    if name not in seen:
        seen[name] = path
        return
    where = "earlier in this file" if seen[name] == path else f"in {seen[name]}"
    report.add("name", f"duplicate rule name; already defined {where}")
