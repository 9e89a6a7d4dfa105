"""A whole help-desk conversation through ingest and the real SMTP sender (issue 5, item 10)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator
from email.message import Message as EmailMsg
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk.context import BUILTIN_TEMPLATES
from helpdesk.delivery.outbox import OutboxPolicy, Signer
from helpdesk.desk import directory, tickets
from helpdesk.desk.actions import ActionContext
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.mail.trust import TrustPolicy
from helpdesk.rules import load_rules
from helpdesk.settings import SmtpSettings
from helpdesk.smtp import Sender
from helpdesk.store.models import Message, Ticket
from helpdesk.templates import load_templates
from helpdesk.values import Origin, OutcomeKind
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail
from tests.servers.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = "support@example.com"
DANA = "Dana Reyes <dana.reyes@example.com>"
ALICE = "Alice Admin <alice@it.example.com>"
MX = "mx.example.com"
AUTH_OK = f"{MX}; dkim=pass header.d=it.example.com; spf=pass smtp.mailfrom=it.example.com"


class Spec:
    def __init__(self, name: str, **kw: object) -> None:
        self.name = name
        self.__dict__.update(kw)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ctx(store: Store, clock: Clock) -> IngestContext:
    teams = [Spec(n, address=f"{n}@example.com") for n in
             ("support", "networking", "infrastructure", "identity-and-access", "security")]
    agents = [Spec("Alice Admin", addresses=["alice@it.example.com"], teams=["networking"])]
    with store.sessions.begin() as session:
        directory.sync(session, teams, agents)  # type: ignore[arg-type]
    templates = load_templates(ROOT / "templates")
    rules = load_rules(ROOT / "rules", teams={t.name for t in teams},
                       agents={"alice@it.example.com"},
                       templates=templates.names | BUILTIN_TEMPLATES)
    actions = ActionContext(
        helpdesk_name="Example IT", support_address=SUPPORT, tag_prefix="#",
        signer=Signer("example.com", b"key", SUPPORT), templates=templates,
        teams={t.name: t.address for t in teams},  # type: ignore[attr-defined]
        is_own_address=lambda a: a.startswith("support"),
    )
    return IngestContext(
        is_own_address=lambda a: a.startswith("support"), clock=clock, loop_id=SUPPORT,
        rules=rules, actions=actions, trust=TrustPolicy(authserv_id=MX),
        note_address="support+note@example.com",
    )


def deliver(store: Store, sink: SmtpSink, clock: Clock) -> list[EmailMsg]:
    """Run the real sender once; return what the SMTP server received in this pass."""
    before = len(sink.messages)
    sender = Sender(store.sessions, SmtpSettings(host="127.0.0.1", port=sink.port, timeout=5.0),
                    OutboxPolicy(), holder="test", clock=clock)
    asyncio.run(sender.run_once())
    return [email.message_from_bytes(m.data, policy=email.policy.default)
            for m in sink.messages[before:]]


def run(store: Store, ctx: IngestContext, raw: bytes):
    with store.sessions.begin() as session:
        return ingest(session, raw, Origin("lmtp", recipient=SUPPORT), ctx)


def body(msg: EmailMsg) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_full_conversation(store: Store, ctx: IngestContext, sink: SmtpSink, clock: Clock
                           ) -> None:
    """Ask, acknowledge, agent reply relayed, requester answers, assignee told, #status resolved."""
    # 1. The employee asks; the acknowledgement goes out.
    ask = make_mail(sender=DANA, subject="VPN drops every hour",
                    body="Hi IT,\n\nmy VPN disconnects every hour.\n\nDana\n",
                    message_id="<ask-1@mail.example.com>")
    first = run(store, ctx, ask)
    ticket_id = first.ticket_id
    (ack,) = deliver(store, sink, clock)
    assert ack["To"].addresses[0].addr_spec == "dana.reyes@example.com"
    assert ack["In-Reply-To"] == "<ask-1@mail.example.com>"
    assert f"[#{ticket_id}]" in ack["Subject"]

    # 2. The agent answers from a mail client, quoting the history, assigning herself.
    clock.advance(minutes=30)
    answer = make_mail(
        sender=ALICE, subject=f"RE: [#{ticket_id}] VPN drops every hour",
        message_id="<alice-1@it.example.com>", in_reply_to=f"<{ack['Message-ID'][1:-1]}>",
        body=("#assign alice@it.example.com\n#tag vpn\n\nHi Dana,\n\nplease install client 5.2"
              " from the portal.\n\nAlice\n\nOn Mon, 2 Mar 2026, IT Help Desk wrote:\n"
              "> We have received your request\n> ticket details\n"),
        extra={"Authentication-Results": AUTH_OK},
    )
    reply = run(store, ctx, answer)
    assert (reply.kind, reply.ticket_id) == (OutcomeKind.REPLY, ticket_id)
    (relayed,) = deliver(store, sink, clock)
    assert [a.addr_spec for a in relayed["To"].addresses] == ["dana.reyes@example.com"]
    assert relayed["In-Reply-To"] == "<ask-1@mail.example.com>"
    assert "ask-1@mail.example.com" in relayed["References"]
    text = body(relayed)
    assert "install client 5.2" in text
    assert "#assign" not in text
    assert "We have received your request" not in text
    assert relayed["From"].addresses[0].addr_spec == SUPPORT
    with store.sessions() as session:
        ticket = session.get_one(Ticket, ticket_id)
        assert ticket.status == "open"
        assert ticket.first_response_at == clock.now
        assert ticket.assignee is not None
        assert ticket.assignee.primary_address == "alice@it.example.com"
        assert "vpn" in {t.tag for t in ticket.tags}

    # 3. The requester answers; the assignee is notified with the new text.
    clock.advance(hours=2)
    back = make_mail(sender=DANA, subject=f"Re: [#{ticket_id}] VPN drops every hour",
                     message_id="<ask-2@mail.example.com>",
                     in_reply_to=f"<{relayed['Message-ID'][1:-1]}>",
                     body="Still dropping after the update.\n\n> please install client 5.2\n")
    run(store, ctx, back)
    (note,) = deliver(store, sink, clock)
    assert [a.addr_spec for a in note["To"].addresses] == ["alice@it.example.com"]
    assert "Still dropping after the update." in body(note)
    assert note["Reply-To"].addresses[0].addr_spec == SUPPORT

    # 4. The agent resolves it by mail with only a command: the requester gets the
    #    resolution notice (templates/resolved.txt) on her own thread, and nothing else.
    done = make_mail(sender=ALICE, subject=f"Re: [#{ticket_id}] VPN", message_id="<alice-2@x>",
                     body="#status resolved\n", extra={"Authentication-Results": AUTH_OK})
    run(store, ctx, done)
    (notice,) = deliver(store, sink, clock)
    assert [a.addr_spec for a in notice["To"].addresses] == ["dana.reyes@example.com"]
    assert notice["Subject"] == f"[#{ticket_id}] Resolved: VPN drops every hour"
    assert notice["In-Reply-To"] == "<ask-2@mail.example.com>"
    assert notice["Auto-Submitted"] is not None
    assert "as resolved" in body(notice)
    assert "#status" not in body(notice)
    with store.sessions() as session:
        assert session.get_one(Ticket, ticket_id).status == "resolved"
        kinds = [e.kind for e in tickets.events(session, ticket_id)]
        assert "reply.relayed" in kinds
        assert "notification.queued" in kinds


def test_forged_agent_gets_no_powers(store: Store, ctx: IngestContext, sink: SmtpSink,
                                     clock: Clock) -> None:
    """An agent's From without our MX's Authentication-Results is a customer's mail."""
    first = run(store, ctx, make_mail(sender=DANA, subject="Printer", message_id="<p1@x>"))
    deliver(store, sink, clock)
    forged = make_mail(
        sender=ALICE, subject=f"Re: [#{first.ticket_id}] Printer", message_id="<f1@evil>",
        body="#status closed\n#assign alice@it.example.com\nPlease send me your password.\n",
        extra={"Authentication-Results": "evil.example.net; dkim=pass header.d=it.example.com"},
    )
    outcome = run(store, ctx, forged)
    with store.sessions() as session:
        ticket = session.get_one(Ticket, first.ticket_id)
        assert ticket.status != "closed"
        assert ticket.assignee is None
        # Without agent powers Alice is a stranger to Dana's ticket: her tag opens a new one.
        assert outcome.ticket_id != first.ticket_id
        kinds = [e.kind for e in tickets.events(session, outcome.ticket_id)]
        assert "agent.untrusted" in kinds
        row = session.scalars(select(Message).where(Message.message_id == "f1@evil")).one()
        assert row.kind == "customer"
    # Nothing was relayed to Dana in Alice's name.
    assert all("password" not in body(m) for m in deliver(store, sink, clock))


def test_notes_never_reach_the_requester(store: Store, ctx: IngestContext, sink: SmtpSink,
                                         clock: Clock) -> None:
    """A #note and a mail to the note address are stored, never relayed."""
    first = run(store, ctx, make_mail(sender=DANA, subject="Laptop", message_id="<l1@x>"))
    deliver(store, sink, clock)
    first_note = make_mail(sender=ALICE, subject=f"Re: [#{first.ticket_id}] Laptop",
                           message_id="<n1@x>", body="#note\nHer laptop is out of warranty.\n",
                           extra={"Authentication-Results": AUTH_OK})
    second_note = make_mail(sender=ALICE, to="support+note@example.com",
                            subject=f"[#{first.ticket_id}] Laptop", message_id="<n2@x>",
                            body="Ordered a replacement.\n",
                            extra={"Authentication-Results": AUTH_OK})
    run(store, ctx, first_note)
    run(store, ctx, second_note)
    sent = deliver(store, sink, clock)
    assert all("warranty" not in body(m) and "replacement" not in body(m) for m in sent)
    with store.sessions() as session:
        kinds = [m.kind for m in session.scalars(
            select(Message).where(Message.message_id.in_(["n1@x", "n2@x"])))]
        assert kinds == ["note", "note"]


def test_unknown_command_is_answered_to_the_agent(store: Store, ctx: IngestContext,
                                                  sink: SmtpSink, clock: Clock) -> None:
    """A mistyped command gets a short error mail to the agent and nothing is relayed."""
    first = run(store, ctx, make_mail(sender=DANA, subject="Monitor", message_id="<m1@x>"))
    deliver(store, sink, clock)
    run(store, ctx, make_mail(sender=ALICE, subject=f"Re: [#{first.ticket_id}] Monitor",
                              message_id="<m2@x>", body="#staus resolved\nDone, Dana!\n",
                              extra={"Authentication-Results": AUTH_OK}))
    (error,) = deliver(store, sink, clock)
    assert [a.addr_spec for a in error["To"].addresses] == ["alice@it.example.com"]
    assert "#staus" in body(error)


def test_forward_on_behalf_opens_ticket_for_the_customer(store: Store, ctx: IngestContext,
                                                         sink: SmtpSink, clock: Clock) -> None:
    """An agent forwarding a customer's mail opens the ticket for the customer, who is
    acknowledged."""
    forward = make_mail(
        sender=ALICE, subject="Fwd: Shared drive access",
        message_id="<fw1@it.example.com>",
        body=("FYI, please handle.\n\n---------- Forwarded message ---------\n"
              "From: Carl Jensen <carl.jensen@example.com>\n"
              "Date: Mon, 2 Mar 2026 at 08:00\nSubject: Shared drive access\n"
              "To: Alice Admin <alice@it.example.com>\n\n"
              "Hi Alice, I need access to the finance shared drive.\n"),
        extra={"Authentication-Results": AUTH_OK},
    )
    outcome = run(store, ctx, forward)
    assert outcome.kind is OutcomeKind.NEW_TICKET
    with store.sessions() as session:
        ticket = session.get_one(Ticket, outcome.ticket_id)
        assert ticket.requester is not None
        assert ticket.requester.address == "carl.jensen@example.com"
    acks = deliver(store, sink, clock)
    assert [a.addr_spec for m in acks for a in m["To"].addresses] == ["carl.jensen@example.com"]
