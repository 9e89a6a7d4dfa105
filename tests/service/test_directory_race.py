"""Two processes mirroring the configured teams at once on a fresh store: both start."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest
from sqlalchemy import func, select

from helpdesk.desk import directory
from helpdesk.store.models import Agent, Team
from tests.conftest import Store


@dataclass(frozen=True)
class TeamSpec:
    name: str
    address: str | None = None


@dataclass(frozen=True)
class AgentSpec:
    name: str
    addresses: tuple[str, ...] = ()
    teams: tuple[str, ...] = field(default_factory=tuple)


TEAMS = [TeamSpec("network", "network@example.org"), TeamSpec("security")]
AGENTS = [AgentSpec("Ada", ("ada@example.org",), ("network",))]


@pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_the_second_of_two_simultaneous_mirrors_finds_the_first_ones_rows(store: Store) -> None:
    """The loser of the race on the unique team name tries again instead of crashing."""
    errors: list[BaseException] = []
    with store.sessions.begin() as first:
        directory.sync(first, TEAMS, AGENTS)  # inserted, not committed: holds the names

        def second() -> None:
            try:
                directory.mirror(store.sessions, TEAMS, AGENTS, always=True)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        # PostgreSQL makes the second insert wait for the first transaction.
        thread.join(1.0)
        assert thread.is_alive()
    thread.join(30)
    assert errors == []
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Team)) == 2
        assert session.scalar(select(func.count()).select_from(Agent)) == 1


def test_a_file_is_paired_only_with_the_directory_it_validated_to(store: Store) -> None:
    """A reading command pairs its file with the mirrored directory; not if another file's
    directory was mirrored meanwhile, and a later mirror of another file breaks the pair."""
    other = [TeamSpec("desktop")]
    directory.mirror(store.sessions, TEAMS, AGENTS)
    with store.engine.begin() as conn:
        directory.remember_source(conn, "ours", TEAMS, AGENTS)
        assert directory.source_is_current(conn, "ours")
        assert not directory.source_is_current(conn, "theirs")
    directory.mirror(store.sessions, other, [])  # another file, mirrored by a daemon
    with store.engine.begin() as conn:
        assert not directory.source_is_current(conn, "ours")
        # Validated before that mirror, paired after it: not paired.
        directory.remember_source(conn, "ours", TEAMS, AGENTS)
        assert not directory.source_is_current(conn, "ours")
