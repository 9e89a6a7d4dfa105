"""`helpdesk stats`: the workload, and what causes it."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.filters import ticket_filter_options
from helpdesk.cli.output import emit_json, fields, table, when
from helpdesk.desk import series as series_service
from helpdesk.desk import stats as stats_service
from helpdesk.report.data import Report, Series
from helpdesk.report.spark import fold, sparkline
from helpdesk.store.listing import TicketFilter, ticket_conditions
from helpdesk.store.schema import utcnow

NO_TEAM = "(no team)"


@click.command("stats")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True,
              help="Length of the window (and of the previous one it is compared with).")
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many tags, teams and sender domains to show.")
@ticket_filter_options
@click.option("--html", "html_path", metavar="FILE",
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Write the report as one self-contained HTML page (charts and tables) "
                   "to FILE, or to standard output with -.")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@pass_app
def stats(app: AppContext, days: int, top: int, tags: tuple[str, ...], priority: str | None,
          since: datetime | None, unassigned: bool, subject: str | None,
          html_path: Path | None, as_json: bool) -> None:
    """Open tickets by team and status, response and resolution times, and what causes work.

    The filters narrow every figure to the tickets they match; --since starts the
    window at that time instead of --days before now.
    """
    if as_json and html_path == Path("-"):
        raise click.UsageError("--json and --html - would both write to standard output")
    now = utcnow()
    if since is not None and since >= now:
        raise click.BadParameter("must be in the past", param_hint="--since")
    flt = TicketFilter(tags=tags, priority=priority, since=since, unassigned=unassigned,
                       subject=subject)
    # The day-by-day series cost a second pass: only for the page, the JSON
    # and the sparkline, not for the tables piped into another program.
    drawn = html_path is not None or as_json or _on_terminal()
    # Two connections on one snapshot: the queries of the figures and of the series
    # overlap on the database's cores (a third less time at a million tickets on
    # PostgreSQL; SQLite gets one).
    with app.reading_together(2) as readers:
        postgres = readers[0].dialect.name == "postgresql"
        plans: list[stats_service.Plan[Any]] = [
            stats_service.plan(postgres=postgres, now=now, days=days, top=top, flt=flt)]
        if drawn:
            plans.append(series_service.series_plan(
                postgres=postgres, since=stats_service.window_start(now, days, flt), now=now,
                where=tuple(ticket_conditions(flt))))
        result, *drawing = stats_service.run_plans(readers, plans)
    series: Series | None = drawing[0] if drawing else None
    if html_path is not None and series is not None:
        _write_report(html_path, stats_service.report_data(result, series), quiet=as_json)
    if as_json and series is not None:
        emit_json({**stats_service.to_json(result), **series_service.series_to_json(series)})
        return
    if html_path is None:
        _render(result, series)


def _render(result: stats_service.Stats, series: Series | None = None) -> None:
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
        *([("tickets per day", _spark(series))] if series is not None else []),
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


def _on_terminal() -> bool:
    """The sparkline is for people: not when the output goes to a pipe or a file."""
    return sys.stdout.isatty()


def _spark(series: Series) -> str:
    """The sparkline of tickets opened per day, folded to fit the terminal."""
    room = shutil.get_terminal_size((80, 24)).columns - 40
    values, n = fold(series.opened_per_day, max(10, room))
    span = "" if n == 1 else f"per {n} days, "
    return f"{sparkline(values)}  ({span}most {max(values, default=0)})"


def _write_report(path: Path, report: Report, *, quiet: bool) -> None:
    """The page to standard output, or to the file by rename so no reader sees half of it."""
    from helpdesk.report import html as report_html

    page = report_html.render(report)
    if path == Path("-"):
        click.echo(page, nl=False)
        return
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(page)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # as a plain open() would have made it
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise click.FileError(str(path), hint=exc.strerror or str(exc)) from exc
    if not quiet:
        click.echo(f"report written to {path} ({len(report.series.days)} days, "
                   f"{report.created.current} tickets opened)")
