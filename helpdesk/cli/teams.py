"""`helpdesk teams list|add`."""

from __future__ import annotations

from typing import Any

import click

from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import emit_json, table
from helpdesk.desk import staff


@click.group()
def teams() -> None:
    """Teams of agents that tickets are routed to."""


def team_json(info: staff.TeamInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "address": info.address,
        "lead": info.lead,
        "members": list(info.members),
        "open_tickets": info.open_tickets,
    }


@teams.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List teams with their address, members and open tickets (new, open, pending)."""
    with app.transaction() as session:
        rows = staff.list_teams(session)
    if as_json:
        emit_json([team_json(r) for r in rows])
        return
    if not rows:
        click.echo("No teams.")
        return
    table(
        ["NAME", "ADDRESS", "OPEN", "MEMBERS"],
        [[r.name, r.address, r.open_tickets, ", ".join(r.members)] for r in rows],
    )


@teams.command("add")
@click.argument("name")
@click.option("--address", metavar="EMAIL", help="Where mail forwarded to the team goes.")
@click.option("--lead", metavar="EMAIL", help="Where escalations go (default: the address).")
@click.option("--json", "as_json", is_flag=True, help="Print the new team as JSON.")
@pass_app
def add(app: AppContext, name: str, address: str | None, lead: str | None, as_json: bool
        ) -> None:
    """Add a team called NAME."""
    with app.transaction() as session:
        info = staff.add_team(session, name, address=address, lead=lead)
    if as_json:
        emit_json(team_json(info))
    else:
        click.echo(f"team {info.name} added" + (f" ({info.address})" if info.address else ""))
