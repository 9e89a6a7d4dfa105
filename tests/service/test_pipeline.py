"""Ingest with the shipped rules and templates: routing, auto-replies, forwards, loop protection."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from helpdesk.context import BUILTIN_TEMPLATES
from helpdesk.delivery.outbox import Signer
from helpdesk.desk import directory, tickets
from helpdesk.desk.actions import LIMIT_NOTICE, ActionContext
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.mail.compose import make_message_id, ticket_from_message_id
from helpdesk.rules import load_rules
from helpdesk.store.models import Message, OutboxItem, Suppression, Ticket
from helpdesk.templates import load_templates
from helpdesk.thread import ThreadPolicy
from helpdesk.values import MailClass, Origin, OutcomeKind
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = "support@example.com"
TEAMS = {
    "support": "it-support@example.com",
    "networking": "network-team@example.com",
    "infrastructure": "infra@example.com",
    "identity-and-access": "iam@example.com",
    "security": "security@example.com",
}
KEY = b"test-signing-key"


class TeamSpec:
    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address


def make_ctx(clock: Clock, templates_dir: Path = ROOT / "templates", limit: int = 10
             ) -> IngestContext:
    templates = load_templates(templates_dir)
    rules = load_rules(ROOT / "rules", teams=set(TEAMS), agents=set(),
                       templates=templates.names | BUILTIN_TEMPLATES)
    signer = Signer(domain="example.com", key=KEY, loop_id=SUPPORT)
    actions = ActionContext(
        helpdesk_name="Example IT",
        support_address=SUPPORT,
        tag_prefix="#",
        signer=signer,
        templates=templates,
        teams=TEAMS,
        is_own_address=lambda a: a == SUPPORT,
        auto_reply_limit=limit,
    )
    return IngestContext(
        policy=ThreadPolicy(),
        is_own_address=lambda a: a == SUPPORT,
        clock=clock,
        loop_id=SUPPORT,
        verify_signed_id=lambda mid: ticket_from_message_id(mid, secret=KEY,
                                                           domains={"example.com"}),
        rules=rules,
        actions=actions,
    )


@pytest.fixture
def ctx(store: Store, clock: Clock) -> IngestContext:
    with store.sessions.begin() as session:
        directory.sync(session, [TeamSpec(n, a) for n, a in TEAMS.items()], [])
    return make_ctx(clock)


def run(store: Store, raw: bytes, ctx: IngestContext):
    with store.sessions.begin() as session:
        return ingest(session, raw, Origin("file", path="t.eml"), ctx)


def outbox(store: Store) -> list[OutboxItem]:
    with store.sessions() as session:
        return list(session.scalars(select(OutboxItem).order_by(OutboxItem.id)))


def events(store: Store, ticket_id: int) -> list[str]:
    with store.sessions() as session:
        return [e.kind for e in tickets.events(session, ticket_id)]


VPN = dict(subject="VPN keeps dropping", body="Hi, the VPN disconnects every hour.\nDana\n")


def test_new_request_is_routed_and_acknowledged(store: Store, ctx: IngestContext) -> None:
    """A VPN complaint goes to networking and its requester gets one acknowledgement."""
    outcome = run(store, make_mail(**VPN), ctx)
    assert outcome.rules_fired == ("network", "acknowledge")
    with store.sessions() as session:
        ticket = session.get_one(Ticket, outcome.ticket_id)
        assert ticket.team is not None
        assert ticket.team.name == "networking"
    (ack,) = outbox(store)
    assert (ack.kind, ack.envelope_to, ack.state) == ("auto_reply", ["dana.reyes@example.com"],
                                                      "pending")
    parsed = email.message_from_bytes(ack.raw, policy=email.policy.strict)
    assert parsed.defects == []
    assert parsed["Subject"] == f"Re: [#{outcome.ticket_id}] VPN keeps dropping"
    assert parsed["In-Reply-To"] == "<req-1@mail.example.com>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["X-Auto-Response-Suppress"] == "All"
    assert parsed["X-Loop"] == SUPPORT
    assert parsed["Reply-To"] == f"Example IT <{SUPPORT}>"
    assert ticket_from_message_id(ack.message_id, secret=KEY, domains={"example.com"}) == \
        outcome.ticket_id
    assert "auto_reply.queued" in events(store, outcome.ticket_id)


def test_out_of_office_answer_is_threaded_and_not_answered(
    store: Store, ctx: IngestContext
) -> None:
    """An out-of-office reply to our acknowledgement lands on the ticket; nobody answers it."""
    first = run(store, make_mail(**VPN), ctx)
    (ack,) = outbox(store)
    ooo = make_mail(
        subject=f"Automatic reply: [#{first.ticket_id}] VPN keeps dropping",
        message_id="<ooo-1@mail.example.com>",
        in_reply_to=f"<{ack.message_id}>",
        body="I am out of the office until Monday.\n",
        extra={"Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All"},
    )
    outcome = run(store, ooo, ctx)
    assert (outcome.kind, outcome.ticket_id) == (OutcomeKind.REPLY, first.ticket_id)
    assert outcome.mail_class == MailClass.AUTO_REPLY.value
    assert len(outbox(store)) == 1
    with store.sessions() as session:
        row = session.get_one(Message, outcome.message_row_id)
        assert (row.kind, row.mail_class) == ("auto_reply", "auto_reply")


def test_auto_reply_does_not_reopen_resolved_ticket(store: Store, ctx: IngestContext) -> None:
    """An auto-reply to a resolved ticket leaves it resolved."""
    first = run(store, make_mail(**VPN), ctx)
    with store.sessions.begin() as session:
        tickets.set_status(session, first.ticket_id, "resolved", actor="cli")
    ooo = make_mail(subject=f"Out of Office: [#{first.ticket_id}] VPN",
                    message_id="<ooo-2@example.com>",
                    extra={"Auto-Submitted": "auto-replied"})
    run(store, ooo, ctx)
    with store.sessions() as session:
        assert session.get_one(Ticket, first.ticket_id).status == "resolved"


def test_rate_limit_stops_auto_replies_and_says_so(store: Store, clock: Clock) -> None:
    """With a limit of 3 the third reply says no more will follow and the fourth is suppressed."""
    with store.sessions.begin() as session:
        directory.sync(session, [TeamSpec(n, a) for n, a in TEAMS.items()], [])
    ctx = make_ctx(clock, limit=3)
    outcomes = [
        run(store, make_mail(subject=f"Question {i}", message_id=f"<q{i}@example.com>",
                             body=f"Question number {i}\n"), ctx)
        for i in range(4)
    ]
    acks = outbox(store)
    assert len(acks) == 3
    assert LIMIT_NOTICE.strip().splitlines()[-1] in email.message_from_bytes(
        acks[2].raw, policy=email.policy.default).get_content()
    assert LIMIT_NOTICE.strip().splitlines()[-1] not in acks[1].raw.decode()
    assert outcomes[3].suppressed == ("rate_limit",)
    assert "auto_reply.suppressed" in events(store, outcomes[3].ticket_id)
    clock.advance(hours=25)
    run(store, make_mail(subject="Next day", message_id="<q9@example.com>"), ctx)
    assert len(outbox(store)) == 4


def dsn(original_id: str, status: str, action: str = "failed") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n"
        "To: support@example.com\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce-" + status + "@mx.example.org>\r\n"
        "Date: Mon, 2 Mar 2026 09:00:00 +0000\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        "Final-Recipient: rfc822; dana.reyes@example.com\r\n"
        f"Action: {action}\r\nStatus: {status}\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{original_id}>\r\nSubject: x\r\n\r\n"
        "--B--\r\n"
    ).encode()


def test_permanent_bounce_is_noted_and_suppresses(store: Store, ctx: IngestContext) -> None:
    """A 5.1.1 bounce of our acknowledgement lands on its ticket and stops further auto-replies."""
    first = run(store, make_mail(**VPN), ctx)
    (ack,) = outbox(store)
    bounce = run(store, dsn(ack.message_id, "5.1.1"), ctx)
    assert bounce.ticket_id == first.ticket_id
    assert bounce.mail_class == "bounce"
    assert "bounce.received" in events(store, first.ticket_id)
    with store.sessions() as session:
        assert session.get(Suppression, "dana.reyes@example.com") is not None
    again = run(store, make_mail(subject="Printer", message_id="<p1@example.com>"), ctx)
    assert again.suppressed == ("bounced",)
    assert len(outbox(store)) == 1


def test_transient_bounce_does_not_suppress(store: Store, ctx: IngestContext) -> None:
    """A 4.4.7 delay report is shown on the ticket but suppresses nothing."""
    run(store, make_mail(**VPN), ctx)
    (ack,) = outbox(store)
    run(store, dsn(ack.message_id, "4.4.7", action="delayed"), ctx)
    with store.sessions() as session:
        assert session.get(Suppression, "dana.reyes@example.com") is None


def test_own_and_looped_mail_is_never_answered(store: Store, ctx: IngestContext) -> None:
    """Mail from our own address, or carrying our X-Loop, gets no automatic reply."""
    own = run(store, make_mail(sender=SUPPORT, message_id="<own@example.com>"), ctx)
    looped = run(store, make_mail(message_id="<loop@example.com>",
                                  extra={"X-Loop": SUPPORT}), ctx)
    assert own.mail_class == looped.mail_class == "own"
    assert outbox(store) == []


def test_signed_reference_threads_and_forged_does_not(store: Store, ctx: IngestContext) -> None:
    """A reply to a Message-ID we signed threads even if the stored copy is gone; a forged one
    does not."""
    first = run(store, make_mail(**VPN), ctx)
    signed = make_message_id(first.ticket_id, domain="example.com", secret=KEY, nonce="abc")
    forged = make_message_id(first.ticket_id, domain="example.com", secret=b"other", nonce="abc")
    with store.sessions.begin() as session:
        session.execute(delete(OutboxItem))
        session.execute(delete(Message).where(Message.direction == "out"))
    reply = run(store, make_mail(subject="Re: your mail", message_id="<r1@example.com>",
                                 in_reply_to=f"<{signed}>"), ctx)
    assert reply.ticket_id == first.ticket_id
    fake = run(store, make_mail(sender="mallory@example.net", subject="Re: hi",
                                message_id="<r2@example.net>", in_reply_to=f"<{forged}>"), ctx)
    assert fake.kind is OutcomeKind.NEW_TICKET


def test_password_reset_gets_self_service_and_pending(store: Store, ctx: IngestContext) -> None:
    """A password reset request gets the self-service text, goes pending, and no generic ack."""
    outcome = run(store, make_mail(subject="Password reset please",
                                   body="I forgot my password, can you reset it?\n"), ctx)
    with store.sessions() as session:
        ticket = session.get_one(Ticket, outcome.ticket_id)
        assert ticket.status == "pending"
        assert ticket.team is not None
        assert ticket.team.name == "identity-and-access"
    (reply,) = outbox(store)
    assert "password" in reply.raw.decode().lower()
    assert outcome.mails_queued == ("auto_reply:password-reset",)
    # The ticket's history reads in order: the mail that opened it, then what its rules did.
    kinds = events(store, outcome.ticket_id)
    assert kinds[0] == "ticket.created"
    assert kinds.index("rule.matched") < kinds.index("auto_reply.queued")
    assert kinds.index("ticket.created") < kinds.index("status.changed")


def test_phishing_report_is_forwarded_to_security(store: Store, ctx: IngestContext) -> None:
    """A phishing report is forwarded to the security team's address with its attachment."""
    outcome = run(store, make_mail(subject="Suspicious email - phishing?",
                                   body="I got this phishing mail, please check.\n",
                                   attachment=("suspicious.eml", b"From: x\r\n\r\nclick me")),
                  ctx)
    kinds = {(m.kind, tuple(m.envelope_to)) for m in outbox(store)}
    assert ("forward", ("security@example.com",)) in kinds
    forward = next(m for m in outbox(store) if m.kind == "forward")
    assert b"suspicious.eml" in forward.raw
    assert outcome.ticket_id is not None


def test_broken_template_falls_back_and_records(store: Store, clock: Clock, tmp_path: Path
                                                ) -> None:
    """A template that fails at render time sends the built-in text and records an event."""
    for name in ("acknowledge", "password-reset", "team-forward"):
        (tmp_path / f"{name}.txt").write_text(
            "Subject: {{ ticket.reference }} thanks\n\nHello {{ requester.nmae.upper() }}\n")
    with store.sessions.begin() as session:
        directory.sync(session, [TeamSpec(n, a) for n, a in TEAMS.items()], [])
    ctx = make_ctx(clock, templates_dir=tmp_path)
    outcome = run(store, make_mail(**VPN), ctx)
    (ack,) = outbox(store)
    assert f"[#{outcome.ticket_id}]" in ack.raw.decode()
    assert "template.failed" in events(store, outcome.ticket_id)


def test_list_mail_is_not_acknowledged(store: Store, ctx: IngestContext) -> None:
    """A mailing-list post reaching support@ gets no acknowledgement."""
    outcome = run(store, make_mail(message_id="<l1@lists.example.org>",
                                   extra={"List-Id": "<announce.example.org>",
                                          "Precedence": "list"}), ctx)
    assert outcome.mail_class == "list"
    assert outbox(store) == []


def test_clock_window_is_the_configured_one(store: Store, clock: Clock) -> None:
    """The rate-limit window slides: replies older than the window no longer count."""
    with store.sessions.begin() as session:
        directory.sync(session, [TeamSpec(n, a) for n, a in TEAMS.items()], [])
    ctx = make_ctx(clock, limit=1)
    run(store, make_mail(message_id="<w1@example.com>", subject="A"), ctx)
    clock.advance(hours=23)
    second = run(store, make_mail(message_id="<w2@example.com>", subject="B"), ctx)
    assert second.suppressed == ("rate_limit",)
    clock.advance(hours=2)
    third = run(store, make_mail(message_id="<w3@example.com>", subject="C"), ctx)
    assert third.suppressed == ()


def test_long_message_id_is_acknowledged(store: Store, ctx: IngestContext) -> None:
    """A 300-character Message-ID still gets its acknowledgement (correlation id fits)."""
    long_id = "<" + "x" * 290 + "@mail.example.com>"
    outcome = run(store, make_mail(**VPN, message_id=long_id), ctx)
    assert outcome.mails_queued == ("auto_reply:acknowledge",)
    (ack,) = outbox(store)
    assert ack.correlation_id == long_id[1:-1]


SAME_COMMIT_RULES = """
[[rule]]
name = "vpn"
[rule.when]
subject_or_body = '(?i)vpn'
[rule.then]
tags = ["network"]
priority = "high"

[[rule]]
name = "again"
[rule.when]
is_new = false
[rule.then]
priority = "urgent"
"""


def test_mails_of_one_commit_see_each_others_changes(
    store: Store, ctx: IngestContext, tmp_path: Path
) -> None:
    """Two mails on one ticket in one group commit: the second's rules see what the first's
    did (no tag added twice, no stale priority), and a ticket loaded in between is current."""
    (tmp_path / "rules.toml").write_text(SAME_COMMIT_RULES)
    rules = load_rules(tmp_path, teams=set(TEAMS), agents=set(),
                       templates=load_templates(ROOT / "templates").names | BUILTIN_TEMPLATES)
    ctx = dataclasses.replace(ctx, rules=rules)
    with store.sessions.begin() as session:
        first = ingest(session, make_mail(**VPN), Origin("file", path="1.eml"), ctx)
        held = session.get_one(Ticket, first.ticket_id)
        assert (held.priority, [t.tag for t in held.tags]) == ("high", ["network"])
        reply = make_mail(subject=f"Re: [#{first.ticket_id}] VPN keeps dropping",
                          body="The VPN dropped again.\n", message_id="<req-2@mail.example.com>",
                          in_reply_to="<req-1@mail.example.com>")
        second = ingest(session, reply, Origin("file", path="2.eml"), ctx)
        assert second.ticket_id == first.ticket_id
        assert second.rules_fired == ("vpn", "again")
        assert held.priority == "urgent"
    kinds = events(store, first.ticket_id)
    assert "actions.failed" not in kinds
    assert kinds.count("tags.added") == 1
    assert kinds.count("priority.changed") == 2


def test_a_reopen_in_the_same_commit_reaches_a_loaded_ticket(
    store: Store, ctx: IngestContext
) -> None:
    """A ticket loaded earlier in the transaction sees the reopen that filing writes by Core."""
    ctx = dataclasses.replace(ctx, rules=None)
    with store.sessions.begin() as session:
        first = ingest(session, make_mail(**VPN), Origin("file", path="1.eml"), ctx)
        held = tickets.set_status(session, first.ticket_id, "resolved", actor="test")
        assert held.status == "resolved"
        reply = make_mail(subject=f"Re: [#{first.ticket_id}] VPN keeps dropping",
                          body="Still broken.\n", message_id="<req-2@mail.example.com>",
                          in_reply_to="<req-1@mail.example.com>")
        second = ingest(session, reply, Origin("file", path="2.eml"), ctx)
        assert second.ticket_id == first.ticket_id
        assert held.status == "open"
