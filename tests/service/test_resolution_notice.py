"""The resolution notice: sent from every path that resolves a ticket, once per resolution.

Paths: the CLI's service (`tickets.set_status`), an agent's `#status resolved`
by mail, a rule, a timer. Every notice goes through the outbox and the guards
of automatic mail; `quiet` skips it.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from helpdesk.context import BUILTIN_TEMPLATES
from helpdesk.delivery.outbox import Signer
from helpdesk.desk import directory, tickets, timers
from helpdesk.desk.actions import ActionContext
from helpdesk.desk.notices import Notice
from helpdesk.flow.ingest import IngestContext, ingest, ingest_batch
from helpdesk.mail.prepare import prepare_with
from helpdesk.mail.trust import TrustPolicy
from helpdesk.rules import load_rules
from helpdesk.store.models import AutoReplyLog, Event, OutboxItem, Suppression, Ticket
from helpdesk.templates import TemplateSet, load_templates
from helpdesk.values import Origin
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = "support@example.com"
DANA = "dana.reyes@example.com"
ALICE = "Alice Admin <alice@it.example.com>"
SAM = "Sam <sam@example.org>"

RULES = """
[[rule]]
name = "thanks-resolves"
[rule.when]
is_new = false
subject_or_body = '(?i)fixed, thanks'
[rule.then]
status = "resolved"

[[rule]]
name = "answer-and-resolve"
[rule.when]
subject_or_body = '(?i)how do i print'
[rule.then]
status = "resolved"
auto_reply = "acknowledge"

[[rule]]
name = "monitoring-recovery"
[rule.when]
automated = true
subject_or_body = 'RECOVERY'
[rule.then]
status = "resolved"

[[timer]]
name = "close-stale-open"
status = "open"
idle_days = 30
[timer.then]
status = "resolved"
"""


class Spec:
    def __init__(self, name: str, **kw: object) -> None:
        self.name = name
        self.__dict__.update(kw)


def action_context(templates: TemplateSet | None = None, limit: int = 10) -> ActionContext:
    return ActionContext(
        helpdesk_name="Example IT", support_address=SUPPORT, tag_prefix="#",
        signer=Signer("example.com", b"key", SUPPORT),
        templates=load_templates(ROOT / "templates") if templates is None else templates,
        is_own_address=lambda a: a.startswith("support"), auto_reply_limit=limit,
    )


@pytest.fixture
def ctx(store: Store, clock: Clock, tmp_path: Path) -> IngestContext:
    """Ingest with our test rules, a trusted agent Alice, and the shipped templates."""
    agents = [Spec("Alice Admin", addresses=["alice@it.example.com"], teams=[])]
    with store.sessions.begin() as session:
        directory.sync(session, [], agents)  # type: ignore[arg-type]
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "10-test.toml").write_text(RULES)
    actions = action_context()
    rules = load_rules(tmp_path / "rules", teams=set(), agents={"alice@it.example.com"},
                       templates=actions.templates.names | BUILTIN_TEMPLATES)
    # The agent's mail in these tests is about notices, not about trust.
    return IngestContext(is_own_address=lambda a: a.startswith("support"), clock=clock,
                         loop_id=SUPPORT, rules=rules, actions=actions,
                         trust=TrustPolicy(trust_from_header=True))


def run(store: Store, ctx: IngestContext, raw: bytes) -> int:
    with store.sessions.begin() as session:
        outcome = ingest(session, raw, Origin("lmtp", recipient=SUPPORT), ctx)
    assert outcome.ticket_id is not None
    return outcome.ticket_id


def new_ticket(store: Store, clock: Clock, *, sender: str = f"Dana Reyes <{DANA}>",
               extra: dict[str, str] | None = None) -> int:
    """A ticket opened without rules (no acknowledgement), from `sender`."""
    with store.sessions.begin() as session:
        outcome = ingest(session, make_mail(sender=sender, subject="Printer jammed",
                                            extra=extra),
                         Origin("file"), IngestContext(clock=clock))
    assert outcome.ticket_id is not None
    return outcome.ticket_id


def outbox(store: Store) -> list[OutboxItem]:
    with store.sessions() as session:
        return list(session.scalars(select(OutboxItem).order_by(OutboxItem.id)))


def notices_of(store: Store) -> list[OutboxItem]:
    return [item for item in outbox(store) if b"Resolved:" in item.raw]


def events(store: Store, ticket_id: int, prefix: str = "notice.") -> list[Event]:
    with store.sessions() as session:
        return [e for e in tickets.events(session, ticket_id) if e.kind.startswith(prefix)]


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def resolve(store: Store, ticket_id: int, clock: Clock, notice: Notice,
            status: str = "resolved") -> None:
    with store.sessions.begin() as session:
        tickets.set_status(session, ticket_id, status, actor="cli", now=clock.now,
                           notice=notice)


# -- the notice and "once per resolution" ----------------------------------------------------


def test_resolving_mails_the_requester_the_notice(store: Store, clock: Clock) -> None:
    """The notice goes to the requester through the outbox, on her thread, from the template."""
    ticket_id = new_ticket(store, clock)
    resolve(store, ticket_id, clock, Notice(action_context()))
    (item,) = outbox(store)
    assert (item.state, item.kind, item.envelope_to) == ("pending", "system", [DANA])
    mail = parsed(item.raw)
    assert mail["Subject"] == f"[#{ticket_id}] Resolved: Printer jammed"
    assert mail["In-Reply-To"] == "<req-1@mail.example.com>"
    assert mail["Auto-Submitted"] is not None
    assert "we have marked your request" in str(mail.get_body(("plain",)).get_content())
    (event,) = events(store, ticket_id)
    assert (event.kind, event.actor, event.detail["to"]) == ("notice.queued", "cli", DANA)
    with store.sessions() as session:
        # It counts towards the automatic-mail rate limit like every automatic mail.
        assert session.scalar(select(func.count(AutoReplyLog.id))) == 1
        assert session.get_one(Ticket, ticket_id).resolved_at == clock.now


def test_each_resolution_is_announced_once(store: Store, clock: Clock) -> None:
    """Resolving a resolved ticket says nothing; resolving it again after a reopen does."""
    ticket_id = new_ticket(store, clock)
    notice = Notice(action_context())
    resolve(store, ticket_id, clock, notice)
    resolve(store, ticket_id, clock, notice)
    assert len(notices_of(store)) == 1
    resolve(store, ticket_id, clock, notice, status="closed")
    assert len(notices_of(store)) == 1  # closing is not a resolution
    resolve(store, ticket_id, clock, notice, status="open")
    resolve(store, ticket_id, clock, notice)
    assert len(notices_of(store)) == 2


def test_quiet_resolution_sends_nothing_and_says_why(store: Store, clock: Clock) -> None:
    """--quiet resolves without a notice; the event names the reason."""
    ticket_id = new_ticket(store, clock)
    resolve(store, ticket_id, clock, Notice(action_context(), quiet="--quiet"))
    assert outbox(store) == []
    (event,) = events(store, ticket_id)
    assert (event.kind, event.detail["reason"]) == ("notice.skipped", "--quiet")
    with store.sessions() as session:
        assert session.get_one(Ticket, ticket_id).status == "resolved"


def test_a_broken_template_sends_the_built_in_text(store: Store, clock: Clock,
                                                   tmp_path: Path) -> None:
    """A template that fails at send time is replaced by the built-in text, with an event."""
    (tmp_path / "resolved.txt").write_text("Subject: {{ ticket.reference }} done\n\n"
                                           "{{ ticket.subjetc.upper() }}\n")
    ticket_id = new_ticket(store, clock)
    resolve(store, ticket_id, clock, Notice(action_context(load_templates(tmp_path))))
    (item,) = outbox(store)
    assert "is resolved" in parsed(item.raw).get_body(("plain",)).get_content()
    assert [e.kind for e in events(store, ticket_id, "template.")] == ["template.failed"]


# -- the guards of automatic mail ----------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "extra", "reason"),
    [
        ("No Reply <no-reply@vendor.example>", None, "noreply"),
        ("Support <support@example.com>", None, "own_address"),
        # The ticket was opened by an autoresponder: its requester is not answered.
        (f"Dana <{DANA}>", {"Auto-Submitted": "auto-replied"}, "automated"),
    ],
)
def test_guarded_requesters_get_no_notice(store: Store, clock: Clock, sender: str,
                                          extra: dict[str, str] | None, reason: str) -> None:
    """No notice to no-reply senders, our own addresses, or a requester whose mail was automated."""
    ticket_id = new_ticket(store, clock, sender=sender, extra=extra)
    resolve(store, ticket_id, clock, Notice(action_context()))
    assert outbox(store) == []
    (event,) = events(store, ticket_id)
    assert event.kind == "notice.suppressed"
    assert event.detail["reason"].startswith(reason)


def test_bounced_and_rate_limited_addresses_get_no_notice(store: Store, clock: Clock) -> None:
    """An address that bounced permanently, or had its fill of automatic mail, gets no notice."""
    first, second = new_ticket(store, clock), new_ticket(store, clock, sender=SAM)
    with store.sessions.begin() as session:
        session.add(Suppression(address=DANA, until=clock.now + timedelta(days=3),
                                reason="5.1.1", created_at=clock.now))
        session.add_all(AutoReplyLog(address="sam@example.org", sent_at=clock.now)
                        for _ in range(2))
    ctx = action_context(limit=2)
    resolve(store, first, clock, Notice(ctx))
    resolve(store, second, clock, Notice(ctx))
    assert outbox(store) == []
    reasons = [events(store, t)[0].detail["reason"].split(":")[0] for t in (first, second)]
    assert reasons == ["bounced", "rate_limit"]


def test_a_requester_whose_out_of_office_answered_us_still_hears(store: Store,
                                                                  clock: Clock) -> None:
    """Her out-of-office after our acknowledgement does not make her a robot: the notice goes,
    continuing her own mail's thread, not the out-of-office's."""
    ticket_id = new_ticket(store, clock)
    with store.sessions.begin() as session:
        ingest(session, make_mail(subject=f"Out of office: Re: [#{ticket_id}] Printer jammed",
                                  message_id="<ooo-1@mail.example.com>",
                                  extra={"Auto-Submitted": "auto-replied"}),
               Origin("file"), IngestContext(clock=clock))
    resolve(store, ticket_id, clock, Notice(action_context()))
    (item,) = outbox(store)
    assert parsed(item.raw)["In-Reply-To"] == "<req-1@mail.example.com>"


def test_automated_mail_that_resolves_is_not_answered_even_for_others(
    store: Store, ctx: IngestContext, clock: Clock
) -> None:
    """An automated mail from someone copied on the ticket resolves it by a rule: no notice,
    because the resolution was caused by automated mail (RFC 3834 section 2)."""
    ticket_id = run(store, ctx, make_mail(subject="Disk full on fileserver",
                                          cc="Nagios <nagios@mon.example.com>",
                                          message_id="<d1@x>"))
    run(store, ctx, make_mail(sender="Nagios <nagios@mon.example.com>",
                              subject=f"Re: [#{ticket_id}] RECOVERY: disk OK",
                              message_id="<n2@mon>", extra={"Auto-Submitted": "auto-generated"}))
    with store.sessions() as session:
        assert session.get_one(Ticket, ticket_id).status == "resolved"
    assert notices_of(store) == []
    (event,) = events(store, ticket_id)
    assert event.kind == "notice.suppressed"
    assert event.detail["reason"].startswith("automated: auto_reply")


# -- the paths: #status by mail, a rule, a timer ---------------------------------------------


def agent_mail(ticket_id: int, body: str, message_id: str) -> bytes:
    return make_mail(sender=ALICE, subject=f"Re: [#{ticket_id}] Printer jammed",
                     message_id=message_id, body=body)


def test_status_resolved_by_mail_sends_the_notice_after_the_reply(
    store: Store, ctx: IngestContext, clock: Clock
) -> None:
    """`#status resolved` with an answer: the relay first, then the notice, one each."""
    ticket_id = new_ticket(store, clock)
    run(store, ctx, agent_mail(ticket_id, "#status resolved\n\nThe toner was empty.\n",
                               "<a1@it.example.com>"))
    relay, notice = outbox(store)
    assert (relay.kind, notice.kind) == ("agent_reply", "system")
    assert b"Resolved:" in notice.raw
    assert notice.envelope_to == [DANA]
    assert notice.correlation_id == "a1@it.example.com"
    (event,) = events(store, ticket_id)
    assert (event.kind, event.actor) == ("notice.queued", "alice@it.example.com")


def test_status_resolved_quiet_by_mail_sends_only_the_reply(
    store: Store, ctx: IngestContext, clock: Clock
) -> None:
    """`#status resolved quiet` resolves; the requester gets the answer and no notice."""
    ticket_id = new_ticket(store, clock)
    run(store, ctx, agent_mail(ticket_id, "#status resolved quiet\n\nDone.\n", "<a2@x>"))
    assert [item.kind for item in outbox(store)] == ["agent_reply"]
    with store.sessions() as session:
        assert session.get_one(Ticket, ticket_id).status == "resolved"
    (event,) = events(store, ticket_id)
    assert (event.kind, event.detail["reason"]) == ("notice.skipped", "#status resolved quiet")


def test_a_rule_that_resolves_sends_the_notice(store: Store, ctx: IngestContext,
                                               clock: Clock) -> None:
    """A requester's "fixed, thanks" matched by a rule resolves the ticket with a notice."""
    ticket_id = new_ticket(store, clock)
    run(store, ctx, make_mail(subject="Re: [#1] Printer jammed", message_id="<r2@x>",
                              body="It is fixed, thanks!\n"))
    (item,) = notices_of(store)
    assert item.envelope_to == [DANA]
    assert item.correlation_id == "r2@x"
    (event,) = events(store, ticket_id)
    assert (event.kind, event.actor) == ("notice.queued", "rule:thanks-resolves")
    with store.sessions() as session:
        assert session.get_one(Ticket, ticket_id).resolved_at == clock.now


def test_a_notice_counts_towards_the_limit_for_the_rest_of_its_batch(
    store: Store, ctx: IngestContext, clock: Clock
) -> None:
    """Filed in one batch, as the daemon files a backlog: the notice a rule sends Dana is
    counted when her next mails ask for automatic replies (limit 2: one more, then none)."""
    ticket_id = new_ticket(store, clock)
    ctx = dataclasses.replace(ctx, actions=action_context(limit=2))
    raws = [make_mail(subject=f"Re: [#{ticket_id}] Printer jammed", message_id="<r2@x>",
                      body="It is fixed, thanks!\n"),
            make_mail(subject="How do I print double-sided?", message_id="<r3@x>"),
            make_mail(subject="How do I print in colour?", message_id="<r4@x>")]
    items = [(raw, Origin("lmtp", recipient=SUPPORT),
              prepare_with(raw, parse=ctx.parse, is_own_address=ctx.is_own_address,
                           loop_id=ctx.loop_id, trust=ctx.trust)) for raw in raws]
    with store.sessions.begin() as session:
        outcomes = ingest_batch(session, items, ctx)
    assert outcomes[0].ticket_id == ticket_id
    assert [o.suppressed for o in outcomes] == [(), (), ("rate_limit",)]
    assert len(notices_of(store)) == 1
    assert [item.envelope_to for item in outbox(store)] == [[DANA], [DANA]]


def test_a_rule_with_its_own_reply_sends_one_mail(store: Store, ctx: IngestContext) -> None:
    """A rule that resolves and answers: its auto-reply is the one automatic mail."""
    ticket_id = run(store, ctx, make_mail(subject="How do I print double-sided?",
                                          message_id="<q1@x>"))
    assert [item.kind for item in outbox(store)] == ["auto_reply"]
    (event,) = events(store, ticket_id)
    assert event.kind == "notice.skipped"
    assert "automatic reply" in event.detail["reason"]


def test_a_rule_resolving_on_automated_mail_sends_nothing(store: Store,
                                                          ctx: IngestContext) -> None:
    """Monitoring mail that resolves its own ticket is never answered (RFC 3834)."""
    ticket_id = run(store, ctx, make_mail(
        sender="Nagios <nagios@mon.example.com>", subject="RECOVERY: disk /var OK",
        message_id="<n1@mon>", extra={"Auto-Submitted": "auto-generated"}))
    assert outbox(store) == []
    (event,) = events(store, ticket_id)
    assert (event.kind, event.detail["reason"].split(":")[0]) == ("notice.suppressed",
                                                                  "automated")
    with store.sessions() as session:
        assert session.get_one(Ticket, ticket_id).status == "resolved"


def test_a_timer_that_resolves_sends_the_notice_once(store: Store, ctx: IngestContext,
                                                     clock: Clock) -> None:
    """A timer without `notify` that resolves sends resolved.txt, once however often it runs."""
    assert ctx.rules is not None
    assert ctx.actions is not None
    ticket_id = new_ticket(store, clock)
    resolve(store, ticket_id, clock, Notice(None), status="open")
    clock.advance(days=31)
    for _ in range(2):
        with store.sessions.begin() as session:
            timers.run(session, list(ctx.rules.timers), ctx.actions, clock.now)
    (item,) = outbox(store)
    assert b"Resolved:" in item.raw
    assert item.envelope_to == [DANA]
    (event,) = events(store, ticket_id)
    assert (event.kind, event.actor) == ("notice.queued", "timer:close-stale-open")
