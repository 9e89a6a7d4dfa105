"""`helpdesk stats`: the workload, and what causes it."""

from __future__ import annotations

from collections.abc import Sequence

import click

from helpdesk import stats as stats_service
from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.store.models import utcnow

NO_TEAM = "(no team)"


@click.command("stats")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True,
              help="Length of the window (and of the previous one it is compared with).")
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many tags, teams and sender domains to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@pass_app
def stats(app: AppContext, days: int, top: int, as_json: bool) -> None:
    """Open tickets by team and status, response and resolution times, and what causes work."""
    with app.transaction() as session:
        result = stats_service.compute(session, now=utcnow(), days=days, top=top)
    if as_json:
        emit_json(stats_service.to_json(result))
        return
    _render(result)


def _render(result: stats_service.Stats) -> None:
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
    click.echo(click.style(
        f"Last {result.days} days ({when(result.since)} to {when(result.now)} UTC), "
        f"against the {result.days} days before", bold=True))
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
