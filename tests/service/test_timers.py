"""Time-driven rules with a controllable clock: pending tickets resolve, silence escalates."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk.context import BUILTIN_TEMPLATES
from helpdesk.delivery.outbox import Signer
from helpdesk.desk import directory, tickets, timers
from helpdesk.desk.actions import ActionContext
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.rules import load_rules
from helpdesk.rules.timers import Firing, TimerTicket, due, raise_priority
from helpdesk.store.models import OutboxItem, Ticket
from helpdesk.templates import load_templates
from helpdesk.values import Origin
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail

ROOT = Path(__file__).resolve().parents[2]


class TeamSpec:
    def __init__(self, name: str, address: str, lead: str | None = None) -> None:
        self.name, self.address, self.lead = name, address, lead


TEAMS = [TeamSpec("support", "it-support@example.com", "lead@example.com"),
         TeamSpec("networking", "net@example.com"), TeamSpec("infrastructure", "infra@example.com"),
         TeamSpec("identity-and-access", "iam@example.com"),
         TeamSpec("security", "sec@example.com")]


@pytest.fixture
def setup(store: Store, clock: Clock) -> tuple[ActionContext, list]:
    with store.sessions.begin() as session:
        directory.sync(session, TEAMS, [])
    templates = load_templates(ROOT / "templates")
    rules = load_rules(ROOT / "rules", teams={t.name for t in TEAMS}, agents=set(),
                       templates=templates.names | BUILTIN_TEMPLATES)
    ctx = ActionContext(helpdesk_name="Example IT", support_address="support@example.com",
                        tag_prefix="#", signer=Signer("example.com", b"k", "support@example.com"),
                        templates=templates, teams={t.name: t.address for t in TEAMS})
    return ctx, list(rules.timers)


def new_ticket(store: Store, clock: Clock, subject: str = "Laptop battery swollen") -> int:
    with store.sessions.begin() as session:
        outcome = ingest(session, make_mail(subject=subject, message_id=f"<{subject}@x>"),
                         Origin("file"), IngestContext(clock=clock))
    assert outcome.ticket_id is not None
    return outcome.ticket_id


def tick(store: Store, clock: Clock, ctx: ActionContext, timer_list: list) -> list[Firing]:
    with store.sessions.begin() as session:
        return timers.run(session, timer_list, ctx, clock.now)


def mails(store: Store) -> list[OutboxItem]:
    with store.sessions() as session:
        return list(session.scalars(select(OutboxItem).order_by(OutboxItem.id)))


def test_pending_ticket_is_resolved_after_a_quiet_week(
    store: Store, clock: Clock, setup: tuple[ActionContext, list]
) -> None:
    """A pending ticket with no activity for 7 days is resolved and the requester told; not
    before."""
    ctx, timer_list = setup
    ticket_id = new_ticket(store, clock)
    with store.sessions.begin() as session:
        tickets.set_status(session, ticket_id, "pending", actor="cli", now=clock.now)
        session.get_one(Ticket, ticket_id).first_response_at = clock.now
    clock.advance(days=6, hours=23)
    assert tick(store, clock, ctx, timer_list) == []
    clock.advance(hours=2)
    fired = tick(store, clock, ctx, timer_list)
    assert [f.timer.name for f in fired] == ["resolve-stale-pending"]
    with store.sessions() as session:
        ticket = session.get_one(Ticket, ticket_id)
        assert (ticket.status, ticket.resolved_at) == ("resolved", clock.now)
    (notice,) = mails(store)
    assert notice.envelope_to == ["dana.reyes@example.com"]
    assert f"[#{ticket_id}]" in notice.raw.decode()
    assert tick(store, clock, ctx, timer_list) == []


def test_unanswered_ticket_is_escalated_once_to_the_team_lead(
    store: Store, clock: Clock, setup: tuple[ActionContext, list]
) -> None:
    """No agent answer within 24 h (normal priority): priority high, lead told, only once."""
    ctx, timer_list = setup
    ticket_id = new_ticket(store, clock)
    with store.sessions.begin() as session:
        tickets.assign(session, ticket_id, team="support", actor="cli", now=clock.now)
    clock.advance(hours=23)
    assert tick(store, clock, ctx, timer_list) == []
    clock.advance(hours=2)
    assert [f.timer.name for f in tick(store, clock, ctx, timer_list)] == ["escalate-unanswered"]
    with store.sessions() as session:
        ticket = session.get_one(Ticket, ticket_id)
        assert ticket.priority == "high"
        assert "escalated" in {t.tag for t in ticket.tags}
        kinds = [e.kind for e in tickets.events(session, ticket_id)]
        assert "ticket.escalated" in kinds
    (forward,) = mails(store)
    assert forward.envelope_to == ["lead@example.com"]
    clock.advance(hours=10)
    assert tick(store, clock, ctx, timer_list) == []


def test_answered_ticket_is_not_escalated(
    store: Store, clock: Clock, setup: tuple[ActionContext, list]
) -> None:
    """A ticket an agent answered in time never escalates."""
    ctx, timer_list = setup
    ticket_id = new_ticket(store, clock)
    with store.sessions.begin() as session:
        session.get_one(Ticket, ticket_id).first_response_at = clock.now
    clock.advance(days=3)
    assert tick(store, clock, ctx, timer_list) == []


def test_due_is_pure_and_explains() -> None:
    """`due` reads only the snapshot and the clock, and says why a timer fires."""
    from datetime import UTC, datetime, timedelta

    from helpdesk.rules.timers import Timer

    timer = Timer(name="t", path=Path("x.toml"), no_response={"urgent": timedelta(hours=1)},
                  escalate=True)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ticket = TimerTicket(1, "open", "urgent", start, start, None)
    assert due([timer], ticket, start + timedelta(minutes=59)) == []
    (firing,) = due([timer], ticket, start + timedelta(minutes=61))
    assert "no agent response for 1h 1m" in firing.reason
    assert raise_priority("urgent") == "urgent"
    assert raise_priority("low") == "normal"
