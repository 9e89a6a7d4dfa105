"""Staff: agents and teams as people manage them (`helpdesk agents`, `helpdesk teams`).

Agents and teams added here live in the store beside the ones the config
names (`directory.sync` mirrors those on every command and leaves these
alone). Each function works inside the caller's transaction; addresses are
stored lower-cased, and an address belongs to one agent only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from helpdesk.errors import InvalidInput, NotFound
from helpdesk.store import queries
from helpdesk.store.models import Agent, AgentAddress, Team, Ticket
from helpdesk.values import OPEN_STATUSES

# The same shape the configuration accepts for an address (settings._EMAIL).
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")


@dataclass(frozen=True)
class AgentInfo:
    """An agent as listed: the first address is the primary one."""

    name: str
    addresses: tuple[str, ...]
    teams: tuple[str, ...]
    active: bool
    notify: bool

    @property
    def address(self) -> str:
        return self.addresses[0] if self.addresses else ""


@dataclass(frozen=True)
class TeamInfo:
    """A team as listed, with its members' primary addresses and its open tickets."""

    name: str
    address: str | None
    members: tuple[str, ...]
    open_tickets: int
    lead: str | None = None


def list_agents(session: Session) -> list[AgentInfo]:
    """Every agent, active or not, by name."""
    agents = session.scalars(
        select(Agent)
        .options(selectinload(Agent.addresses), selectinload(Agent.teams))
        .order_by(Agent.name, Agent.id)
    )
    return [_agent_info(a) for a in agents]


def add_agent(
    session: Session,
    address: str,
    *,
    name: str,
    teams: Sequence[str] = (),
    extra_addresses: Sequence[str] = (),
    notify: bool = True,
) -> AgentInfo:
    """Create an active agent writing from `address` (primary) and `extra_addresses`.

    InvalidInput when an address is malformed or already belongs to an agent;
    NotFound when a team does not exist.
    """
    display = name.strip()
    if not display:
        raise InvalidInput("an agent needs a name")
    addresses = list(dict.fromkeys(normalize_address(a) for a in (address, *extra_addresses)))
    for candidate in addresses:
        owner = queries.agent_by_address(session, candidate)
        if owner is not None:
            raise InvalidInput(
                f"{candidate} already belongs to agent {owner.name} ({owner.primary_address})"
            )
    team_rows: list[Team] = []
    for team_name in dict.fromkeys(teams):
        team = queries.team_by_name(session, team_name)
        if team is None:
            raise NotFound("team", team_name)
        team_rows.append(team)
    agent = Agent(name=display, active=True, notify=notify)
    agent.addresses = [AgentAddress(address=a) for a in addresses]
    agent.teams = team_rows
    session.add(agent)
    session.flush()
    return _agent_info(agent)


def set_active(session: Session, address: str, active: bool) -> AgentInfo:
    """Enable or disable the agent writing from `address` (any of their addresses)."""
    agent = _agent(session, address)
    agent.active = active
    session.flush()
    return _agent_info(agent)


def set_notify(session: Session, address: str, notify: bool) -> AgentInfo:
    """Opt the agent writing from `address` in to or out of notification mail."""
    agent = _agent(session, address)
    agent.notify = notify
    session.flush()
    return _agent_info(agent)


def active_agent(session: Session, address: str) -> Agent:
    """The agent writing from `address`; NotFound if none, InvalidInput if disabled."""
    agent = _agent(session, address)
    if not agent.active:
        raise InvalidInput(f"agent {address.strip().lower()} is disabled")
    return agent


def list_teams(session: Session) -> list[TeamInfo]:
    """Every team by name, with members and the number of open tickets."""
    open_counts: dict[int | None, int] = {
        team_id: count
        for team_id, count in session.execute(
            select(Ticket.team_id, func.count(Ticket.id))
            .where(Ticket.team_id.is_not(None),
                   Ticket.status.in_([s.value for s in OPEN_STATUSES]))
            .group_by(Ticket.team_id)
        )
    }
    members: dict[int, list[str]] = {}
    agents = session.scalars(
        select(Agent)
        .options(selectinload(Agent.addresses), selectinload(Agent.teams))
        .order_by(Agent.name, Agent.id)
    )
    for agent in agents:
        for team in agent.teams:
            members.setdefault(team.id, []).append(agent.primary_address)
    return [
        TeamInfo(
            name=team.name,
            address=team.address,
            members=tuple(members.get(team.id, ())),
            open_tickets=open_counts.get(team.id, 0),
            lead=team.lead_address,
        )
        for team in session.scalars(select(Team).order_by(Team.name))
    ]


def add_team(
    session: Session, name: str, *, address: str | None = None, lead: str | None = None
) -> TeamInfo:
    """Create a team; InvalidInput when the name is taken or the address malformed."""
    team_name = name.strip()
    if not team_name:
        raise InvalidInput("a team needs a name")
    if queries.team_by_name(session, team_name) is not None:
        raise InvalidInput(f"team {team_name} exists already")
    team = Team(name=team_name, address=normalize_address(address) if address else None,
                lead_address=normalize_address(lead) if lead else None)
    session.add(team)
    session.flush()
    return TeamInfo(name=team.name, address=team.address, members=(), open_tickets=0,
                    lead=team.lead_address)


def normalize_address(address: str) -> str:
    """`address` stripped and lower-cased; InvalidInput if it is not an e-mail address."""
    normal = address.strip().lower()
    if not _ADDRESS.fullmatch(normal):
        raise InvalidInput(f"not an e-mail address: {address!r}")
    return normal


def _agent(session: Session, address: str) -> Agent:
    agent = queries.agent_by_address(session, address.strip())
    if agent is None:
        raise NotFound("agent", address.strip().lower())
    return agent


def _agent_info(agent: Agent) -> AgentInfo:
    return AgentInfo(
        name=agent.name,
        addresses=tuple(a.address for a in agent.addresses),
        teams=tuple(t.name for t in agent.teams),
        active=agent.active,
        notify=agent.notify,
    )
