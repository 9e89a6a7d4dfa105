"""The daemon's periodic job runs the time-driven rules once per lease holder."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from helpdesk.daemon import Daemon
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.settings import load_settings
from helpdesk.store.models import Ticket
from helpdesk.values import Origin
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail

ROOT = Path(__file__).resolve().parents[2]
TEAMS = "".join(f'\n[[team]]\nname = "{n}"\naddress = "{n}@example.com"\n'
                for n in ("support", "networking", "infrastructure", "identity-and-access",
                          "security"))


def daemon(tmp_path: Path, store: Store, clock: Clock, name: str) -> Daemon:
    maildir = tmp_path / "md"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    config = tmp_path / "helpdesk.toml"
    config.write_text(
        f'[helpdesk]\nsupport_address = "support@example.com"\n'
        f'[database]\nurl = "{store.url}"\n'
        f'[rules]\ndir = "{(ROOT / "rules").as_posix()}"\n'
        f'[templates]\ndir = "{(ROOT / "templates").as_posix()}"\n'
        f'[[maildir]]\nname = "local"\npath = "{maildir.as_posix()}"\n' + TEAMS
    )
    d = Daemon(load_settings(config, {}), config_path=config, environ={}, holder=name,
               clock=clock)
    d.startup()
    return d


def test_timers_fire_once_across_two_daemons(tmp_path: Path, store: Store, clock: Clock
                                             ) -> None:
    """A stale pending ticket is resolved by exactly one of two daemons sharing the store."""
    with store.sessions.begin() as session:
        outcome = ingest(session, make_mail(), Origin("file"), IngestContext(clock=clock))
        ticket = session.get_one(Ticket, outcome.ticket_id)
        ticket.status = "pending"
        ticket.first_response_at = clock.now
    first, second = daemon(tmp_path, store, clock, "a"), daemon(tmp_path, store, clock, "b")
    try:
        assert first.run_timers() == 0
        clock.advance(days=8)
        assert first.run_timers() + second.run_timers() == 1
        assert first.run_timers() + second.run_timers() == 0
        with store.sessions() as session:
            statuses = list(session.scalars(select(Ticket.status)))
        assert statuses == ["resolved"]
    finally:
        for d in (first, second):
            if d.engine is not None:
                d.engine.dispose()


def test_only_the_timers_lease_holder_runs_a_pass(tmp_path: Path, store: Store, clock: Clock
                                                  ) -> None:
    """While one daemon holds the timers lease, another's pass does nothing, even with a
    ticket due; the holder's pass fires it."""
    first, second = daemon(tmp_path, store, clock, "a"), daemon(tmp_path, store, clock, "b")
    try:
        assert first.run_timers() == 0  # takes the lease
        with store.sessions.begin() as session:
            outcome = ingest(session, make_mail(), Origin("file"),
                             IngestContext(clock=lambda: clock.now - timedelta(days=9)))
            ticket = session.get_one(Ticket, outcome.ticket_id)
            ticket.status = "pending"
            ticket.first_response_at = ticket.updated_at = clock.now - timedelta(days=8)
        assert second.run_timers() == 0
        with store.sessions() as session:
            assert list(session.scalars(select(Ticket.status))) == ["pending"]
        assert first.run_timers() == 1
        with store.sessions() as session:
            assert list(session.scalars(select(Ticket.status))) == ["resolved"]
    finally:
        for d in (first, second):
            if d.engine is not None:
                d.engine.dispose()
