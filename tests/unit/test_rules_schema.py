"""Rule files: loading in order, and every validation problem named by file, rule and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdesk.errors import HelpdeskError
from helpdesk.rules import (
    CONDITIONS,
    AnyOf,
    Condition,
    RuleError,
    RuleProblem,
    RuleSet,
    load_rules,
)
from helpdesk.values import (
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

ROOT = Path(__file__).resolve().parents[2]
TEAMS = {"support", "networking", "infrastructure", "identity-and-access", "security"}
TEMPLATES = {"acknowledge", "password-reset", "team-forward", "agent-reply", "resolved"}
AGENTS = {"alice@it.example.com", "Bob@IT.example.com"}


def load(directory: Path, agents: set[str] | None = None) -> RuleSet:
    return load_rules(
        directory,
        teams=TEAMS,
        agents=AGENTS if agents is None else agents,
        templates=TEMPLATES,
    )


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def rule(name: str = "r", when: str = "", then: str = 'team = "support"', head: str = "") -> str:
    """One [[rule]] in TOML; `when` and `then` are the bodies of their tables."""
    parts = ["[[rule]]", f'name = "{name}"' if name else "", head]
    if when:
        parts += ["[rule.when]", when]
    if then:
        parts += ["[rule.then]", then]
    return "\n".join(part for part in parts if part) + "\n"


def problems_of(directory: Path, agents: set[str] | None = None) -> list[RuleProblem]:
    with pytest.raises(RuleError) as caught:
        load(directory, agents)
    return caught.value.problems


def only_problem(directory: Path, agents: set[str] | None = None) -> RuleProblem:
    problems = problems_of(directory, agents)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


# --- loading ----------------------------------------------------------------------


def test_shipped_rules_load_cleanly() -> None:
    """The example rules in rules/ validate against the documented teams and templates."""
    rules = load_rules(
        ROOT / "rules",
        teams=TEAMS,
        agents=set(),
        templates=TEMPLATES,
    )
    names = [r.name for r in rules]
    assert len(names) >= 8
    assert len(set(names)) == len(names)
    assert [path.name for path in rules.files] == sorted(path.name for path in rules.files)
    assert names[0] == "security-incident"
    assert names[-1] == "acknowledge"


def test_shipped_rules_use_every_team() -> None:
    """The example rules route to all five teams of the example IT department."""
    rules = load_rules(ROOT / "rules", teams=TEAMS, agents=set(), templates=TEMPLATES)
    routed = {action.team for r in rules for action in r.actions if isinstance(action, SetTeam)}
    assert routed == TEAMS


def test_missing_directory_is_an_empty_rule_set(tmp_path: Path) -> None:
    """A help desk without a rules directory runs with no rules."""
    assert load(tmp_path / "nope") == RuleSet()


def test_empty_directory_is_an_empty_rule_set(tmp_path: Path) -> None:
    """A directory without rule files yields no rules and no files."""
    rules = load(tmp_path)
    assert len(rules) == 0
    assert rules.files == ()


def test_a_file_where_the_directory_should_be_is_an_error(tmp_path: Path) -> None:
    """A rules path that exists but is not a directory is reported, not ignored."""
    path = write(tmp_path, "rules", "")
    problem = only_problem(path)
    assert str(problem) == f"{path}: is not a directory"


def test_files_are_read_in_name_order_and_others_skipped(tmp_path: Path) -> None:
    """`*.toml` in file-name order; other files and hidden editor files are ignored."""
    write(tmp_path, "20-b.toml", rule("b"))
    write(tmp_path, "10-a.toml", rule("a1") + rule("a2"))
    write(tmp_path, "README.md", "not toml [[")
    write(tmp_path, ".#10-a.toml", "garbage [[")
    write(tmp_path, "30-c.toml.bak", "garbage [[")
    rules = load(tmp_path)
    assert [r.name for r in rules] == ["a1", "a2", "b"]
    assert [r.file for r in rules] == ["10-a.toml", "10-a.toml", "20-b.toml"]
    assert [p.name for p in rules.files] == ["10-a.toml", "20-b.toml"]


def test_a_full_rule_becomes_typed_conditions_and_ordered_actions(tmp_path: Path) -> None:
    """Conditions keep their written order; actions come out in the fixed order."""
    write(
        tmp_path,
        "10-full.toml",
        rule(
            "full",
            head='description = "everything"\nstop = true',
            when='subject = "(?i)vpn"\nis_new = true\nany = [ { sender = "*@example.com" } ]',
            then="\n".join(
                [
                    'forward = { address = "Oncall@Example.com", template = "team-forward" }',
                    'auto_reply = "acknowledge"',
                    'status = "open"',
                    'tags = ["vpn", "network", "vpn"]',
                    'priority = "urgent"',
                    'assignee = "ALICE@it.example.com"',
                    'team = "networking"',
                ]
            ),
        ),
    )
    (full,) = load(tmp_path)
    assert full.stop is True
    assert full.description == "everything"
    assert [item.key for item in full.when.items if isinstance(item, Condition)] == [
        "subject",
        "is_new",
    ]
    assert isinstance(full.when.items[2], AnyOf)
    assert full.actions == (
        SetTeam("networking"),
        SetAssignee("alice@it.example.com"),
        SetPriority(Priority.URGENT),
        AddTags(("vpn", "network")),
        SetStatus(TicketStatus.OPEN),
        AutoReply("acknowledge"),
        Forward("team-forward", address="oncall@example.com"),
    )


def test_a_rule_without_when_always_applies(tmp_path: Path) -> None:
    """No [rule.when] table is an empty condition group."""
    write(tmp_path, "10.toml", rule("always"))
    (always,) = load(tmp_path)
    assert always.when.items == ()
    assert always.stop is False


def test_every_condition_kind_is_registered() -> None:
    """The registry holds one predicate per documented `when` key."""
    assert set(CONDITIONS) == {
        "mailbox",
        "recipient",
        "sender",
        "sender_domain",
        "subject",
        "body",
        "subject_or_body",
        "header",
        "has_attachment",
        "is_new",
        "automated",
        "business_hours",
        "outside_business_hours",
    }
    assert all(kind.summary for kind in CONDITIONS.values())


# --- validation: one problem each -----------------------------------------------


BUSINESS = 'days = "mon-fri", from = "08:00", to = "18:00", timezone = "Europe/Berlin"'

CASES = [
    # (id, file text, key, words the problem must contain)
    ("top-level key", 'title = "x"\n' + rule(), "title", "unknown top-level key"),
    ("single [rule] table", '[rule]\nname = "x"\n', "rule", "write [[rule]], not [rule]"),
    ("rule not a table", "rule = [1]\n", "", "must be a table (got integer 1)"),
    ("unknown rule key", rule(head="stpo = true"), "stpo", "did you mean 'stop'?"),
    (
        "stop below [rule.then]",
        rule(then='team = "support"\nstop = true'),
        "then.stop",
        "`stop` belongs to the rule itself: write it after [[rule]], before [rule.when]",
    ),
    (
        "name not a string",
        "[[rule]]\nname = 3\n[rule.then]\nteam = 'support'\n",
        "name",
        "must be a non-empty string (got integer 3)",
    ),
    ("stop not a boolean", rule(head='stop = "yes"'), "stop", "must be true or false"),
    ("description not a string", rule(head="description = 1"), "description", "must be a string"),
    ("when not a table", rule(head='when = "always"'), "when", "must be a table of conditions"),
    ("unknown condition", rule(when='subjekt = "x"'), "when.subjekt", "did you mean 'subject'?"),
    (
        "bad regex",
        rule(when='subject = "(?i)vpn("'),
        "when.subject",
        "invalid regular expression '(?i)vpn(': missing ), unterminated subpattern at position 7",
    ),
    ("regex not a string", rule(when="body = 5"), "when.body", "must be a non-empty regular"),
    (
        "bool not a bool",
        rule(when='is_new = "true"'),
        "when.is_new",
        "must be true or false (got string 'true')",
    ),
    (
        "glob list with a number",
        rule(when='sender = ["*@x.org", 3]'),
        "when.sender[1]",
        "must be a non-empty string",
    ),
    (
        "empty glob list",
        rule(when="recipient = []"),
        "when.recipient",
        "must be a string or a non-empty array",
    ),
    (
        "domain with a glob",
        rule(when='sender_domain = "*.example.com"'),
        "when.sender_domain",
        "use `sender` for globs",
    ),
    (
        "header not a table",
        rule(when='header = "X-Priority"'),
        "when.header",
        "must be a table of header name to regex",
    ),
    (
        "header bad regex",
        rule(when='header = { "X-Priority" = "[1" }'),
        "when.header.X-Priority",
        "invalid regular expression",
    ),
    (
        "any not an array",
        rule(when='any = { subject = "x" }'),
        "when.any",
        "must be a non-empty array of condition tables",
    ),
    (
        "any empty group",
        rule(when='any = [ {}, { subject = "x" } ]'),
        "when.any[0]",
        "a group needs at least one condition",
    ),
    (
        "any nested bad key",
        rule(when='any = [ { subject = "x" }, { sendr = "y" } ]'),
        "when.any[1].sendr",
        "did you mean 'sender'?",
    ),
    (
        "hours not a table",
        rule(when='business_hours = "9-5"'),
        "when.business_hours",
        "must be a table like",
    ),
    (
        "hours bad days",
        rule(when="business_hours = { " + BUSINESS.replace("mon-fri", "mo-fr") + " }"),
        "when.business_hours.days",
        "must be days like mon-fri, mon,wed,fri or sat-sun",
    ),
    (
        "hours open range",
        rule(when="business_hours = { " + BUSINESS.replace("mon-fri", "mon-") + " }"),
        "when.business_hours.days",
        "must be days like",
    ),
    (
        "hours bad time",
        rule(when="business_hours = { " + BUSINESS.replace("08:00", "8am") + " }"),
        "when.business_hours.from",
        "must be a time like \"08:00\" (got string '8am')",
    ),
    (
        "hours out of range",
        rule(when="business_hours = { " + BUSINESS.replace("18:00", "25:00") + " }"),
        "when.business_hours.to",
        "must be a time from 00:00 to 23:59 or 24:00",
    ),
    (
        "hours 24:00 start",
        rule(when="business_hours = { " + BUSINESS.replace("08:00", "24:00") + " }"),
        "when.business_hours.from",
        "must be a time from 00:00 to 23:59",
    ),
    (
        "hours empty window",
        rule(when="outside_business_hours = { " + BUSINESS.replace("18:00", "08:00") + " }"),
        "when.outside_business_hours.to",
        "the window would be empty",
    ),
    (
        "hours unknown zone",
        rule(
            when="business_hours = { "
            + BUSINESS.replace("Europe/Berlin", "Europe/Springfield")
            + " }"
        ),
        "when.business_hours.timezone",
        "unknown time zone 'Europe/Springfield'",
    ),
    (
        "hours zone is a directory",
        rule(when="business_hours = { " + BUSINESS.replace("Europe/Berlin", "Europe") + " }"),
        "when.business_hours.timezone",
        "unknown time zone 'Europe'",
    ),
    (
        "hours malformed zone",
        rule(
            when="business_hours = { " + BUSINESS.replace("Europe/Berlin", "../etc/passwd") + " }"
        ),
        "when.business_hours.timezone",
        "unknown time zone",
    ),
    (
        "hours missing key",
        rule(when='business_hours = { days = "mon-fri", from = "08:00", to = "18:00" }'),
        "when.business_hours.timezone",
        "is required",
    ),
    (
        "hours unknown key",
        rule(when="business_hours = { " + BUSINESS + ", lunch = true }"),
        "when.business_hours.lunch",
        "unknown key; allowed: days, from, to, timezone",
    ),
    ("no then", rule(then=""), "then", "is required"),
    ("empty then", rule(then="") + "[rule.then]\n", "then", "needs at least one action"),
    (
        "then not a table",
        rule(then="", head='then = "support"'),
        "then",
        "must be a table of actions",
    ),
    (
        "unknown action",
        rule(then='team = "support"\nassign = "x@y.z"'),
        "then.assign",
        "did you mean 'assignee'?",
    ),
    (
        "unknown team",
        rule(then='team = "helpdesk"'),
        "then.team",
        "unknown team 'helpdesk'; known teams: identity-and-access, infrastructure, networking, "
        "security, support",
    ),
    (
        "unknown agent",
        rule(then='assignee = "carol@it.example.com"'),
        "then.assignee",
        "unknown agent 'carol@it.example.com'; known agents: alice@it.example.com, "
        "bob@it.example.com",
    ),
    (
        "assignee not an address",
        rule(then='assignee = "alice"'),
        "then.assignee",
        "must be an email address",
    ),
    (
        "bad priority",
        rule(then='priority = "highest"'),
        "then.priority",
        "must be one of low, normal, high, urgent (got 'highest')",
    ),
    (
        "bad status",
        rule(then='status = "waiting"'),
        "then.status",
        "must be one of new, open, pending, resolved, closed (got 'waiting')",
    ),
    (
        "bad tags",
        rule(then="tags = [1]"),
        "then.tags[0]",
        "must be a non-empty string (got integer 1)",
    ),
    (
        "unknown template",
        rule(then='auto_reply = "welcome"'),
        "then.auto_reply",
        "unknown template 'welcome'; known templates: acknowledge, agent-reply, password-reset",
    ),
    (
        "forward both",
        rule(then='forward = { team = "security", address = "a@b.c", template = "team-forward" }'),
        "then.forward",
        "needs exactly one of `team` or `address`",
    ),
    (
        "forward neither",
        rule(then='forward = { template = "team-forward" }'),
        "then.forward",
        "needs exactly one of `team` or `address`",
    ),
    (
        "forward unknown team",
        rule(then='forward = { team = "soc", template = "team-forward" }'),
        "then.forward.team",
        "unknown team 'soc'",
    ),
    (
        "forward bad address",
        rule(then='forward = { address = "soc", template = "team-forward" }'),
        "then.forward.address",
        "must be an email address",
    ),
    (
        "forward no template",
        rule(then='forward = { team = "security" }'),
        "then.forward.template",
        "is required",
    ),
    (
        "forward unknown template",
        rule(then='forward = { team = "security", template = "x" }'),
        "then.forward.template",
        "unknown template 'x'",
    ),
    (
        "forward unknown key",
        rule(then='forward = { team = "security", template = "team-forward", cc = "x@y.z" }'),
        "then.forward.cc",
        "unknown key",
    ),
    (
        "forward not a table",
        rule(then='forward = "security"'),
        "then.forward",
        "must be a table like",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "words"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_each_problem_names_the_key_and_what_is_allowed(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    """Every kind of mistake is one problem on the dotted key, saying what is wrong."""
    path = write(tmp_path, "10-x.toml", text)
    problem = only_problem(tmp_path)
    assert problem.path == path
    assert problem.key == key
    assert words in problem.problem


def test_assignee_is_any_address_when_no_agents_are_configured(tmp_path: Path) -> None:
    """Without configured agents an assignee only has to be an email address."""
    write(tmp_path, "10.toml", rule(then='assignee = "Carol@IT.example.com"'))
    (only,) = load(tmp_path, agents=set())
    assert only.actions == (SetAssignee("carol@it.example.com"),)


def test_unnamed_rules_are_named_by_position(tmp_path: Path) -> None:
    """A rule without a usable name is `rule[N]`, counting [[rule]] tables from 1."""
    write(tmp_path, "10.toml", rule("first") + rule(name="") + rule(name="", then='team = "x"'))
    problems = problems_of(tmp_path)
    assert [(p.rule, p.key) for p in problems] == [
        ("rule[2]", "name"),
        ("rule[3]", "name"),
        ("rule[3]", "then.team"),
    ]
    assert problems[0].problem == "is required"


def test_problem_text_is_path_rule_key_problem(tmp_path: Path) -> None:
    """str() of a problem and of the error is `path: rule "name": key: problem`, one per line."""
    path = write(tmp_path, "10-x.toml", rule("vpn", then='team = "net"\npriority = "max"'))
    with pytest.raises(RuleError) as caught:
        load(tmp_path)
    assert isinstance(caught.value, HelpdeskError)
    assert str(caught.value).splitlines() == [
        f"{path}: rule \"vpn\": then.team: unknown team 'net'; known teams: "
        "identity-and-access, infrastructure, networking, security, support",
        f'{path}: rule "vpn": then.priority: must be one of low, normal, high, urgent '
        "(got 'max')",
    ]


def test_toml_syntax_errors_name_line_and_column(tmp_path: Path) -> None:
    """A file that is not TOML is one problem carrying tomllib's position."""
    path = write(tmp_path, "10-x.toml", '[[rule]]\nname = "x"\nteam support\n')
    problem = only_problem(tmp_path)
    assert problem.path == path
    assert problem.rule is None
    assert problem.problem.startswith("invalid TOML: ")
    assert "(at line 3, column 6)" in problem.problem


def test_non_utf8_files_are_a_problem(tmp_path: Path) -> None:
    """TOML is UTF-8: a Latin-1 file is reported rather than misread."""
    path = tmp_path / "10-x.toml"
    path.write_bytes(rule(when='subject = "Passwort zurücksetzen"').encode("latin-1"))
    problem = only_problem(tmp_path)
    assert problem.problem.startswith("is not UTF-8")


def test_duplicate_names_name_both_files(tmp_path: Path) -> None:
    """A name defined twice is reported in the second file, pointing at the first."""
    first = write(tmp_path, "10-a.toml", rule("vpn"))
    second = write(tmp_path, "20-b.toml", rule("vpn"))
    problem = only_problem(tmp_path)
    assert problem.path == second
    assert problem.key == "name"
    assert problem.problem == f"duplicate rule name; already defined in {first}"


def test_duplicate_names_in_one_file(tmp_path: Path) -> None:
    """A name used twice in the same file says so."""
    write(tmp_path, "10-a.toml", rule("vpn") + rule("vpn"))
    problem = only_problem(tmp_path)
    assert problem.problem == "duplicate rule name; already defined earlier in this file"


def test_all_problems_across_files_are_collected(tmp_path: Path) -> None:
    """One RuleError lists every problem of every file, in file order, each with its file."""
    write(tmp_path, "10-net.toml", rule("vpn", when='subject = "("', then='team = "net"'))
    write(tmp_path, "20-broken.toml", "[[rule\n")
    write(tmp_path, "30-ack.toml", rule("vpn", then='auto_reply = "ack"') + rule("ok"))
    problems = problems_of(tmp_path)
    assert [(p.path.name, p.rule, p.key) for p in problems] == [
        ("10-net.toml", 'rule "vpn"', "when.subject"),
        ("10-net.toml", 'rule "vpn"', "then.team"),
        ("20-broken.toml", None, ""),
        ("30-ack.toml", 'rule "vpn"', "name"),
        ("30-ack.toml", 'rule "vpn"', "then.auto_reply"),
    ]
    text = str(RuleError(problems))
    assert len(text.splitlines()) == 5
    assert "10-net.toml" in text
    assert "30-ack.toml" in text
