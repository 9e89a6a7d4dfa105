"""An agent's #commands through ingest: the per-mail limit, its report, and tags."""

from __future__ import annotations

import email
import email.policy

import pytest
from sqlalchemy import select

from helpdesk.delivery.outbox import Signer
from helpdesk.desk import directory, tickets
from helpdesk.desk.actions import ActionContext
from helpdesk.errors import InvalidInput
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.mail.commands import MAX_COMMANDS
from helpdesk.mail.trust import TrustPolicy
from helpdesk.store.models import Message, OutboxItem, Ticket
from helpdesk.values import Origin
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail

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
def ctx(store: Store, clock: Clock) -> IngestContext:
    agents = [Spec("Alice Admin", addresses=["alice@it.example.com"], teams=[])]
    with store.sessions.begin() as session:
        directory.sync(session, [], agents)  # type: ignore[arg-type]
    actions = ActionContext(helpdesk_name="Example IT", support_address=SUPPORT, tag_prefix="#",
                            signer=Signer("example.com", b"key", SUPPORT),
                            is_own_address=lambda a: a.startswith("support"))
    return IngestContext(is_own_address=lambda a: a.startswith("support"), clock=clock,
                         loop_id=SUPPORT, actions=actions, trust=TrustPolicy(authserv_id=MX))


def run(store: Store, ctx: IngestContext, raw: bytes) -> int:
    with store.sessions.begin() as session:
        outcome = ingest(session, raw, Origin("lmtp", recipient=SUPPORT), ctx)
    assert outcome.ticket_id is not None
    return outcome.ticket_id


def agent_mail(ticket_id: int, body: str, message_id: str = "<alice-1@x>") -> bytes:
    return make_mail(sender=ALICE, subject=f"Re: [#{ticket_id}] Printer", message_id=message_id,
                     body=body, extra={"Authentication-Results": AUTH_OK})


def test_commands_past_the_limit_are_reported_back_not_applied(
    store: Store, ctx: IngestContext
) -> None:
    """60 #tag lines: the first 50 are applied, the agent hears about the other 10, and the
    mail is kept as a note instead of being relayed to the requester."""
    ticket_id = run(store, ctx, make_mail(sender=DANA, subject="Printer"))
    body = "".join(f"#tag t{i}\n" for i in range(MAX_COMMANDS + 10)) + "\nDana, all fixed.\n"
    assert run(store, ctx, agent_mail(ticket_id, body)) == ticket_id
    with store.sessions() as session:
        ticket = session.get_one(Ticket, ticket_id)
        assert {t.tag for t in ticket.tags} == {f"t{i}" for i in range(MAX_COMMANDS)}
        events = tickets.events(session, ticket_id)
        (added,) = [e for e in events if e.kind == "tags.added"]
        assert added.detail["tags"] == [f"t{i}" for i in range(MAX_COMMANDS)]
        (rejected,) = [e for e in events if e.kind == "commands.rejected"]
        assert rejected.detail["rejected"] == [
            f"10 more command lines: at most {MAX_COMMANDS} commands are applied from one mail"
        ]
        row = session.scalars(select(Message).where(Message.message_id == "alice-1@x")).one()
        assert row.kind == "note"
        (answer,) = session.scalars(select(OutboxItem)).all()
        assert answer.envelope_to == ["alice@it.example.com"]
        text = email.message_from_bytes(answer.raw, policy=email.policy.default)
        part = text.get_body(("plain",))
        assert part is not None
        assert "10 more command lines" in part.get_content()


def test_a_tag_too_long_for_the_store_is_rejected_not_stored(
    store: Store, ctx: IngestContext
) -> None:
    """A #tag longer than the tag column is answered as an error; the other tags are added."""
    ticket_id = run(store, ctx, make_mail(sender=DANA, subject="Printer"))
    long_tag = "x" * (tickets.MAX_TAG_LENGTH + 1)
    run(store, ctx, agent_mail(ticket_id, f"#tag ok\n#tag {long_tag}\n#tag fine\n\nDone.\n"))
    with store.sessions() as session:
        ticket = session.get_one(Ticket, ticket_id)
        assert {t.tag for t in ticket.tags} == {"ok", "fine"}
        (rejected,) = [e for e in tickets.events(session, ticket_id)
                       if e.kind == "commands.rejected"]
        (line,) = rejected.detail["rejected"]
        assert line.startswith(f"#tag {long_tag}: tag 'xxxxxxxxxxxxxxxxxxxx'... is longer than")


def test_add_tags_refuses_a_tag_longer_than_the_column(store: Store, ctx: IngestContext,
                                                       clock: Clock) -> None:
    """add_tags checks before the store does (PostgreSQL would fail the whole transaction)."""
    ticket_id = run(store, ctx, make_mail(sender=DANA, subject="Printer"))
    with store.sessions.begin() as session:
        ticket = session.get_one(Ticket, ticket_id)
        with pytest.raises(InvalidInput, match="longer than 100 characters"):
            tickets.add_tags(session, ticket, ["a", "b" * 101], actor="cli", now=clock.now)
        assert tickets.add_tags(session, ticket, ["a", "a", "b"], actor="cli",
                                now=clock.now) == ["a", "b"]
