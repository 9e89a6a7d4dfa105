"""Routing and triggers: rule files in, actions and a trace out.

``rules/*.toml`` are read in file-name order by `load_rules` into a validated
`RuleSet` (every problem of every file reported at once as a `RuleError`);
`evaluate` runs a rule set over one mail and returns an `Evaluation`: the
`Action` values to apply, in order, and a `RuleTrace` for every rule looked
at. Condition kinds live in `CONDITIONS`, keyed by their TOML key.

The modules, in data-flow order: `regexes` (admin regexes with a time
bound), `conditions` (one predicate per condition kind), `schema` (TOML
tables to `Rule` objects), `files` (the directory), and `engine` (the
interpreter).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helpdesk.rules.conditions import CONDITIONS, ConditionKind, Facts
    from helpdesk.rules.engine import evaluate
    from helpdesk.rules.files import load_rules, rule_files
    from helpdesk.rules.schema import (
        ACTION_KEYS,
        AnyOf,
        Condition,
        ConditionGroup,
        KnownNames,
        Rule,
        RuleError,
        RuleProblem,
        RuleSet,
        build_rule_set,
    )

__all__ = [
    "ACTION_KEYS",
    "CONDITIONS",
    "AnyOf",
    "Condition",
    "ConditionGroup",
    "ConditionKind",
    "Facts",
    "KnownNames",
    "Rule",
    "RuleError",
    "RuleProblem",
    "RuleSet",
    "build_rule_set",
    "evaluate",
    "load_rules",
    "rule_files",
]

# Imported on first use: a parsing worker needs only `regexes` (for `presearch`),
# and importing it runs this file first (a worker's memory; issue 13 item 7).
_LAZY = {"CONDITIONS": "conditions", "ConditionKind": "conditions", "Facts": "conditions",
         "evaluate": "engine", "load_rules": "files", "rule_files": "files",
         **{name: "schema" for name in ("ACTION_KEYS", "AnyOf", "Condition", "ConditionGroup",
                                        "KnownNames", "Rule", "RuleError", "RuleProblem",
                                        "RuleSet", "build_rule_set")}}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
