"""Rule regexes searched ahead in a parsing worker: the same evaluation, found by lookup."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path

from bench import mailgen
from helpdesk.intake.worker import prepare_and_search
from helpdesk.mail.prepare import PrepareConfig
from helpdesk.rules import evaluate, load_rules
from helpdesk.rules.regexes import RegexBudget, compile_admin_regex, presearch
from helpdesk.values import RuleInput

ROOT = Path(__file__).resolve().parents[2]
TEAMS = {"support", "networking", "infrastructure", "identity-and-access", "security"}
TEMPLATES = {"acknowledge", "password-reset", "team-forward", "agent-reply", "resolved"}
NOW = datetime(2024, 6, 10, 10, 0, tzinfo=UTC)


def test_lookups_answer_for_the_searched_strings_only() -> None:
    subject, body = "VPN down", "The printer is fine; the vpn is not."
    vpn, printer = compile_admin_regex(r"\bvpn\b"), compile_admin_regex("printer")
    known = presearch([vpn.pattern, printer.pattern], subject, body)
    assert known.in_subject == {vpn.pattern: (0, 3), printer.pattern: None}
    assert known.in_body == {vpn.pattern: (25, 28), printer.pattern: (4, 11)}
    budget = RegexBudget(known=known)
    found = budget.search(vpn, body)
    assert (found.start(), found.end()) == (25, 28)
    assert budget.search(printer, subject) is None
    assert budget.left == RegexBudget().left  # looked up, nothing searched
    # Equal text that is another string is searched, not looked up.
    copy = "".join(list(body))
    assert budget.search(vpn, copy).span() == (25, 28)
    assert budget.left < RegexBudget().left


def test_a_search_that_runs_out_of_time_is_left_for_the_rules() -> None:
    slow = r"(x+x+)+y"  # backtracks exponentially on a run of x without a y
    known = presearch([slow, "x"], "x" * 3000, "")
    assert slow not in known.in_subject
    assert known.in_subject["x"] == (0, 1)


def test_shipped_rules_evaluate_alike_with_and_without_the_worker_search() -> None:
    """Over generated help-desk mail, through a pickle as from a worker: every trace equal."""
    rules = load_rules(ROOT / "rules", teams=TEAMS, agents=set(), templates=TEMPLATES)
    config = PrepareConfig(loop_id="support@example.com", rule_patterns=rules.text_patterns())
    assert len(config.rule_patterns) > 10
    fired = 0
    for raw in mailgen.generate(150, seed=5):
        prepared = pickle.loads(pickle.dumps(prepare_and_search(raw, config)))
        msg, known = prepared.msg, prepared.searched
        assert msg is not None
        assert known is not None
        # Every lookup is answered from the worker's results (nothing searched again).
        budget = RegexBudget(known=known)
        for pattern in config.rule_patterns:
            budget.search(compile_admin_regex(pattern), msg.subject)
            budget.search(compile_admin_regex(pattern), msg.new_text or msg.text)
        assert budget.left == RegexBudget().left
        rule_input = RuleInput(is_new=True, verdict=prepared.verdict)
        looked_up = evaluate(rules, msg, None, rule_input, now=NOW, searched=known)
        searched = evaluate(rules, msg, None, rule_input, now=NOW)
        assert looked_up == searched
        fired += len(looked_up.fired)
    assert fired > 150
