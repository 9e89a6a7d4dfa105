"""`helpdesk agents list|add|disable|enable|notify`."""

from __future__ import annotations

from typing import Any

import click

from helpdesk.cli import AppContext, Failure, pass_app
from helpdesk.cli.output import emit_json, table
from helpdesk.desk import staff


@click.group()
def agents() -> None:
    """IT staff: who answers tickets, from which addresses, in which teams."""


def agent_json(info: staff.AgentInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "address": info.address,
        "addresses": list(info.addresses),
        "teams": list(info.teams),
        "active": info.active,
        "notify": info.notify,
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@agents.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """List agents (from the configuration and added here), by name."""
    with app.transaction() as session:
        rows = staff.list_agents(session)
    if as_json:
        emit_json([agent_json(r) for r in rows])
        return
    if not rows:
        click.echo("No agents.")
        return
    table(
        ["NAME", "ACTIVE", "NOTIFY", "TEAMS", "ADDRESSES"],
        [[r.name, _yes(r.active), _yes(r.notify), ", ".join(r.teams), ", ".join(r.addresses)]
         for r in rows],
    )


@agents.command("add")
@click.argument("email")
@click.option("--name", required=True, help="The agent's name, as shown on their replies.")
@click.option("--team", "teams", multiple=True, metavar="TEAM",
              help="A team the agent belongs to (repeatable; the team must exist).")
@click.option("--address", "extra", multiple=True, metavar="EMAIL",
              help="Another address the agent writes from (repeatable).")
@click.option("--no-notify", is_flag=True, help="Send this agent no notification mail.")
@click.option("--json", "as_json", is_flag=True, help="Print the new agent as JSON.")
@pass_app
def add(
    app: AppContext,
    email: str,
    name: str,
    teams: tuple[str, ...],
    extra: tuple[str, ...],
    no_notify: bool,
    as_json: bool,
) -> None:
    """Add an agent writing from EMAIL (and any --address)."""
    for address in (email, *extra):
        if app.settings.is_own_address(address.strip().lower()):
            raise Failure(f"{address} is one of the help desk's own addresses, not an agent's")
    with app.transaction() as session:
        info = staff.add_agent(session, email, name=name, teams=teams, extra_addresses=extra,
                               notify=not no_notify)
    if as_json:
        emit_json(agent_json(info))
        return
    teams_text = f" in {', '.join(info.teams)}" if info.teams else ""
    click.echo(f"agent {info.name} <{info.address}> added{teams_text}")


def _set_active(app: AppContext, email: str, active: bool, as_json: bool) -> None:
    with app.transaction() as session:
        info = staff.set_active(session, email, active)
    if as_json:
        emit_json(agent_json(info))
    else:
        click.echo(f"agent {info.name} <{info.address}> is {'enabled' if active else 'disabled'}")


@agents.command("disable")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print the agent as JSON.")
@pass_app
def disable(app: AppContext, email: str, as_json: bool) -> None:
    """Disable the agent writing from EMAIL: no assignments, no replies as them."""
    _set_active(app, email, False, as_json)


@agents.command("enable")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print the agent as JSON.")
@pass_app
def enable(app: AppContext, email: str, as_json: bool) -> None:
    """Enable the agent writing from EMAIL again."""
    _set_active(app, email, True, as_json)


@agents.command("notify")
@click.argument("email")
@click.argument("setting", type=click.Choice(["on", "off"]))
@click.option("--json", "as_json", is_flag=True, help="Print the agent as JSON.")
@pass_app
def notify(app: AppContext, email: str, setting: str, as_json: bool) -> None:
    """Turn notification mail for the agent writing from EMAIL on or off."""
    with app.transaction() as session:
        info = staff.set_notify(session, email, setting == "on")
    if as_json:
        emit_json(agent_json(info))
    else:
        click.echo(f"notifications for {info.name} <{info.address}> are {setting}")
