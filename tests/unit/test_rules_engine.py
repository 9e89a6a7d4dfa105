"""Rule evaluation: every condition with its reason, the interpreter, and the shipped rules."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helpdesk.mail.parse import parse
from helpdesk.rules import (
    CONDITIONS,
    Condition,
    Facts,
    KnownNames,
    RuleSet,
    build_rule_set,
    evaluate,
    load_rules,
)
from helpdesk.rules.conditions import REGEX_TIMED_OUT, RegexBudget, regex_timed_out
from helpdesk.values import (
    Action,
    Address,
    AddTags,
    AttachmentPart,
    AutoReply,
    Evaluation,
    Forward,
    MailClass,
    ParsedMessage,
    Priority,
    RuleInput,
    RuleTrace,
    SetPriority,
    SetStatus,
    SetTeam,
    TicketStatus,
    TicketView,
    Verdict,
)
from tests.mailfactory import make_mail

ROOT = Path(__file__).resolve().parents[2]
TEAMS = {"support", "networking", "infrastructure", "identity-and-access", "security"}
TEMPLATES = {"acknowledge", "password-reset", "team-forward", "agent-reply", "resolved"}
KNOWN = KnownNames.of(teams=TEAMS, agents=(), templates=TEMPLATES)

# Monday 10 June 2024, 12:00 in Berlin (CEST, UTC+2).
MONDAY_NOON = datetime(2024, 6, 10, 10, 0, tzinfo=UTC)
REPLY = RuleInput(is_new=False)
HUMAN = Verdict(MailClass.HUMAN)
OUT_OF_OFFICE = Verdict(MailClass.AUTO_REPLY, ("Auto-Submitted: auto-replied",))


def rules(text: str) -> RuleSet:
    """A rule set from TOML text, as if it were the file 10-test.toml."""
    return build_rule_set([(Path("rules/10-test.toml"), tomllib.loads(text))], KNOWN)


def message(
    subject: str = "Printer on 3rd floor is jammed",
    sender: str | None = "dana@example.com",
    text: str = "The printer shows error E-104.",
    new_text: str | None = None,
    **fields: Any,
) -> ParsedMessage:
    return ParsedMessage(
        message_id="req-1@mail.example.com",
        message_id_synthetic=False,
        subject=subject,
        from_=Address(sender) if sender else None,
        to=fields.pop("to", (Address("support@example.com"),)),
        text=text,
        new_text=text if new_text is None else new_text,
        **fields,
    )


def trace_of(
    when: str,
    msg: ParsedMessage | None = None,
    rule_input: RuleInput | None = None,
    *,
    now: datetime = MONDAY_NOON,
    ticket: TicketView | None = None,
) -> RuleTrace:
    """The trace of a single rule with `when` as its conditions."""
    rule_set = rules(f'[[rule]]\nname = "r"\n[rule.when]\n{when}\n[rule.then]\ntags = ["hit"]\n')
    evaluation = evaluate(rule_set, msg or message(), ticket, rule_input or RuleInput(), now=now)
    (trace,) = evaluation.trace
    assert trace.actions == ((AddTags(("hit",)),) if trace.matched else ())
    return trace


# --- each condition kind, both ways, with its reason ---------------------------------

ATTACHMENT = AttachmentPart("report.pdf", "application/pdf", b"%PDF", "0" * 64)
LOGO = AttachmentPart("image001.png", "image/png", b"\x89PNG", "1" * 64, inline=True)

CONDITION_CASES: list[tuple[str, str, ParsedMessage, RuleInput, bool, str]] = [
    (
        "subject matches",
        "subject = '(?i)password'",
        message("Password reset please"),
        RuleInput(),
        True,
        "subject matches (?i)password: 'Password reset please'",
    ),
    (
        "subject ignores case by default",
        "subject = 'password'",
        message("Password reset please"),
        RuleInput(),
        True,
        "subject matches password: 'Password reset please'",
    ),
    (
        "long subject is cut",
        "subject = 'x{3}'",
        message("y" * 100),
        RuleInput(),
        False,
        "subject does not match x{3}: '" + "y" * 79 + "…'",
    ),
    (
        "body matches the new text",
        "body = '(?i)vpn'",
        message(text="Hi,\nthe VPN drops.\n> old printer mail", new_text="Hi,\nthe VPN drops."),
        RuleInput(),
        True,
        "body matches (?i)vpn: 'Hi, the VPN drops.'",
    ),
    (
        "body ignores quoted history",
        "body = '(?i)password'",
        message(text="Thanks!\n> I forgot my password", new_text="Thanks!"),
        RuleInput(),
        False,
        "body does not match (?i)password",
    ),
    (
        "body falls back to the full text",
        "body = '(?i)reset'",
        message(text="Please reset it", new_text=""),
        RuleInput(),
        True,
        "body matches (?i)reset: 'Please reset it'",
    ),
    (
        "body excerpt of a long text",
        "body = 'VPN'",
        message(text="a" * 60 + " the VPN is down " + "b" * 60),
        RuleInput(),
        True,
        "body matches VPN: '…" + "a" * 20 + " the VPN is down " + "b" * 16 + "…'",
    ),
    (
        "subject_or_body via body",
        "subject_or_body = '(?i)wi-?fi'",
        message("Help", text="The WiFi is slow"),
        RuleInput(),
        True,
        "body matches (?i)wi-?fi: 'The WiFi is slow'",
    ),
    (
        "subject_or_body neither",
        "subject_or_body = '(?i)wi-?fi'",
        message("Help"),
        RuleInput(),
        False,
        "neither subject nor body matches (?i)wi-?fi: 'Help'",
    ),
    (
        "sender glob",
        'sender = ["ceo@example.com", "*@EXAMPLE.com"]',
        message(),
        RuleInput(),
        True,
        "sender dana@example.com matches *@example.com",
    ),
    (
        "sender no glob",
        'sender = ["*@example.org", "ceo@example.com"]',
        message(),
        RuleInput(),
        False,
        "sender dana@example.com matches none of *@example.org, ceo@example.com",
    ),
    (
        "sender missing",
        'sender = "*"',
        message(sender=None),
        RuleInput(),
        False,
        "no sender address",
    ),
    (
        "sender domain and subdomains",
        'sender_domain = "example.com"',
        message(sender="dana@mail.example.com"),
        RuleInput(),
        True,
        "sender domain mail.example.com is within example.com",
    ),
    (
        "sender domain look-alike",
        'sender_domain = ["@example.com"]',
        message(sender="dana@badexample.com"),
        RuleInput(),
        False,
        "sender domain badexample.com is not within example.com",
    ),
    (
        "recipient from the envelope",
        'recipient = "support+hr@*"',
        message(),
        RuleInput(recipients=("Support+HR@example.com",)),
        True,
        "recipient support+hr@example.com matches support+hr@*",
    ),
    (
        "recipient from To and Cc",
        'recipient = ["security@*"]',
        message(cc=(Address("security@example.com"),)),
        RuleInput(),
        True,
        "recipient security@example.com matches security@*",
    ),
    (
        "recipient none match",
        'recipient = "security@*"',
        message(),
        RuleInput(),
        False,
        "no recipient (support@example.com) matches security@*",
    ),
    (
        "recipient none known",
        'recipient = "security@*"',
        message(to=()),
        RuleInput(),
        False,
        "no recipients known",
    ),
    (
        "mailbox listed",
        'mailbox = ["it-inbox", "hr-inbox"]',
        message(),
        RuleInput(mailbox="it-inbox"),
        True,
        "mailbox it-inbox is one of it-inbox, hr-inbox",
    ),
    (
        "mailbox other",
        'mailbox = "it-inbox"',
        message(),
        RuleInput(mailbox="sales"),
        False,
        "mailbox sales is not one of it-inbox",
    ),
    (
        "mailbox unknown",
        'mailbox = "it-inbox"',
        message(),
        RuleInput(),
        False,
        "mail did not come from a configured mailbox",
    ),
    (
        "header matches, any value",
        "header = { \"x-priority\" = '^1' }",
        message(headers=(("X-Priority", "3"), ("X-Priority", "1 (Highest)"))),
        RuleInput(),
        True,
        "header x-priority '1 (Highest)' matches ^1",
    ),
    (
        "header missing",
        "header = { \"X-Priority\" = '^1' }",
        message(),
        RuleInput(),
        False,
        "no X-Priority header",
    ),
    (
        "header mismatch",
        "header = { \"X-Priority\" = '^1' }",
        message(headers=(("X-Priority", "3 (Normal)"),)),
        RuleInput(),
        False,
        "header X-Priority '3 (Normal)' does not match ^1",
    ),
    (
        "header all names must hold",
        "header = { \"X-Priority\" = '^1', Importance = 'high' }",
        message(headers=(("X-Priority", "1"),)),
        RuleInput(),
        False,
        "no Importance header",
    ),
    (
        "has an attachment",
        "has_attachment = true",
        message(attachments=(ATTACHMENT, LOGO)),
        RuleInput(),
        True,
        "has 1 attachment(s): 'report.pdf'",
    ),
    (
        "inline images do not count",
        "has_attachment = true",
        message(attachments=(LOGO,)),
        RuleInput(),
        False,
        "has no attachments",
    ),
    (
        "has no attachment wanted",
        "has_attachment = false",
        message(),
        RuleInput(),
        True,
        "has no attachments",
    ),
    ("new ticket", "is_new = true", message(), RuleInput(), True, "a new ticket"),
    ("reply is not new", "is_new = true", message(), REPLY, False, "not a new ticket: a reply"),
    ("reply wanted", "is_new = false", message(), REPLY, True, "not a new ticket: a reply"),
    (
        "human is not automated",
        "automated = false",
        message(),
        RuleInput(),
        True,
        "not automated: human",
    ),
    (
        "out-of-office is automated",
        "automated = false",
        message(),
        RuleInput(verdict=OUT_OF_OFFICE),
        False,
        "automated: auto_reply (Auto-Submitted: auto-replied)",
    ),
    (
        "bounce wanted",
        "automated = true",
        message(),
        RuleInput(verdict=Verdict(MailClass.BOUNCE)),
        True,
        "automated: bounce",
    ),
]


@pytest.mark.parametrize(
    ("when", "msg", "rule_input", "matched", "reason"),
    [case[1:] for case in CONDITION_CASES],
    ids=[case[0] for case in CONDITION_CASES],
)
def test_condition_holds_or_not_with_its_reason(
    when: str, msg: ParsedMessage, rule_input: RuleInput, matched: bool, reason: str
) -> None:
    """Every condition kind says whether it held and why, in one short line."""
    trace = trace_of(when, msg, rule_input)
    assert (trace.matched, trace.reasons) == (matched, (reason,))


def test_a_reply_names_its_ticket() -> None:
    """When the ticket is known, the is_new reason names it."""
    ticket = TicketView(id=7, status=TicketStatus.OPEN)
    trace = trace_of("is_new = true", rule_input=REPLY, ticket=ticket)
    assert trace.reasons == ("not a new ticket: a reply on ticket #7",)


# --- business hours ------------------------------------------------------------------

BERLIN = 'days = "mon-fri", from = "08:00", to = "18:00", timezone = "Europe/Berlin"'

HOURS_CASES = [
    # (id, window, now in UTC, inside, reason)
    (
        "summer morning inside",
        BERLIN,
        datetime(2024, 6, 10, 6, 30, tzinfo=UTC),
        True,
        "Mon 2024-06-10 08:30 Europe/Berlin is within mon-fri 08:00-18:00",
    ),
    (
        "summer early outside",
        BERLIN,
        datetime(2024, 6, 10, 5, 30, tzinfo=UTC),
        False,
        "Mon 2024-06-10 07:30 Europe/Berlin is outside mon-fri 08:00-18:00",
    ),
    (
        "winter time shifts by an hour",
        BERLIN,
        datetime(2024, 1, 15, 7, 30, tzinfo=UTC),
        True,
        "Mon 2024-01-15 08:30 Europe/Berlin is within mon-fri 08:00-18:00",
    ),
    (
        "the end is exclusive",
        BERLIN,
        datetime(2024, 6, 10, 16, 0, tzinfo=UTC),
        False,
        "Mon 2024-06-10 18:00 Europe/Berlin is outside mon-fri 08:00-18:00",
    ),
    (
        "sunday is not mon-fri",
        BERLIN,
        datetime(2024, 6, 9, 10, 0, tzinfo=UTC),
        False,
        "Sun 2024-06-09 12:00 Europe/Berlin is outside mon-fri 08:00-18:00",
    ),
    (
        "monday in tokyo",
        'days = "mon-fri", from = "09:00", to = "17:00", timezone = "Asia/Tokyo"',
        datetime(2024, 6, 10, 1, 0, tzinfo=UTC),
        True,
        "Mon 2024-06-10 10:00 Asia/Tokyo is within mon-fri 09:00-17:00",
    ),
    (
        "same instant is sunday in new york",
        'days = "mon-fri", from = "09:00", to = "17:00", timezone = "America/New_York"',
        datetime(2024, 6, 10, 1, 0, tzinfo=UTC),
        False,
        "Sun 2024-06-09 21:00 America/New_York is outside mon-fri 09:00-17:00",
    ),
    (
        "weekend range includes sunday",
        'days = "sat-sun", from = "10:00", to = "16:00", timezone = "Europe/Berlin"',
        datetime(2024, 6, 9, 10, 0, tzinfo=UTC),
        True,
        "Sun 2024-06-09 12:00 Europe/Berlin is within sat-sun 10:00-16:00",
    ),
    (
        "day list skips tuesday",
        'days = "mon,wed,fri", from = "08:00", to = "18:00", timezone = "Europe/Berlin"',
        datetime(2024, 6, 11, 10, 0, tzinfo=UTC),
        False,
        "Tue 2024-06-11 12:00 Europe/Berlin is outside mon,wed,fri 08:00-18:00",
    ),
    (
        "wrapping range covers sunday",
        'days = "Fri-Mon", from = "00:00", to = "24:00", timezone = "UTC"',
        datetime(2024, 6, 9, 23, 59, tzinfo=UTC),
        True,
        "Sun 2024-06-09 23:59 UTC is within Fri-Mon 00:00-24:00",
    ),
    (
        "night window belongs to the day it starts",
        'days = "fri", from = "22:00", to = "06:00", timezone = "Europe/Berlin"',
        datetime(2024, 6, 8, 1, 0, tzinfo=UTC),
        True,
        "Sat 2024-06-08 03:00 Europe/Berlin is within fri 22:00-06:00",
    ),
    (
        "night window of thursday is not friday's",
        'days = "fri", from = "22:00", to = "06:00", timezone = "Europe/Berlin"',
        datetime(2024, 6, 7, 1, 0, tzinfo=UTC),
        False,
        "Fri 2024-06-07 03:00 Europe/Berlin is outside fri 22:00-06:00",
    ),
]


@pytest.mark.parametrize(
    ("window", "now", "inside", "reason"),
    [case[1:] for case in HOURS_CASES],
    ids=[case[0] for case in HOURS_CASES],
)
def test_business_hours_in_the_window_time_zone(
    window: str, now: datetime, inside: bool, reason: str
) -> None:
    """`now` is converted to the window's zone; days, ranges, DST and midnight all count."""
    within = trace_of(f"business_hours = {{ {window} }}", now=now)
    outside = trace_of(f"outside_business_hours = {{ {window} }}", now=now)
    assert (within.matched, within.reasons) == (inside, (reason,))
    assert (outside.matched, outside.reasons) == (not inside, (reason,))


def test_now_must_be_timezone_aware() -> None:
    """A naive clock is a caller bug, refused before any rule runs."""
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(RuleSet(), message(), None, RuleInput(), now=datetime(2024, 6, 10, 12, 0))  # noqa: DTZ001


# --- the interpreter ------------------------------------------------------------------


def test_no_rules_no_actions() -> None:
    """An empty rule set evaluates to nothing."""
    assert evaluate(RuleSet(), message(), None, RuleInput(), now=MONDAY_NOON) == Evaluation()


def test_a_rule_without_conditions_always_matches() -> None:
    """No `when` matches every mail, and the trace says so."""
    evaluation = evaluate(
        rules('[[rule]]\nname = "all"\n[rule.then]\npriority = "low"\n'),
        message(),
        None,
        RuleInput(),
        now=MONDAY_NOON,
    )
    assert evaluation.trace == (
        RuleTrace(
            "all",
            "10-test.toml",
            matched=True,
            reasons=("no conditions: always matches",),
            actions=(SetPriority(Priority.LOW),),
        ),
    )


def test_a_match_gives_every_reason_in_written_order() -> None:
    """All conditions of a matching rule are in its trace, in the order written."""
    trace = trace_of("is_new = true\nsender = '*@example.com'\nsubject = 'Printer'")
    assert trace.reasons == (
        "a new ticket",
        "sender dana@example.com matches *@example.com",
        "subject matches Printer: 'Printer on 3rd floor is jammed'",
    )


def test_a_miss_gives_the_first_failing_condition_only() -> None:
    """Evaluation of a rule stops at the first condition that fails, and the trace names it."""
    trace = trace_of("subject = 'Printer'\nis_new = true\nsender = 'nobody@*'", rule_input=REPLY)
    assert (trace.matched, trace.reasons, trace.actions) == (
        False,
        ("not a new ticket: a reply",),
        (),
    )


def test_any_holds_when_one_group_does() -> None:
    """The first group that holds decides, with all of its reasons."""
    trace = trace_of(
        "any = [ { subject = 'VPN' }, { sender_domain = 'example.com', is_new = true } ]"
    )
    assert trace.matched
    assert trace.reasons == (
        "any: sender domain example.com is within example.com and a new ticket",
    )


def test_any_fails_with_every_group_reason() -> None:
    """When no group holds, the reason says why each one failed."""
    trace = trace_of("any = [ { subject = 'VPN' }, { sender_domain = 'example.org' } ]")
    assert not trace.matched
    assert trace.reasons == (
        "none of 2 `any` groups holds: subject does not match VPN: "
        "'Printer on 3rd floor is jammed'; sender domain example.com is not within example.org",
    )


def test_any_is_anded_with_the_other_conditions() -> None:
    """An `any` is one condition among the others of its rule."""
    trace = trace_of("any = [ { subject = 'Printer' } ]\nis_new = true", rule_input=REPLY)
    assert trace.reasons == ("not a new ticket: a reply",)


STOP_RULES = """
[[rule]]
name = "first"
[rule.then]
tags = ["one"]

[[rule]]
name = "never"
stop = true
[rule.when]
subject = "no such subject"
[rule.then]
team = "security"

[[rule]]
name = "stopper"
stop = true
[rule.then]
status = "pending"
team = "identity-and-access"

[[rule]]
name = "after"
[rule.then]
auto_reply = "acknowledge"
"""


def test_stop_ends_evaluation_and_is_marked_in_the_trace() -> None:
    """After a matching `stop` rule nothing else is looked at; a non-matching one stops nothing."""
    evaluation = evaluate(rules(STOP_RULES), message(), None, RuleInput(), now=MONDAY_NOON)
    assert [(t.rule, t.matched, t.stopped) for t in evaluation.trace] == [
        ("first", True, False),
        ("never", False, False),
        ("stopper", True, True),
    ]
    assert evaluation.fired == ("first", "stopper")
    assert evaluation.actions == (
        AddTags(("one",)),
        SetTeam("identity-and-access"),
        SetStatus(TicketStatus.PENDING),
    )


def test_actions_accumulate_in_rule_order() -> None:
    """Each matching rule appends its actions; later rules come later."""
    text = """
[[rule]]
name = "a"
[rule.then]
priority = "high"
team = "support"

[[rule]]
name = "b"
[rule.then]
forward = { team = "security", template = "team-forward" }
team = "networking"
tags = "b"
"""
    evaluation = evaluate(rules(text), message(), None, RuleInput(), now=MONDAY_NOON)
    assert evaluation.actions == (
        SetTeam("support"),
        SetPriority(Priority.HIGH),
        SetTeam("networking"),
        AddTags(("b",)),
        Forward("team-forward", team="security"),
    )
    assert [t.file for t in evaluation.trace] == ["10-test.toml", "10-test.toml"]


# --- the shipped example rules on realistic mail --------------------------------------


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return load_rules(ROOT / "rules", teams=TEAMS, agents=set(), templates=TEMPLATES)


def route(
    rule_set: RuleSet,
    msg: ParsedMessage,
    *,
    is_new: bool = True,
    verdict: Verdict = HUMAN,
    now: datetime = MONDAY_NOON,
) -> Evaluation:
    rule_input = RuleInput(mailbox="it-inbox", is_new=is_new, verdict=verdict)
    return evaluate(rule_set, msg, None, rule_input, now=now)


def team(actions: tuple[Action, ...]) -> str | None:
    """The team the ticket ends up with: the last SetTeam wins."""
    teams = [action.team for action in actions if isinstance(action, SetTeam)]
    return teams[-1] if teams else None


def priority(actions: tuple[Action, ...]) -> Priority | None:
    priorities = [action.priority for action in actions if isinstance(action, SetPriority)]
    return priorities[-1] if priorities else None


def tags(actions: tuple[Action, ...]) -> set[str]:
    return {tag for action in actions if isinstance(action, AddTags) for tag in action.tags}


def replies(actions: tuple[Action, ...]) -> list[str]:
    return [action.template for action in actions if isinstance(action, AutoReply)]


def test_password_reset_gets_instructions_instead_of_acknowledgement(shipped: RuleSet) -> None:
    """A reset request is answered with the self-service template, pending, for IAM."""
    msg = message(
        "Password reset please",
        text="Hi,\n\nI forgot my password and cannot log in to my laptop.\n\nDana",
    )
    evaluation = route(shipped, msg)
    assert AutoReply("password-reset") in evaluation.actions
    assert SetStatus(TicketStatus.PENDING) in evaluation.actions
    assert SetTeam("identity-and-access") in evaluation.actions
    assert replies(evaluation.actions) == ["password-reset"]
    assert evaluation.fired == ("password-reset",)
    assert evaluation.trace[-1].stopped


def test_german_password_reset_is_recognised(shipped: RuleSet) -> None:
    """ "Passwort vergessen" routes like its English counterpart."""
    msg = message("Passwort vergessen", text="Hallo, ich habe mein Passwort vergessen.")
    evaluation = route(shipped, msg)
    assert evaluation.fired == ("password-reset",)
    assert team(evaluation.actions) == "identity-and-access"


def test_vpn_complaint_goes_to_networking_and_is_acknowledged(shipped: RuleSet) -> None:
    """A VPN problem, parsed from a real mail, lands with networking and gets an acknowledgement."""
    raw = make_mail(
        subject="VPN keeps disconnecting",
        body="Hi,\n\nsince this morning I can't connect to the VPN from home.\n\nDana\n",
    )
    evaluation = route(shipped, parse(raw))
    assert team(evaluation.actions) == "networking"
    assert replies(evaluation.actions) == ["acknowledge"]
    assert "network" in tags(evaluation.actions)
    assert "password-reset" not in evaluation.fired


def test_phishing_report_is_forwarded_to_security(shipped: RuleSet) -> None:
    """A phishing report is forwarded and never gets the password instructions it talks about."""
    msg = message(
        "Suspicious email asking me to reset my password",
        text="I got this phishing mail telling me to reset my password via a link. "
        "I did not click it.",
    )
    evaluation = route(shipped, msg)
    assert Forward("team-forward", team="security") in evaluation.actions
    assert team(evaluation.actions) == "security"
    assert "security" in tags(evaluation.actions)
    assert priority(evaluation.actions) is Priority.HIGH
    assert replies(evaluation.actions) == ["acknowledge"]
    assert evaluation.fired == ("security-report",)


def test_mail_to_the_security_alias_is_a_report(shipped: RuleSet) -> None:
    """Whatever it says, mail sent to security@ goes to the security team."""
    msg = message("Weird pop-up", to=(Address("security@example.com"),))
    assert team(route(shipped, msg).actions) == "security"


def test_out_of_office_gets_no_auto_reply(shipped: RuleSet) -> None:
    """An automated out-of-office opening a ticket is not answered, and its "urgent" is ignored."""
    msg = parse((ROOT / "tests/messages/ooo/exchange.eml").read_bytes())
    evaluation = route(shipped, msg, verdict=OUT_OF_OFFICE)
    assert replies(evaluation.actions) == []
    assert priority(evaluation.actions) is None
    assert "acknowledge" not in evaluation.fired


def test_quoted_history_does_not_route(shipped: RuleSet) -> None:
    """Only the new text counts: a quoted "I forgot my password" is not a reset request."""
    raw = make_mail(
        subject="Printer on 3rd floor",
        body="The printer jams again, same error.\n\n"
        "On Mon, 2 Mar 2026 at 09:00, Dana Reyes <dana.reyes@example.com> wrote:\n"
        "> I forgot my password and cannot log in.\n",
    )
    evaluation = route(shipped, parse(raw))
    assert "password-reset" not in evaluation.fired
    assert team(evaluation.actions) == "support"
    assert replies(evaluation.actions) == ["acknowledge"]


def test_device_and_network_tags_add_up_and_network_wins(shipped: RuleSet) -> None:
    """A laptop that cannot join the Wi-Fi is tagged both ways and routed to networking."""
    msg = message("Laptop can't connect to Wi-Fi", text="My laptop does not see the office WLAN.")
    evaluation = route(shipped, msg)
    assert {"hardware", "network"} <= tags(evaluation.actions)
    assert team(evaluation.actions) == "networking"


def test_access_request_goes_to_identity_and_access(shipped: RuleSet) -> None:
    """Asking for a shared folder, in German, is an access request."""
    msg = message("Zugriff auf Laufwerk", text="Bitte um Zugriff auf den Ordner Finanzen.")
    evaluation = route(shipped, msg)
    assert team(evaluation.actions) == "identity-and-access"
    assert "access" in tags(evaluation.actions)


def test_onboarding_is_one_support_ticket(shipped: RuleSet) -> None:
    """A new starter's checklist names hardware and access, and support coordinates it."""
    msg = message(
        "New starter on Monday",
        text="Our new hire needs a laptop, a monitor and access to the shared drive.",
    )
    evaluation = route(shipped, msg)
    assert team(evaluation.actions) == "support"
    assert {"hardware", "access", "onboarding"} <= tags(evaluation.actions)


def test_outage_is_urgent_and_paged_after_hours(shipped: RuleSet) -> None:
    """ "Production down" is urgent; on a Saturday night infrastructure's address gets it too."""
    msg = message("URGENT: production down", text="The ERP server is down for everyone.")
    saturday_night = datetime(2024, 6, 8, 21, 0, tzinfo=UTC)
    night = route(shipped, msg, now=saturday_night)
    day = route(shipped, msg)
    assert priority(night.actions) is Priority.URGENT
    assert Forward("team-forward", team="infrastructure") in night.actions
    assert Forward("team-forward", team="infrastructure") not in day.actions
    assert priority(day.actions) is Priority.URGENT


def test_replies_are_not_rerouted_or_acknowledged(shipped: RuleSet) -> None:
    """A reply saying "VPN still down, urgent" changes nothing an agent has set."""
    msg = message("Re: [#12] VPN", text="The VPN is still down, urgent please!")
    evaluation = route(shipped, msg, is_new=False)
    assert evaluation.actions == ()
    assert evaluation.fired == ()
    assert len(evaluation.trace) == len(shipped)


def test_long_verbose_patterns_are_shortened_in_reasons() -> None:
    """A multi-line (?x) regex appears collapsed and cut, so every reason stays one line."""
    pattern = "(?x)\n    Printer\n  | " + "s" * 80 + "\n"
    trace = trace_of(f"subject = '''{pattern}'''")
    (reason,) = trace.reasons
    assert trace.matched
    assert reason == (
        "subject matches (?x) Printer | " + "s" * 44 + "…: 'Printer on 3rd floor is jammed'"
    )


# --- admin regexes run with a time bound ------------------------------------------

# Backtracks exponentially on a run of x without a y: unbounded, this search never ends.
CATASTROPHIC = "'(x+x+)+y'"


def test_a_regex_that_runs_out_of_time_does_not_match_and_later_rules_run() -> None:
    """The timed-out rule fails with a reason saying so; the next rule is still evaluated."""
    rule_set = rules(
        f'[[rule]]\nname = "slow"\n[rule.when]\nbody = {CATASTROPHIC}\n'
        '[rule.then]\ntags = ["slow"]\n'
        '[[rule]]\nname = "printer"\n[rule.when]\nsubject = "printer"\n'
        '[rule.then]\ntags = ["printer"]\n'
    )
    msg = message(text="x" * 3000)
    evaluation = evaluate(rule_set, msg, None, RuleInput(), now=MONDAY_NOON)
    slow, printer = evaluation.trace
    assert not slow.matched
    (reason,) = slow.reasons
    assert reason.startswith(f"{REGEX_TIMED_OUT}: body against (x+x+)+y")
    assert reason.endswith("not matched")
    assert regex_timed_out(slow.reasons)
    assert printer.matched
    assert evaluation.actions == (AddTags(("printer",)),)


@pytest.mark.parametrize(
    ("key", "value", "where"),
    [
        ("subject", "'printer'", "subject"),
        ("body", "'E-104'", "body"),
        ("subject_or_body", "'printer'", "subject"),
        ("header", "{ X-Priority = '^1' }", "header X-Priority"),
    ],
)
def test_no_time_left_for_the_mail_means_no_match(key: str, value: str, where: str) -> None:
    """Once the mail's regex budget is spent, every regex condition fails and says why."""
    (rule,) = rules(f'[[rule]]\nname = "r"\n[rule.when]\n{key} = {value}\n'
                    '[rule.then]\ntags = ["t"]\n')
    (condition,) = rule.when.items
    assert isinstance(condition, Condition)
    msg = message(headers=(("X-Priority", "1 (Highest)"),))
    spent = Facts(msg, None, RuleInput(), MONDAY_NOON, RegexBudget(0.0))
    held, reason = CONDITIONS[key].check(condition.value, spent)
    assert (held, reason.split(" against ")[0]) == (False, f"{REGEX_TIMED_OUT}: {where}")
    fresh = Facts(msg, None, RuleInput(), MONDAY_NOON)
    assert CONDITIONS[key].check(condition.value, fresh)[0] is True


def test_patterns_show_as_written() -> None:
    """A compiled admin regex prints as the pattern the admin wrote (rules list, reasons)."""
    (rule,) = rules('[[rule]]\nname = "r"\n[rule.when]\nsubject = \'(?i)\\bvpn\\b\'\n'
                    '[rule.then]\ntags = ["t"]\n')
    (condition,) = rule.when.items
    assert isinstance(condition, Condition)
    assert str(condition.value) == r"(?i)\bvpn\b"
