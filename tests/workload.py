"""Generated workload for stats and report tests: weeks of tickets across teams.

Each ticket has a life like the desk gives it: created `new`, an agent's
first response moves it to `open`, some are resolved, a few reopened or
merged; every status change is a `status.changed` event, as the services
write them. The generator is seeded, so a test sees the same desk each run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from helpdesk.store.models import Contact, Event, Team, Ticket, TicketTag

TEAMS = ("networking", "support", "identity", None)
DOMAINS = ("corp.example", "shop.example", "lab.example", "<b>bold</b>.example")
TAGS = ("vpn", "printer", "email", "access", "<script>alert(1)</script>", "]]>")


@dataclass
class Workload:
    """What was generated, for tests that count on their own."""

    created: list[datetime] = field(default_factory=list)
    ticket_ids: list[int] = field(default_factory=list)


def generate(session: Session, *, now: datetime, days: int = 60, seed: int = 7) -> Workload:
    """About three tickets a day over `days` days up to `now` (quiet days included)."""
    rng = random.Random(seed)
    teams = {name: Team(name=name) for name in TEAMS if name is not None}
    contacts: dict[str, Contact] = {}
    made = Workload()
    for day in range(days, -1, -1):
        for _ in range(rng.choice((0, 1, 2, 3, 3, 4, 6))):
            created = now - timedelta(days=day) + timedelta(seconds=rng.randrange(86_400))
            if created >= now:
                continue
            domain = rng.choice(DOMAINS)
            who = f"user{rng.randrange(5)}@{domain}"
            requester = contacts.setdefault(who, Contact(address=who, name=""))
            team_name = rng.choice(TEAMS)
            ticket = Ticket(subject="generated", status="new", priority="normal",
                            requester=requester,
                            team=teams[team_name] if team_name else None,
                            created_at=created, updated_at=created)
            ticket.tags = [TicketTag(tag=t) for t in rng.sample(TAGS, rng.choice((0, 1, 2)))]
            session.add(ticket)
            session.flush()
            _live(session, ticket, rng, now)
            made.created.append(created)
            made.ticket_ids.append(ticket.id)
    if len(made.ticket_ids) > 2:
        # A merged duplicate counts nowhere: not opened, not open, not measured.
        dup = session.get(Ticket, made.ticket_ids[-2])
        assert dup is not None
        _change(session, dup, dup.status, "closed", dup.created_at + timedelta(minutes=5))
        dup.merged_into_id = made.ticket_ids[0]
    session.flush()
    return made


def _live(session: Session, ticket: Ticket, rng: random.Random, now: datetime) -> None:
    """Response, resolution and perhaps a reopening, each only if it happened before `now`."""
    when = ticket.created_at
    if rng.random() < 0.8:
        when += timedelta(minutes=rng.choice((5, 30, 90, 240, 600, 2000)))
        if when >= now:
            return
        ticket.first_response_at = when
        _change(session, ticket, "new", "open", when)
    if rng.random() < 0.65:
        when += timedelta(hours=rng.choice((1, 3, 20, 50, 120)))
        if when >= now:
            return
        ticket.resolved_at = when
        _change(session, ticket, ticket.status, "resolved", when)
        if rng.random() < 0.2:
            when += timedelta(hours=rng.choice((2, 30)))
            if when >= now:
                return
            ticket.resolved_at = None
            _change(session, ticket, "resolved", "open", when)


def _change(session: Session, ticket: Ticket, before: str, after: str, when: datetime) -> None:
    ticket.status = after
    ticket.updated_at = when
    session.add(Event(ticket_id=ticket.id, actor="agent@example.com", kind="status.changed",
                      detail={"from": before, "to": after}, created_at=when))
