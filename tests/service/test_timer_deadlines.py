"""Timers fire once per ticket state, and a pass reads only the tickets whose deadline passed.

Stored deadlines (`tickets.timer_due_at`) must follow every change that moves
them, whoever writes it: the ORM services, ingest's Core statements, raw SQL.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text

from helpdesk.delivery.outbox import Signer
from helpdesk.desk import directory, tickets, timers
from helpdesk.desk.actions import ActionContext
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.rules.timers import Firing, Timer
from helpdesk.store.models import Event, OutboxItem, Ticket, TicketTag, TimerFiring
from helpdesk.templates import load_templates
from helpdesk.values import Origin, Priority
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail

ROOT = Path(__file__).resolve().parents[2]
HERE = Path("timers.toml")


class TeamSpec:
    def __init__(self, name: str, address: str) -> None:
        self.name, self.address, self.lead = name, address, None


@pytest.fixture
def ctx(store: Store) -> ActionContext:
    with store.sessions.begin() as session:
        directory.sync(session, [TeamSpec("support", "it@example.com")], [])
    return ActionContext(helpdesk_name="Example IT", support_address="support@example.com",
                         tag_prefix="#", signer=Signer("example.com", b"k", "support@example.com"),
                         templates=load_templates(ROOT / "templates"),
                         teams={"support": "it@example.com"})


def new_ticket(store: Store, clock: Clock, n: int = 1) -> int:
    with store.sessions.begin() as session:
        outcome = ingest(session, make_mail(subject=f"Laptop {n}", message_id=f"<t{n}@x>",
                                            sender=f"User {n} <user{n}@example.com>"),
                         Origin("file"), IngestContext(clock=clock))
    assert outcome.ticket_id is not None
    return outcome.ticket_id


def tick(store: Store, clock: Clock, ctx: ActionContext, timer_list: list[Timer]
         ) -> list[Firing]:
    with store.sessions.begin() as session:
        return timers.run(session, timer_list, ctx, clock.now)


def count(store: Store, model: type, *where: object) -> int:
    with store.sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def fired_events(store: Store, ticket_id: int) -> int:
    return count(store, Event, Event.ticket_id == ticket_id, Event.kind == "timer.fired")


def test_a_no_response_notice_fires_once_not_every_pass(
    store: Store, clock: Clock, ctx: ActionContext
) -> None:
    """A no_response_hours timer with notify and tags mails the requester once, however many
    passes run while the ticket stays unanswered (it used to mail on every pass), and also
    when the requester writes again meanwhile (still unanswered: the same state)."""
    nag = Timer(name="sorry-for-the-wait", path=HERE, no_response={"normal": timedelta(hours=1)},
                notify="resolved", tags=("late",))
    ticket_id = new_ticket(store, clock)
    clock.advance(minutes=59)
    assert tick(store, clock, ctx, [nag]) == []
    for _ in range(30):  # half an hour of passes, one a minute
        clock.advance(minutes=1)
        tick(store, clock, ctx, [nag])
    assert count(store, OutboxItem) == 1
    assert fired_events(store, ticket_id) == 1
    with store.sessions.begin() as session:  # "any news?"
        ingest(session, make_mail(subject="Re: Laptop 1", message_id="<r1@x>",
                                  sender="User 1 <user1@example.com>", in_reply_to="<t1@x>"),
               Origin("file"), IngestContext(clock=clock))
    for _ in range(3):
        clock.advance(hours=1)
        assert tick(store, clock, ctx, [nag]) == []
    clock.advance(days=3)
    assert tick(store, clock, ctx, [nag]) == []
    assert count(store, OutboxItem) == 1


def test_an_idle_reminder_fires_once_per_quiet_period(
    store: Store, clock: Clock, ctx: ActionContext
) -> None:
    """An idle timer that only notifies does not repeat itself every idle period: its own
    change is not activity. A reply from the requester starts a new quiet period."""
    remind = Timer(name="remind", path=HERE, statuses=frozenset({"pending"}),
                   idle=timedelta(days=3), notify="resolved")
    ticket_id = new_ticket(store, clock)
    with store.sessions.begin() as session:
        tickets.set_status(session, ticket_id, "pending", actor="cli", now=clock.now)
    clock.advance(days=3, minutes=1)
    assert [f.timer.name for f in tick(store, clock, ctx, [remind])] == ["remind"]
    for _ in range(4):
        clock.advance(days=3, minutes=1)
        assert tick(store, clock, ctx, [remind]) == []
    assert count(store, OutboxItem) == 1
    with store.sessions.begin() as session:  # the requester writes; an agent sets pending
        ingest(session, make_mail(subject="Re: Laptop 1", message_id="<r1@x>",
                                  sender="User 1 <user1@example.com>", in_reply_to="<t1@x>"),
               Origin("file"), IngestContext(clock=clock))
        tickets.set_status(session, ticket_id, "pending", actor="cli", now=clock.now)
    clock.advance(days=2)
    assert tick(store, clock, ctx, [remind]) == []
    clock.advance(days=1, minutes=1)
    assert [f.timer.name for f in tick(store, clock, ctx, [remind])] == ["remind"]
    assert count(store, OutboxItem) == 2


def test_a_pass_reads_only_the_tickets_that_are_due_or_changed(
    store: Store, clock: Clock, ctx: ActionContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a first pass has stored the deadlines, a pass loads no ticket until one is due
    or has changed, and then that one only."""
    looked_at: list[int] = []
    real = timers._run_chunk

    def spy(session, timer_list, ids, ctx_, now):  # type: ignore[no-untyped-def]
        looked_at.extend(ids)
        return real(session, timer_list, ids, ctx_, now)

    monkeypatch.setattr(timers, "_run_chunk", spy)
    escalate = Timer(name="late", path=HERE, no_response={"normal": timedelta(hours=24)},
                     tags=("late",))
    ids = [new_ticket(store, clock, n) for n in range(1, 21)]
    tick(store, clock, ctx, [escalate])
    assert sorted(looked_at) == ids  # new tickets: stale, all looked at once
    looked_at.clear()
    for _ in range(5):
        clock.advance(hours=1)
        assert tick(store, clock, ctx, [escalate]) == []
    assert looked_at == []
    with store.sessions.begin() as session:
        tickets.set_status(session, ids[3], "pending", actor="cli", now=clock.now)
    tick(store, clock, ctx, [escalate])
    assert looked_at == [ids[3]]
    looked_at.clear()
    clock.advance(hours=20)
    fired = tick(store, clock, ctx, [escalate])
    assert sorted(f.ticket_id for f in fired) == ids
    assert sorted(looked_at) == ids


def test_the_first_pass_after_the_timers_change_recomputes_every_deadline(
    store: Store, clock: Clock, ctx: ActionContext
) -> None:
    """Deadlines computed for other timers are not trusted: a new timer applies at once."""
    slow = Timer(name="late", path=HERE, no_response={"normal": timedelta(days=30)}, tags=("x",))
    ticket_id = new_ticket(store, clock)
    tick(store, clock, ctx, [slow])
    clock.advance(hours=2)
    fast = Timer(name="late", path=HERE, no_response={"normal": timedelta(hours=1)}, tags=("x",))
    assert [f.ticket_id for f in tick(store, clock, ctx, [fast])] == [ticket_id]


# -- every writer keeps the deadline honest ------------------------------------------------

PENDING_DAY = Timer(name="stale", path=HERE, statuses=frozenset({"pending"}),
                    idle=timedelta(days=1), tags=("stale",))
LATE = Timer(name="late", path=HERE, no_response={"urgent": timedelta(hours=1),
                                                  "normal": timedelta(hours=48)},
             tags=("late",))
WRITER_TIMERS = [PENDING_DAY, LATE]


def settled(store: Store, clock: Clock, ctx: ActionContext) -> int:
    """An open ticket whose deadline is stored: `late` in 48 h, `stale` never."""
    ticket_id = new_ticket(store, clock)
    assert tick(store, clock, ctx, WRITER_TIMERS) == []
    with store.sessions() as session:
        due = session.get_one(Ticket, ticket_id).timer_due_at
    assert due == clock.now + timedelta(hours=48)
    return ticket_id


def fired_names(store: Store, clock: Clock, ctx: ActionContext) -> list[str]:
    return [f.timer.name for f in tick(store, clock, ctx, WRITER_TIMERS)]


def test_status_set_by_a_service_moves_the_deadline(
    store: Store, clock: Clock, ctx: ActionContext
) -> None:
    """tickets.set_status (the CLI, #status, rules): pending makes `stale` due in a day."""
    ticket_id = settled(store, clock, ctx)
    with store.sessions.begin() as session:
        tickets.set_status(session, ticket_id, "pending", actor="cli", now=clock.now)
    clock.advance(days=1, minutes=1)
    assert fired_names(store, clock, ctx) == ["stale"]


def test_priority_raised_by_a_service_moves_the_deadline(
    store: Store, clock: Clock, ctx: ActionContext
) -> None:
    """tickets.change_priority (#priority, rules): urgent brings `late` to one hour."""
    ticket_id = settled(store, clock, ctx)
    with store.sessions.begin() as session:
        tickets.change_priority(session, session.get_one(Ticket, ticket_id), Priority.URGENT,
                                actor="cli", now=clock.now)
    clock.advance(hours=1, minutes=1)
    assert fired_names(store, clock, ctx) == ["late"]


def test_a_reply_that_reopens_a_ticket_brings_its_timers_back(
    store: Store, clock: Clock, ctx: ActionContext
) -> None:
    """Ingest's own SQL (not the ORM) reopening a resolved ticket makes it due again."""
    ticket_id = settled(store, clock, ctx)
    with store.sessions.begin() as session:
        tickets.set_status(session, ticket_id, "resolved", actor="cli", now=clock.now)
    tick(store, clock, ctx, WRITER_TIMERS)
    with store.sessions() as session:
        assert session.get_one(Ticket, ticket_id).timer_due_at is None
    with store.sessions.begin() as session:
        ingest(session, make_mail(subject="Re: Laptop 1", message_id="<r1@x>",
                                  sender="User 1 <user1@example.com>", in_reply_to="<t1@x>"),
               Origin("file"), IngestContext(clock=clock))
    clock.advance(hours=48, minutes=1)
    assert fired_names(store, clock, ctx) == ["late"]


def test_a_change_made_in_plain_sql_moves_the_deadline(
    store: Store, clock: Clock, ctx: ActionContext
) -> None:
    """An admin's UPDATE by hand is noticed too (the database triggers, not our code)."""
    ticket_id = settled(store, clock, ctx)
    with store.sessions.begin() as session:
        session.execute(text("UPDATE tickets SET status = 'pending' WHERE id = :id"),
                        {"id": ticket_id})
    clock.advance(days=1, minutes=1)
    assert fired_names(store, clock, ctx) == ["stale"]


def test_a_removed_tag_is_noticed(store: Store, clock: Clock, ctx: ActionContext) -> None:
    """Removing `escalated` lets an escalation timer fire again (tags are their own table)."""
    escalate = Timer(name="esc", path=HERE, no_response={"normal": timedelta(hours=1)},
                     escalate=True)
    ticket_id = new_ticket(store, clock)
    clock.advance(hours=2)
    assert len(tick(store, clock, ctx, [escalate])) == 1
    with store.sessions.begin() as session:
        session.get_one(Ticket, ticket_id).priority = "normal"  # an agent lowers it back
    clock.advance(hours=1)
    assert tick(store, clock, ctx, [escalate]) == []  # escalated: once
    with store.sessions.begin() as session:
        session.execute(delete(TicketTag).where(TicketTag.ticket_id == ticket_id,
                                                TicketTag.tag == "escalated"))
        session.execute(delete(TimerFiring).where(TimerFiring.ticket_id == ticket_id))
    assert len(tick(store, clock, ctx, [escalate])) == 1


@pytest.mark.parametrize("store", [pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_two_passes_racing_without_a_lease_fire_once(
    store: Store, clock: Clock, ctx: ActionContext
) -> None:
    """The firing record is a claim: two passes at the same instant mail the requester once."""
    nag = Timer(name="nag", path=HERE, no_response={"normal": timedelta(hours=1)},
                notify="resolved")
    new_ticket(store, clock)
    assert tick(store, clock, ctx, [nag]) == []  # deadlines stored: the passes below only read
    clock.advance(hours=2)
    barrier = threading.Barrier(2)
    results: list[int] = []
    errors: list[BaseException] = []

    def race() -> None:
        try:
            with store.sessions.begin() as session:
                barrier.wait()
                results.append(len(timers.run(session, [nag], ctx, clock.now)))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == [0, 1]
    assert count(store, OutboxItem) == 1


def test_a_pass_in_small_chunks_sees_every_due_ticket_once(
    store: Store, clock: Clock, ctx: ActionContext
) -> None:
    """Chunks follow the ids: ten due tickets in chunks of three all fire, each once."""
    nag = Timer(name="nag", path=HERE, no_response={"normal": timedelta(hours=1)},
                tags=("late",))
    ids = [new_ticket(store, clock, n) for n in range(1, 11)]
    clock.advance(hours=2)
    with store.sessions.begin() as session:
        fired = timers.run(session, [nag], ctx, clock.now, chunk=3)
    assert sorted(f.ticket_id for f in fired) == ids
    with store.sessions.begin() as session:
        assert timers.run(session, [nag], ctx, clock.now, chunk=3) == []
