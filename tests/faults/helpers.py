"""Helpers for the sender's fault scenarios: queue mail, build senders, count at the relay."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from helpdesk.delivery import outbox
from helpdesk.settings import SmtpSettings
from helpdesk.smtp import Backoff, Sender
from helpdesk.store.models import OutboxItem, Ticket, utcnow
from helpdesk.values import Address, MessageKind, OutgoingMail
from tests.conftest import Store
from tests.faults.relay import ScriptedRelay

SIGNER = outbox.Signer(domain="example.com", key=b"k" * 32, loop_id="support@example.com")
FAST = Backoff(base=0.05, cap=0.2)


def make_ticket(store: Store, subject: str = "VPN drops every hour") -> int:
    with store.sessions.begin() as session:
        ticket = Ticket(subject=subject, status="open")
        session.add(ticket)
        session.flush()
        return ticket.id


def queue(store: Store, n: int = 1, *, cc: tuple[str, ...] = (), now: datetime | None = None,
          ticket_id: int | None = None, sessions: Any = None) -> list[int]:
    """`n` outgoing mails, To user{i}@example.org (and `cc`), committed; their ids."""
    ids = []
    with (sessions or store.sessions).begin() as session:
        for i in range(n):
            mail = OutgoingMail(
                kind=MessageKind.AUTO_REPLY, ticket_id=ticket_id,
                from_=Address("support@example.com", "IT Help Desk"),
                to=(Address(f"user{i}@example.org", "Jörg Ünlü"),),
                cc=tuple(Address(a) for a in cc),
                subject=f"[#{i}] Ihre Anfrage", body="Wir haben Ihre Anfrage erhalten.\n",
                automated=True,
            )
            ids.append(outbox.enqueue(session, mail, SIGNER, now=now or utcnow()).id)
    return ids


def smtp_settings(relay: ScriptedRelay | int, **overrides: Any) -> SmtpSettings:
    port = relay if isinstance(relay, int) else relay.port
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "timeout": 5.0}
    values.update(overrides)
    return SmtpSettings.model_validate(values)


def make_sender(store: Store, relay: ScriptedRelay | int, *, holder: str = "test",
                policy: outbox.OutboxPolicy | None = None,
                clock: Callable[[], datetime] = utcnow, watch: bool = False,
                smtp: dict[str, Any] | None = None, **kwargs: Any) -> Sender:
    kwargs.setdefault("relay_backoff", FAST)
    return Sender(store.sessions, smtp_settings(relay, **(smtp or {})),
                  policy or outbox.OutboxPolicy(max_permanent_failures=1), holder=holder,
                  clock=clock, rng=random.Random(1), watch=watch, **kwargs)


def items(store: Store) -> list[OutboxItem]:
    with store.sessions() as session:
        found = list(session.scalars(select(OutboxItem).order_by(OutboxItem.id)
                                     .options(selectinload(OutboxItem.recipients))))
        session.expunge_all()
        return found


def recipient_states(store: Store) -> dict[tuple[str, str], str]:
    """(Message-ID, address) -> state of that recipient."""
    return {(i.message_id, r.address): r.state for i in items(store) for r in i.recipients}


def assert_exactly_once(store: Store, relay: ScriptedRelay) -> None:
    """Each recipient recorded as sent got the mail exactly once; no other got it at all."""
    counts = relay.deliveries()
    states = recipient_states(store)
    twice = {key: n for key, n in counts.items() if n > 1}
    assert twice == {}, f"delivered more than once: {twice}"
    sent = {key for key, state in states.items() if state == "sent"}
    assert set(counts) == sent, (
        f"relay got {sorted(set(counts) - sent)} not recorded as sent; "
        f"recorded as sent but never received: {sorted(sent - set(counts))}")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


async def async_wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
                           step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


@contextlib.asynccontextmanager
async def running(*senders: Sender) -> AsyncIterator[asyncio.Event]:
    """`sender.run(stop)` for each sender as a task; stopped (and awaited) at the end."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in senders]
    try:
        yield stop
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=15)
        assert not pending, "run() did not stop within 15 s"
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


def lease(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def counter(events: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(e["event"] for e in events)
