"""Time-driven rules (`[[timer]]` in rules/*.toml): what happens to a ticket when nothing happens.

Pure: the schema of a timer table; `deadline` (when a timer fires for a
ticket as it is), `next_deadline` (the earliest of them, which the store keeps
so that a timer pass reads only the tickets that are due) and `due` (which
timers fire at `now`). The daemon's periodic job applies them
(`helpdesk.desk.timers`).

A timer fires at most once per ticket state (`state_key`): an idle timer once
per quiet period (the status and the time of the last change), a timer on
`no_response_hours` alone once per ticket (a ticket is unanswered only once).
The change the timer pass itself makes (the ticket's `updated_at`, a status)
is not a new state for the timers that made it, so a notice never repeats
itself; a change by anyone else (a mail, an agent, another timer later) is.

```toml
[[timer]]
name = "resolve-stale-pending"
status = "pending"              # tickets in this status (string or array)
idle_days = 7                   # with no activity (mail in or out, change) for this long
[timer.then]
status = "resolved"             # move the ticket
notify = "resolved"             # mail this template to the requester

[[timer]]
name = "escalate-unanswered"
no_response_hours = { urgent = 1, high = 4, normal = 24, low = 72 }   # per priority
[timer.then]
escalate = true                 # forward to the team lead, raise priority one step, tag "escalated"
```
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from helpdesk.values import Priority, TicketStatus

ESCALATED_TAG = "escalated"
_WHEN_KEYS = ("status", "idle_days", "no_response_hours")
_THEN_KEYS = ("status", "notify", "escalate", "tags")


@dataclass(frozen=True, slots=True)
class Timer:
    """One validated `[[timer]]`."""

    name: str
    path: Path
    statuses: frozenset[str] = frozenset()
    idle: timedelta | None = None
    no_response: Mapping[str, timedelta] = field(default_factory=dict)
    set_status: TicketStatus | None = None
    notify: str | None = None
    escalate: bool = False
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TimerTicket:
    """What timers look at: a snapshot of a ticket's clock."""

    id: int
    status: str
    priority: str
    created_at: datetime
    updated_at: datetime
    first_response_at: datetime | None
    tags: frozenset[str] = frozenset()
    merged: bool = False


@dataclass(frozen=True, slots=True)
class Firing:
    """A timer that fires for a ticket, and why."""

    timer: Timer
    ticket_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class FiredRecord:
    """The last firing of a timer on a ticket: the state it fired in and the one it left."""

    state: str
    left_state: str | None = None


def state_key(timer: Timer, ticket: TimerTicket) -> str:
    """The ticket's state as far as `timer` is concerned; it fires at most once per state."""
    if timer.idle is not None:
        return f"{ticket.status}@{ticket.updated_at.isoformat()}"
    return "unanswered"


def deadline(timer: Timer, ticket: TimerTicket, fired: FiredRecord | None = None
             ) -> datetime | None:
    """When `timer` fires for `ticket` as it is now; None when it cannot.

    None: the timer does not apply to the status, the ticket is merged or
    answered, or the timer already fired in this state (`fired`).
    """
    if ticket.merged:
        return None
    if timer.statuses and ticket.status not in timer.statuses:
        return None
    if not timer.statuses and ticket.status in (TicketStatus.RESOLVED, TicketStatus.CLOSED):
        return None  # a closed matter does not escalate
    if fired is not None and state_key(timer, ticket) in (fired.state, fired.left_state):
        return None
    times = []
    if timer.idle is not None:
        times.append(ticket.updated_at + timer.idle)
    if timer.no_response:
        target = timer.no_response.get(ticket.priority)
        if target is None or ticket.first_response_at is not None:
            return None
        if timer.escalate and ESCALATED_TAG in ticket.tags:
            return None  # escalate once
        times.append(ticket.created_at + target)
    return max(times) if times else None  # a timer needs a time condition; the schema checks


def next_deadline(timers: Sequence[Timer], ticket: TimerTicket,
                  fired: Mapping[str, FiredRecord] | None = None) -> datetime | None:
    """The earliest time one of `timers` fires for `ticket` as it is; None when none can."""
    fired = fired or {}
    times = [d for t in timers if (d := deadline(t, ticket, fired.get(t.name))) is not None]
    return min(times) if times else None


def due(timers: Sequence[Timer], ticket: TimerTicket, now: datetime,
        fired: Mapping[str, FiredRecord] | None = None) -> list[Firing]:
    """The timers that fire for `ticket` at `now`, in file order; `fired` by timer name."""
    fired = fired or {}
    found = []
    for timer in timers:
        when = deadline(timer, ticket, fired.get(timer.name))
        if when is not None and when <= now:
            found.append(Firing(timer, ticket.id, _reason(timer, ticket, now)))
    return found


def _reason(timer: Timer, ticket: TimerTicket, now: datetime) -> str:
    reasons = [f"status {ticket.status}"] if timer.statuses else []
    if timer.idle is not None:
        reasons.append(f"no activity for {_human(now - ticket.updated_at)}")
    if timer.no_response:
        target = timer.no_response[ticket.priority]
        reasons.append(f"no agent response for {_human(now - ticket.created_at)} "
                       f"(target for {ticket.priority}: {_human(target)})")
    return "; ".join(reasons)


def conditions_signature(timers: Sequence[Timer]) -> str:
    """A hash of what decides the timers' deadlines (their conditions), for noticing a change."""
    parts = [
        [t.name, sorted(t.statuses), t.idle.total_seconds() if t.idle else None,
         sorted((p, span.total_seconds()) for p, span in t.no_response.items()), t.escalate]
        for t in timers
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _human(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins}m" if hours else f"{mins}m"


def raise_priority(priority: str) -> str:
    """One step up: low → normal → high → urgent (urgent stays)."""
    order = [p.value for p in Priority]
    index = order.index(priority) if priority in order else 1
    return order[min(index + 1, len(order) - 1)]


def parse_timer(
    table: Mapping[str, object], path: Path, templates: frozenset[str]
) -> tuple[Timer | None, list[tuple[str, str]]]:
    """Validate one `[[timer]]` table; returns the timer (or None) and (key, problem) pairs."""
    problems: list[tuple[str, str]] = []
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(("name", "is required"))
        name = ""
    for key in table:
        if key not in ("name", "description", "then", *_WHEN_KEYS):
            allowed = ", ".join(("name", "description", *_WHEN_KEYS, "then"))
            problems.append((key, f"unknown key; allowed: {allowed}"))
    statuses = _statuses(table.get("status"), problems)
    idle = _days(table.get("idle_days"), problems)
    no_response = _per_priority(table.get("no_response_hours"), problems)
    if idle is None and not no_response and "idle_days" not in table \
            and "no_response_hours" not in table:
        problems.append(("idle_days", "a timer needs idle_days or no_response_hours"))
    then = table.get("then")
    if not isinstance(then, dict) or not then:
        problems.append(("then", "is required: a table with status, notify, escalate or tags"))
        then = {}
    for key in then:
        if key not in _THEN_KEYS:
            problems.append((f"then.{key}", f"unknown key; allowed: {', '.join(_THEN_KEYS)}"))
    set_status = _one_status(then.get("status"), problems)
    notify = then.get("notify")
    if notify is not None and (not isinstance(notify, str) or notify not in templates):
        known = ", ".join(sorted(templates))
        problems.append(("then.notify", f"unknown template {notify!r}; known: {known}"))
        notify = None
    escalate = then.get("escalate", False)
    if not isinstance(escalate, bool):
        problems.append(("then.escalate", "must be true or false"))
        escalate = False
    tags = then.get("tags", ())
    if isinstance(tags, str):
        tags = (tags,)
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) and t for t in tags):
        problems.append(("then.tags", "must be a string or an array of strings"))
        tags = ()
    if problems:
        return None, problems
    return Timer(
        name=name.strip(), path=path, statuses=statuses, idle=idle, no_response=no_response,
        set_status=set_status, notify=notify if isinstance(notify, str) else None,
        escalate=escalate, tags=tuple(tags),
    ), []


def _statuses(value: object, problems: list[tuple[str, str]]) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = [value] if isinstance(value, str) else value
    allowed = {s.value for s in TicketStatus}
    if not isinstance(items, list) or not all(isinstance(i, str) and i in allowed for i in items):
        problems.append(("status", f"must be one or more of {', '.join(sorted(allowed))}"))
        return frozenset()
    return frozenset(items)


def _one_status(value: object, problems: list[tuple[str, str]]) -> TicketStatus | None:
    if value is None:
        return None
    try:
        return TicketStatus(str(value))
    except ValueError:
        allowed = ", ".join(s.value for s in TicketStatus)
        problems.append(("then.status", f"must be one of {allowed} (got {value!r})"))
        return None


def _days(value: object, problems: list[tuple[str, str]]) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        problems.append(("idle_days", f"must be a positive number of days (got {value!r})"))
        return None
    return timedelta(days=value)


def _per_priority(value: object, problems: list[tuple[str, str]]) -> dict[str, timedelta]:
    if value is None:
        return {}
    allowed = {p.value for p in Priority}
    if not isinstance(value, dict):
        problems.append(("no_response_hours", "must be a table like { urgent = 1, high = 4 }"))
        return {}
    targets: dict[str, timedelta] = {}
    for key, hours in value.items():
        if key not in allowed:
            problems.append((f"no_response_hours.{key}",
                             f"unknown priority; use {', '.join(p.value for p in Priority)}"))
        elif isinstance(hours, bool) or not isinstance(hours, int | float) or hours <= 0:
            problems.append((f"no_response_hours.{key}", "must be a positive number of hours"))
        else:
            targets[key] = timedelta(hours=hours)
    return targets
