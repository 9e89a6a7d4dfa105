"""Rule evaluation: a short, pure interpreter over a `RuleSet` that records a trace.

Promises of `evaluate`:

* it is pure: the clock (`now`) and everything known about the mail are
  parameters; it reads no file, opens no session and changes nothing;
* rules are looked at in order (file name, then position in the file); a rule
  matches when every condition of its ``when`` holds, checked in the order
  written and stopping at the first that does not; an ``any`` holds when one
  of its groups does;
* every rule looked at gets a `RuleTrace`: a matching rule with the reason of
  each condition and the actions it contributed, a rule that did not match
  with the reason of the first condition that failed and no actions;
* actions accumulate in rule order, each rule's in the order of
  `schema.ACTION_KEYS`; the action layer applies them in that order, so for
  single-valued fields (team, assignee, priority, status) a later rule wins;
* a matching rule with ``stop = true`` ends evaluation: its trace says
  ``stopped=True`` and the rules after it are not looked at and not in the
  trace (the stopped flag tells a reader why the trace ends there).
"""

from __future__ import annotations

from datetime import datetime

from helpdesk.rules.conditions import CONDITIONS, Facts
from helpdesk.rules.regexes import RegexBudget
from helpdesk.rules.schema import AnyOf, Condition, ConditionGroup, Rule, RuleSet
from helpdesk.values import (
    Action,
    Evaluation,
    ParsedMessage,
    RegexResults,
    RuleInput,
    RuleTrace,
    TicketView,
)

__all__ = ["evaluate"]

ALWAYS = "no conditions: always matches"


def evaluate(
    rules: RuleSet,
    msg: ParsedMessage,
    ticket: TicketView | None,
    rule_input: RuleInput,
    *,
    now: datetime,
    searched: RegexResults | None = None,
) -> Evaluation:
    """Run `rules` over one mail and return the actions to take with the trace.

    `searched`: the rules' regexes already searched in this mail (`presearch`).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        # Business hours are meaningless on a naive clock; this is a caller bug.
        raise ValueError("evaluate() needs a timezone-aware `now`")
    facts = Facts(msg, ticket, rule_input, now, RegexBudget(known=searched))
    actions: list[Action] = []
    trace: list[RuleTrace] = []
    for rule in rules:
        entry = _run(rule, facts)
        trace.append(entry)
        actions.extend(entry.actions)
        if entry.stopped:
            break
    return Evaluation(tuple(actions), tuple(trace))


def _run(rule: Rule, facts: Facts) -> RuleTrace:
    held, reasons = _check_group(rule.when, facts)
    if not held:
        return RuleTrace(rule.name, rule.file, matched=False, reasons=reasons)
    return RuleTrace(
        rule.name,
        rule.file,
        matched=True,
        reasons=reasons or (ALWAYS,),
        actions=rule.actions,
        stopped=rule.stop,
    )


def _check_group(group: ConditionGroup, facts: Facts) -> tuple[bool, tuple[str, ...]]:
    """Whether every item holds: all their reasons if so, else the first failure's reason."""
    reasons: list[str] = []
    for item in group.items:
        held, reason = _check_item(item, facts)
        if not held:
            return False, (reason,)
        reasons.append(reason)
    return True, tuple(reasons)


def _check_item(item: Condition | AnyOf, facts: Facts) -> tuple[bool, str]:
    if isinstance(item, Condition):
        return CONDITIONS[item.key].check(item.value, facts)
    return _check_any(item, facts)


def _check_any(any_of: AnyOf, facts: Facts) -> tuple[bool, str]:
    """The first group that holds decides; if none does, say why each failed."""
    failures: list[str] = []
    for group in any_of.groups:
        held, reasons = _check_group(group, facts)
        if held:
            return True, "any: " + " and ".join(reasons or (ALWAYS,))
        failures.extend(reasons)
    return False, f"none of {len(any_of.groups)} `any` groups holds: " + "; ".join(failures)
