"""The directory of teams and agents: the config's `[[team]]`/`[[agent]]` mirrored into the store.

The config is the admin's source of truth for what it names; agents and
teams added in the store by other means are left alone.

Mirroring is cheap when nothing changed: the store keeps a hash of the
configuration it last mirrored (`store_values`), and `ensure_synced` compares
it with the current one in one statement before doing any work. Every CLI
command calls it, so a command on an unchanged configuration pays one SELECT
instead of a few statements per agent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import IntegrityError

from helpdesk.store.schema import store_values
from helpdesk.store.upsert import dialect_insert

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from helpdesk.store.models import Agent, Team

# The store value holding the hash of the last mirrored configuration. The
# version in the hashed text changes when `sync` learns to mirror more, so that
# stores synced by an older version are synced again.
HASH_KEY = "directory.config_sha256"
_VERSION = "directory-sync-v1"
# The store value pairing a configuration file, as parsed
# (`configfile.document_digest`), that validated, with the fingerprint of its
# teams and agents. A reading command whose file is paired with the HASH_KEY
# stored now knows the file is valid and the store mirrors it, without
# validating it again (pydantic, a quarter of its start-up). Any edit of the
# file, or a mirror from another file (a new HASH_KEY), breaks the pair.
SOURCE_KEY = "directory.source_sha256"


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


def fingerprint(teams: Sequence[TeamSpec], agents: Sequence[AgentSpec]) -> str:
    """A hash of everything `sync` mirrors from these specs."""
    data = {
        "version": _VERSION,
        "teams": [[t.name, t.address, getattr(t, "lead", None)] for t in teams],
        "agents": [[a.name, [x.lower() for x in a.addresses], list(a.teams)] for a in agents],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


_STORED_HASH = select(store_values.c.value).where(store_values.c.key == HASH_KEY)
_STORED_BOTH = select(store_values.c.key, store_values.c.value).where(
    store_values.c.key.in_((HASH_KEY, SOURCE_KEY)))


def source_is_current(conn: Connection, source: str) -> bool:
    """Whether the file digested as `source` was validated and is mirrored (one SELECT)."""
    stored = {key: value for key, value in conn.execute(_STORED_BOTH)}
    mirrored = stored.get(HASH_KEY)
    return mirrored is not None and stored.get(SOURCE_KEY) == f"{source} {mirrored}"


def remember_source(conn: Connection, source: str, teams: Sequence[TeamSpec],
                    agents: Sequence[AgentSpec]) -> None:
    """Pair `source`, a file that validated to these specs, with their fingerprint.

    Their fingerprint, not the stored one: if another file was mirrored meanwhile,
    the pair must not claim that file's directory for this one.
    """
    _store_value(conn, SOURCE_KEY, f"{source} {fingerprint(teams, agents)}")


def is_current(conn: Connection, teams: Sequence[TeamSpec], agents: Sequence[AgentSpec]) -> bool:
    """Whether the store already mirrors exactly these specs (one SELECT, no ORM)."""
    return conn.execute(_STORED_HASH).scalar() == fingerprint(teams, agents)


def ensure_synced(session: Session, teams: Sequence[TeamSpec],
                  agents: Sequence[AgentSpec]) -> bool:
    """Mirror the specs unless the store already mirrors exactly these; True when it synced."""
    if is_current(session.connection(), teams, agents):
        return False
    digest = fingerprint(teams, agents)
    sync(session, teams, agents)
    _store_value(session.connection(), HASH_KEY, digest)
    return True


def mirror(sessions: sessionmaker[Session], teams: Sequence[TeamSpec],
           agents: Sequence[AgentSpec], *, always: bool = False) -> None:
    """`ensure_synced` (or `sync` when `always`) in a transaction of its own, race-safe.

    Two processes starting at once on a fresh store (two daemons, a daemon and
    a command) both see a team missing and both insert it; the unique name
    lets one commit and refuses the other. The loser tries once more, and then
    finds what the winner wrote.
    """
    for attempt in range(2):
        try:
            with sessions.begin() as session:
                if always:
                    sync(session, teams, agents)
                else:
                    ensure_synced(session, teams, agents)
            return
        except IntegrityError:
            if attempt:
                raise


def invalidate(session: Session) -> None:
    """Forget the stored hash: the next `ensure_synced` mirrors the configuration again.

    For commands that change agents or teams the configuration names.
    """
    session.execute(delete(store_values).where(store_values.c.key == HASH_KEY))


def sync(session: Session, teams: Sequence[TeamSpec], agents: Sequence[AgentSpec]) -> None:
    """Create or update the configured teams and agents in the store (always; see ensure_synced).

    A fixed number of statements to read what exists, whatever the number of
    agents, then one write per change.
    """
    # The ORM only here: a command on an unchanged configuration never imports it.
    from helpdesk.store.models import Team

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
    known = _agents_by_address(session, [a.lower() for spec in agents for a in spec.addresses])
    for agent_spec in agents:
        _sync_agent(session, agent_spec, by_name, known)
    session.flush()


def _agents_by_address(session: Session, addresses: Sequence[str]) -> dict[str, Agent]:
    """The agents owning any of `addresses`, keyed by each of their addresses."""
    from sqlalchemy.orm import selectinload

    from helpdesk.store.models import Agent, AgentAddress

    if not addresses:
        return {}
    agents = session.scalars(
        select(Agent)
        .join(AgentAddress)
        .where(AgentAddress.address.in_(sorted(set(addresses))))
        .options(selectinload(Agent.addresses), selectinload(Agent.teams))
    ).unique()
    return {a.address: agent for agent in agents for a in agent.addresses}


def _sync_agent(session: Session, spec: AgentSpec, teams: dict[str, Team],
                known: dict[str, Agent]) -> None:
    from helpdesk.store.models import Agent, AgentAddress

    addresses = [a.lower() for a in spec.addresses]
    agent = next((known[a] for a in addresses if a in known), None)
    if agent is None:
        agent = Agent(name=spec.name, active=True, addresses=[], teams=[])
        session.add(agent)
    if agent.name != spec.name:
        agent.name = spec.name
    have = {a.address for a in agent.addresses}
    for address in addresses:
        if address not in have:
            agent.addresses.append(AgentAddress(address=address))
            have.add(address)
        known[address] = agent
    wanted = [teams[name] for name in spec.teams if name in teams]
    if {t.id for t in agent.teams} != {t.id for t in wanted}:
        agent.teams = wanted


def _store_value(conn: Connection, key: str, value: str) -> None:
    insert = dialect_insert(conn.dialect.name)
    statement = insert(store_values).values(key=key, value=value)
    conn.execute(statement.on_conflict_do_update(index_elements=["key"], set_={"value": value}))
