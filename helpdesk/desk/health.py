"""The desk's health at a glance, from the store: what `helpdesk status` and `mailbox list` show.

Everything here is read from what the daemons record as they work — each
mailbox's state row (health, last error, last successful poll, lease), the
daemons' heartbeats, the outbox and the relay's state, the quarantine — so
it describes every daemon sharing the store, not only one process. It
never contacts a mail server; `helpdesk mailbox check` does that.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from helpdesk.delivery import outbox as outbox_service
from helpdesk.delivery import views
from helpdesk.flow import mailboxes
from helpdesk.settings import Settings
from helpdesk.store.models import MailboxState, QuarantineItem, Ticket
from helpdesk.values import TicketStatus


@dataclass(frozen=True)
class SourceHealth:
    """One configured source (an IMAP mailbox or a Maildir) as the store last saw it."""

    name: str
    kind: str  # "imap" or "maildir"
    where: str
    state: str  # "ok", "login failed", "unreachable", ..., "never polled", "stale"
    last_error: str | None
    problem_since: datetime | None
    last_poll_at: datetime | None
    lease_holder: str | None
    counters: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.state == "ok"


@dataclass(frozen=True)
class Health:
    """The whole desk: sources, daemons, outbox, relay, quarantine, the oldest waiting ticket."""

    sources: tuple[SourceHealth, ...]
    daemons: tuple[str, ...]
    outbox: outbox_service.QueueCounts
    relays: tuple[views.RelayStatus, ...]
    quarantine_held: int
    oldest_unanswered: tuple[int, datetime] | None
    warnings: tuple[str, ...]

    @property
    def problems(self) -> list[str]:
        """What needs an admin, in plain words (empty: all is well)."""
        found = [f"mailbox {s.name}: {s.state}" + (f" ({s.last_error})" if s.last_error else "")
                 for s in self.sources if not s.ok]
        if self.sources and not self.daemons:
            found.append("no daemon is running (no live heartbeat in the store)")
        found += [f"relay {r.relay}: {r.problem or r.state} ({r.error})"
                  for r in self.relays if r.state != "ok"]
        if self.outbox.failed:
            found.append(f"{self.outbox.failed} outgoing mails failed (helpdesk outbox list "
                         "--state failed)")
        if self.quarantine_held:
            found.append(f"{self.quarantine_held} mails held in quarantine "
                         "(helpdesk quarantine list)")
        return found + list(self.warnings)


def sources(session: Session, settings: Settings, now: datetime) -> list[SourceHealth]:
    """Each configured IMAP mailbox and Maildir with its recorded state."""
    states = {s.name: s for s in mailboxes.list_states(session)}
    found = []
    for box in settings.mailboxes:
        stale = timedelta(seconds=2 * box.poll_interval + 2 * settings.daemon.lease_seconds)
        found.append(_source(states.get(box.name), box.name, "imap",
                             f"{box.host}:{box.port} {box.folder}", stale, now))
    for maildir in settings.maildirs:
        stale = timedelta(seconds=2 * maildir.poll_interval + 2 * settings.daemon.lease_seconds)
        found.append(_source(states.get(maildir.name), maildir.name, "maildir",
                             str(maildir.path), stale, now))
    return found


def _source(state: MailboxState | None, name: str, kind: str, where: str,
            stale_after: timedelta, now: datetime) -> SourceHealth:
    if state is None:
        return SourceHealth(name, kind, where, "never polled", None, None, None, None, {})
    health = state.health or "ok"
    if health != "ok" and state.problem_since is not None:
        shown = f"{health}, retrying since {state.problem_since:%Y-%m-%d %H:%M} UTC"
    else:
        shown = health
    # A Maildir records no poll time; only IMAP passes do.
    if (health == "ok" and kind == "imap" and state.last_poll_at is not None
            and now - state.last_poll_at > stale_after):
        shown = f"stale: no successful poll since {state.last_poll_at:%Y-%m-%d %H:%M} UTC"
    return SourceHealth(name, kind, where, shown, state.last_error if health != "ok" else None,
                        state.problem_since, state.last_poll_at, state.lease_holder,
                        {k: int(v) for k, v in (state.counters or {}).items()})


def oldest_unanswered(session: Session) -> tuple[int, datetime] | None:
    """The oldest new or open ticket no agent has answered yet: (id, created_at)."""
    row = session.execute(
        select(Ticket.id, Ticket.created_at)
        .where(Ticket.status.in_([TicketStatus.NEW.value, TicketStatus.OPEN.value]),
               Ticket.first_response_at.is_(None), Ticket.merged_into_id.is_(None))
        .order_by(Ticket.created_at, Ticket.id)
        .limit(1)
    ).first()
    return (int(row[0]), row[1]) if row is not None else None


def health(session: Session, settings: Settings, now: datetime,
           warnings: tuple[str, ...] = ()) -> Health:
    """Everything `helpdesk status` shows."""
    held = session.scalar(select(func.count()).select_from(QuarantineItem)
                          .where(QuarantineItem.state == "held")) or 0
    return Health(
        sources=tuple(sources(session, settings, now)),
        daemons=tuple(mailboxes.live_daemons(session, now)),
        outbox=outbox_service.queue_counts(session, now=now),
        relays=tuple(views.relay_status(session)),
        quarantine_held=int(held),
        oldest_unanswered=oldest_unanswered(session),
        warnings=warnings,
    )
