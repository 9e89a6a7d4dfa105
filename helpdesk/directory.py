"""The directory of teams and agents: the config's `[[team]]`/`[[agent]]` mirrored into the store.

The config is the admin's source of truth for what it names; agents and
teams added in the store by other means are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.store import queries
from helpdesk.store.models import Agent, AgentAddress, Team


class TeamSpec(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str | None: ...


class AgentSpec(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def addresses(self) -> Sequence[str]: ...
    @property
    def teams(self) -> Sequence[str]: ...


def sync(session: Session, teams: Sequence[TeamSpec], agents: Sequence[AgentSpec]) -> None:
    """Create or update the configured teams and agents in the store."""
    by_name = {t.name: t for t in session.scalars(select(Team))}
    for spec in teams:
        # A lead address is optional in a spec (settings have it, ad-hoc specs may not).
        lead: str | None = getattr(spec, "lead", None)
        team = by_name.get(spec.name)
        if team is None:
            team = Team(name=spec.name, address=spec.address, lead_address=lead)
            session.add(team)
            by_name[spec.name] = team
        else:
            if team.address != spec.address:
                team.address = spec.address
            if team.lead_address != lead:
                team.lead_address = lead
    session.flush()
    for agent_spec in agents:
        _sync_agent(session, agent_spec, by_name)
    session.flush()


def _sync_agent(session: Session, spec: AgentSpec, teams: dict[str, Team]) -> None:
    addresses = [a.lower() for a in spec.addresses]
    agent: Agent | None = None
    for address in addresses:
        agent = queries.agent_by_address(session, address)
        if agent is not None:
            break
    if agent is None:
        agent = Agent(name=spec.name, active=True)
        session.add(agent)
    agent.name = spec.name
    known = {a.address for a in agent.addresses}
    for address in addresses:
        if address not in known:
            agent.addresses.append(AgentAddress(address=address))
    wanted = [teams[name] for name in spec.teams if name in teams]
    if [t.id for t in agent.teams] != [t.id for t in wanted]:
        agent.teams = wanted
