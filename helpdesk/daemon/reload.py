"""What a SIGHUP changes: pure comparisons of the running settings with the new ones."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from helpdesk.settings import Settings

__all__ = ["WorkerPlan", "needs_restart", "plan_workers", "source_names"]


@dataclass(frozen=True)
class WorkerPlan:
    """Which mailbox workers a reload stops and which it (re)starts, by worker name."""

    retire: tuple[str, ...]
    start: tuple[str, ...]


def needs_restart(old: Settings, new: Settings) -> list[str]:
    """The keys that changed but only a restart applies (the running value is kept)."""
    kept = []
    if new.database.url != old.database.url:
        kept.append("database.url")
    if new.lmtp != old.lmtp:
        kept.append("lmtp")
    if new.intake.workers != old.intake.workers:
        kept.append("intake.workers")
    if new.metrics != old.metrics:
        kept.append("metrics")
    return kept


def plan_workers(old: Settings, new: Settings, running: Collection[str]) -> WorkerPlan:
    """Stop the removed workers; restart the changed ones; start the new ones."""
    before = _sources(old)
    after = _sources(new)
    retire = [name for name in running if name not in after]
    start = []
    for name, config in after.items():
        if name in running and before.get(name) == config:
            continue
        if name in running:
            retire.append(name)
        start.append(name)
    return WorkerPlan(tuple(retire), tuple(start))


def source_names(settings: Settings) -> list[str]:
    """The mailbox label values of the metrics: every configured source's name."""
    names = [m.name for m in settings.mailboxes] + [m.name for m in settings.maildirs]
    return [*names, "lmtp"] if settings.lmtp is not None else names


def _sources(settings: Settings) -> dict[str, object]:
    return {**{f"imap:{m.name}": m for m in settings.mailboxes},
            **{f"maildir:{m.name}": m for m in settings.maildirs}}
