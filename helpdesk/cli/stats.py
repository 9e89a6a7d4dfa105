"""`helpdesk stats`: the workload, and what causes it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import click

from helpdesk import stats as stats_service
from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.filters import ticket_filter_options
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.store.models import utcnow
from helpdesk.store.queries import TicketFilter

NO_TEAM = "(no team)"


@click.command("stats")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True,
              help="Length of the window (and of the previous one it is compared with).")
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many tags, teams and sender domains to show.")
@ticket_filter_options
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@pass_app
def stats(app: AppContext, days: int, top: int, tags: tuple[str, ...], priority: str | None,
          since: datetime | None, unassigned: bool, subject: str | None, as_json: bool) -> None:
    """Open tickets by team and status, response and resolution times, and what causes work.

    The filters narrow every figure to the tickets they match; --since starts the
    window at that time instead of --days before now.
    """
    now = utcnow()
    if since is not None and since >= now:
        raise click.BadParameter("must be in the past", param_hint="--since")
    flt = TicketFilter(tags=tags, priority=priority, since=since, unassigned=unassigned,
                       subject=subject)
    with app.transaction() as session:
        result = stats_service.compute(session, now=now, days=days, top=top, flt=flt)
    if as_json:
        emit_json(stats_service.to_json(result))
        return
    _render(result)


def _render(result: stats_service.Stats) -> None:
    if result.filters:
        click.echo(f"Tickets matching {' '.join(result.filters)}")
        click.echo()
    click.echo(click.style("Open tickets", bold=True))
    statuses = stats_service.OPEN_STATUS_NAMES
    if result.open_tickets:
        rows = [[r.team or NO_TEAM, *(r.by_status.get(s, 0) for s in statuses), r.total]
                for r in result.open_tickets]
        totals = [sum(r.by_status.get(s, 0) for r in result.open_tickets) for s in statuses]
        rows.append(["total", *totals, sum(totals)])
        table(["TEAM", *(s.upper() for s in statuses), "TOTAL"], rows)
    else:
        click.echo("None.")

    click.echo()
    length = result.now - result.since
    whole = length.total_seconds() % 86_400 == 0
    span = f"{length.days} days" if whole else stats_service.format_duration(length)
    click.echo(click.style(
        f"Last {span} ({when(result.since)} to {when(result.now)} UTC), "
        f"against the {span} before", bold=True))
    created = result.created
    fields([
        ("tickets created", f"{created.current} (before: {created.previous}, {created.trend})"),
        ("median first response", _median(result.first_response)),
        ("median resolution", _median(result.resolution)),
    ])
    _counts("Top tags", "TAG", result.tags)
    _counts("Top teams", "TEAM", result.teams)
    _counts("Top sender domains", "DOMAIN", result.domains)


def _median(median: stats_service.Median) -> str:
    if median.median is None:
        return "- (no tickets)"
    plural = "" if median.tickets == 1 else "s"
    return f"{stats_service.format_duration(median.median)} ({median.tickets} ticket{plural})"


def _counts(title: str, label: str, counts: Sequence[stats_service.Count]) -> None:
    click.echo()
    click.echo(click.style(title, bold=True))
    if not counts:
        click.echo("None.")
        return
    table([label, "TICKETS", "BEFORE", "TREND"],
          [[c.key if c.key is not None else NO_TEAM, c.current, c.previous, c.trend]
           for c in counts])
