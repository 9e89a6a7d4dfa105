"""Mail cannot borrow an agent's powers (issue 12), through ingest on SQLite and PostgreSQL.

Dana opens a ticket; mail "from" Alice, an agent, then tries `#status closed`
and a reply to be relayed to Dana. Every mail answers our acknowledgement
(In-Reply-To), so even an untrusted one lands on Dana's ticket as an ordinary
reply: what differs is only whether the commands run and the text is relayed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk import context
from helpdesk.context import BUILTIN_TEMPLATES
from helpdesk.delivery.outbox import Signer
from helpdesk.desk import directory, tickets
from helpdesk.desk.actions import ActionContext
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.mail.trust import NOT_CONFIGURED, TrustPolicy
from helpdesk.rules import load_rules
from helpdesk.settings import load_settings
from helpdesk.store.models import Message, OutboxItem, Ticket
from helpdesk.templates import load_templates
from helpdesk.values import IngestOutcome, Origin, OutcomeKind
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = "support@example.com"
DANA = "dana.reyes@example.com"
ALICE = "Alice Admin <alice@it.example.com>"
MX = "mx.example.com"
GENUINE_FAIL = f"{MX}; dkim=none (message not signed); spf=softfail smtp.mailfrom=it.example.com"
GENUINE_PASS = f"{MX}; dkim=pass header.d=it.example.com; spf=pass smtp.mailfrom=it.example.com"
FORGED_PASS = f"{MX}; dkim=pass header.d=it.example.com"
BODY = "#status closed\nHi Dana, please confirm your password by replying to this mail.\n"


class Spec:
    def __init__(self, name: str, **kw: object) -> None:
        self.name = name
        self.__dict__.update(kw)


@pytest.fixture
def ctx(store: Store, clock: Clock) -> IngestContext:
    """Ingest with the shipped rules and templates and Alice as an agent; no trust yet."""
    teams = [Spec(n, address=f"{n}@example.com") for n in
             ("support", "networking", "infrastructure", "identity-and-access", "security")]
    agents = [Spec("Alice Admin", addresses=["alice@it.example.com"], teams=["support"])]
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
    return IngestContext(is_own_address=lambda a: a.startswith("support"), clock=clock,
                         loop_id=SUPPORT, rules=rules, actions=actions)


def run(store: Store, ctx: IngestContext, raw: bytes) -> IngestOutcome:
    with store.sessions.begin() as session:
        return ingest(session, raw, Origin("lmtp", recipient=SUPPORT), ctx)


def dana_asks(store: Store, ctx: IngestContext) -> tuple[int, str]:
    """Dana's request: the ticket id and the Message-ID of the mail we answered it with."""
    outcome = run(store, ctx, make_mail(subject="Printer", message_id="<ask@example.com>"))
    assert outcome.ticket_id is not None
    with store.sessions() as session:
        ack = session.scalars(select(OutboxItem).where(
            OutboxItem.correlation_id == "ask@example.com")).one()
    return outcome.ticket_id, ack.message_id


def alice_writes(ticket_id: int, ack_id: str, *fields: str, message_id: str) -> bytes:
    """A mail From Alice answering our acknowledgement, with these Authentication-Results."""
    headers = "".join(f"Authentication-Results: {value}\r\n" for value in fields)
    return headers.encode() + make_mail(
        sender=ALICE, subject=f"Re: [#{ticket_id}] Printer", body=BODY,
        message_id=f"<{message_id}>", in_reply_to=f"<{ack_id}>",
    )


def effects(store: Store, ticket_id: int, message_id: str) -> dict[str, object]:
    """What Alice's mail did: ticket status, how it was stored, events, mail caused, to whom."""
    with store.sessions() as session:
        row = session.scalars(select(Message).where(Message.message_id == message_id)).one()
        caused = session.scalars(select(OutboxItem).where(
            OutboxItem.correlation_id == message_id)).all()
        untrusted = [e.detail["reason"] for e in tickets.events(session, ticket_id)
                     if e.kind == "agent.untrusted"]
        return {
            "status": session.get_one(Ticket, ticket_id).status,
            "ticket": row.ticket_id,
            "kind": row.kind,
            "untrusted": untrusted,
            "to": sorted(address for item in caused for address in item.envelope_to),
            "relayed": any(b"confirm your password" in item.raw for item in caused
                           if DANA in item.envelope_to),
        }


def test_forged_second_authentication_results_cannot_close_or_relay(
    store: Store, ctx: IngestContext
) -> None:
    """Our MX said softfail; the sender's own "pass" field below it borrows nothing."""
    ctx = dataclasses.replace(ctx, trust=TrustPolicy(authserv_id=MX))
    ticket_id, ack = dana_asks(store, ctx)
    outcome = run(store, ctx, alice_writes(ticket_id, ack, GENUINE_FAIL, FORGED_PASS,
                                           message_id="forged@evil.example"))
    assert (outcome.kind, outcome.ticket_id) == (OutcomeKind.REPLY, ticket_id)
    got = effects(store, ticket_id, "forged@evil.example")
    assert got["status"] != "closed"
    assert got["kind"] == "customer"
    assert not got["relayed"]
    assert DANA not in got["to"]  # only the team is told about a "customer" reply
    (reason,) = got["untrusted"]
    assert str(reason).startswith("forged Authentication-Results: 2 fields name mx.example.com")


def test_honest_agent_mail_closes_and_is_relayed(store: Store, ctx: IngestContext) -> None:
    """Our MX's single field with an aligned DKIM pass: the command runs, Dana gets the reply."""
    ctx = dataclasses.replace(ctx, trust=TrustPolicy(authserv_id=MX))
    ticket_id, ack = dana_asks(store, ctx)
    run(store, ctx, alice_writes(ticket_id, ack, GENUINE_PASS, message_id="honest@it.example"))
    got = effects(store, ticket_id, "honest@it.example")
    assert got["status"] == "closed"
    assert got["kind"] == "agent_reply"
    assert got["relayed"]
    assert got["to"] == [DANA]
    assert got["untrusted"] == []


def test_by_default_agent_mail_is_an_ordinary_reply(store: Store, ctx: IngestContext) -> None:
    """Secure by default: even a genuine pass grants nothing until [security] says how."""
    ticket_id, ack = dana_asks(store, ctx)
    run(store, ctx, alice_writes(ticket_id, ack, GENUINE_PASS, message_id="default@it.example"))
    got = effects(store, ticket_id, "default@it.example")
    assert (got["status"], got["ticket"], got["kind"]) == ("new", ticket_id, "customer")
    assert not got["relayed"]
    assert got["untrusted"] == [NOT_CONFIGURED]


def test_trust_from_header_grants_powers_knowingly(store: Store, ctx: IngestContext) -> None:
    """`trust_from_header = true`: the From address alone is enough, no header needed."""
    ctx = dataclasses.replace(ctx, trust=TrustPolicy(trust_from_header=True))
    ticket_id, ack = dana_asks(store, ctx)
    run(store, ctx, alice_writes(ticket_id, ack, message_id="from-header@it.example"))
    got = effects(store, ticket_id, "from-header@it.example")
    assert (got["status"], got["kind"], got["relayed"]) == ("closed", "agent_reply", True)


@pytest.mark.parametrize(
    ("security", "policy"),
    [
        ("", TrustPolicy()),
        ('trusted_authserv_id = "mx.example.com"\ntrusted_authres_fields = 3',
         TrustPolicy(authserv_id=MX, authres_fields=3)),
        ("trust_from_header = true", TrustPolicy(trust_from_header=True)),
    ],
)
def test_security_settings_reach_ingest(store: Store, tmp_path: Path, security: str,
                                        policy: TrustPolicy) -> None:
    """What [security] says is what ingest applies (helpdesk.context builds the policy)."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(f"[security]\n{security}\n", encoding="utf-8")
    settings = load_settings(config, {}, cwd=tmp_path)
    with store.sessions.begin() as session:
        assert context.ingest_context(session, settings, None).trust == policy
