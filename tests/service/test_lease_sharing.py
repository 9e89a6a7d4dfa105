"""Several daemons share the mailboxes: heartbeats and fair-share leases, on a real store."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from helpdesk.flow import mailboxes
from tests.conftest import Clock, Store
from tests.leaseclock import elapse

TTL = timedelta(seconds=60)
POOL = ("it", "hr")
POSTGRES_ONLY = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def beat(store: Store, clock: Clock, holder: str, pool: tuple[str, ...] = POOL) -> None:
    with store.sessions.begin() as session:
        mailboxes.heartbeat(session, holder, TTL, clock.now, pool=pool)


def take(store: Store, clock: Clock, holder: str, name: str) -> bool:
    with store.sessions.begin() as session:
        return mailboxes.acquire_lease(session, name, holder, TTL, clock.now, share_of=POOL)


def holders(store: Store) -> dict[str, str | None]:
    with store.sessions() as session:
        return {s.name: s.lease_holder for s in mailboxes.list_states(session)}


def live(store: Store, clock: Clock, pool: tuple[str, ...] | None = POOL) -> list[str]:
    with store.sessions() as session:
        return mailboxes.live_daemons(session, clock.now, pool=pool)


def test_heartbeats_make_daemons_live_until_they_expire(store: Store, clock: Clock) -> None:
    """A heartbeat keeps a daemon live for the TTL; a renewed one stays, a silent one drops."""
    beat(store, clock, "daemon-a")
    beat(store, clock, "daemon-b")
    assert live(store, clock) == ["daemon-a", "daemon-b"]
    elapse(store, clock, 40)
    beat(store, clock, "daemon-a")
    elapse(store, clock, 30)  # b's heartbeat is 70 s old, a's 30 s
    assert live(store, clock) == ["daemon-a"]
    with store.sessions.begin() as session:
        mailboxes.retire(session, "daemon-a")
    assert live(store, clock) == []


def test_daemons_share_only_with_the_same_mailboxes(store: Store, clock: Clock) -> None:
    """A daemon configured with other mailboxes does not count towards this pool's share."""
    beat(store, clock, "daemon-a")
    beat(store, clock, "daemon-x", pool=("sales",))
    assert live(store, clock) == ["daemon-a"]
    assert live(store, clock, pool=None) == ["daemon-a", "daemon-x"]
    assert take(store, clock, "daemon-a", "it")
    assert take(store, clock, "daemon-a", "hr")  # alone in its pool: both are its share


def test_two_daemons_with_two_mailboxes_work_one_each(store: Store, clock: Clock) -> None:
    """With two live daemons, each takes at most ceil(2 / 2) = 1 mailbox."""
    beat(store, clock, "daemon-a")
    beat(store, clock, "daemon-b")
    assert take(store, clock, "daemon-a", "it") is True
    assert take(store, clock, "daemon-a", "hr") is False  # beyond its share
    assert take(store, clock, "daemon-b", "it") is False  # held
    assert take(store, clock, "daemon-b", "hr") is True
    for _ in range(3):  # renewals keep it that way
        elapse(store, clock, 20)
        for holder in ("daemon-a", "daemon-b"):
            beat(store, clock, holder)
            for name in POOL:
                take(store, clock, holder, name)
    assert holders(store) == {"hr": "daemon-b", "it": "daemon-a"}


def test_a_daemon_alone_hands_a_mailbox_to_the_next_that_asks(store: Store, clock: Clock) -> None:
    """The first daemon takes both; when a second comes up and asks, the first gives one back
    on its next renewal and the second takes it."""
    beat(store, clock, "daemon-a")
    assert take(store, clock, "daemon-a", "it")
    assert take(store, clock, "daemon-a", "hr")
    beat(store, clock, "daemon-b")
    assert take(store, clock, "daemon-a", "it") is True  # nobody asked yet: keeps working it
    assert take(store, clock, "daemon-b", "it") is False  # held; b now asks for a lease
    elapse(store, clock, 20)
    beat(store, clock, "daemon-a")
    handed = [name for name in POOL if not take(store, clock, "daemon-a", name)]
    assert len(handed) == 1
    assert take(store, clock, "daemon-b", handed[0]) is True
    assert sorted(holders(store).values()) == ["daemon-a", "daemon-b"]


def test_one_mailbox_two_daemons_one_holder(store: Store, clock: Clock) -> None:
    """With one mailbox the share is one: the second daemon stands by."""
    beat(store, clock, "daemon-a")
    beat(store, clock, "daemon-b")
    with store.sessions.begin() as session:
        assert mailboxes.acquire_lease(session, "it", "daemon-a", TTL, clock.now,
                                       share_of=["it"])
    with store.sessions.begin() as session:
        assert not mailboxes.acquire_lease(session, "it", "daemon-b", TTL, clock.now,
                                           share_of=["it"])


def test_a_dead_daemons_mailbox_is_taken_over(store: Store, clock: Clock) -> None:
    """When a daemon stops beating, the survivor's share grows and it takes the mailbox once
    the dead daemon's lease has expired."""
    beat(store, clock, "daemon-a")
    beat(store, clock, "daemon-b")
    assert take(store, clock, "daemon-a", "it")
    assert take(store, clock, "daemon-b", "hr")
    elapse(store, clock, 30)
    beat(store, clock, "daemon-a")
    assert take(store, clock, "daemon-a", "hr") is False  # b's lease still runs
    elapse(store, clock, 31)  # b's lease and heartbeat are past
    beat(store, clock, "daemon-a")
    assert take(store, clock, "daemon-a", "it")
    assert take(store, clock, "daemon-a", "hr")
    assert holders(store) == {"hr": "daemon-a", "it": "daemon-a"}


def test_a_mailbox_nobody_takes_is_worked_beyond_the_share(store: Store, clock: Clock) -> None:
    """A daemon that beats but never takes its mailbox (a stuck worker) cannot leave it
    unworked: after a lease period anyone takes it, and keeps it while nobody asks."""
    beat(store, clock, "daemon-a")
    beat(store, clock, "daemon-b")  # b never asks for a lease
    assert take(store, clock, "daemon-a", "it")
    assert take(store, clock, "daemon-a", "hr") is False  # b's share, for now
    for _ in range(3):
        elapse(store, clock, 20)
        beat(store, clock, "daemon-a")
        beat(store, clock, "daemon-b")
        take(store, clock, "daemon-a", "it")
        got = take(store, clock, "daemon-a", "hr")
    assert got is True
    for _ in range(3):  # no flapping: a keeps both while b does not ask
        elapse(store, clock, 20)
        beat(store, clock, "daemon-a")
        beat(store, clock, "daemon-b")
        assert take(store, clock, "daemon-a", "it")
        assert take(store, clock, "daemon-a", "hr")


@POSTGRES_ONLY
def test_daemons_racing_for_two_mailboxes_end_with_one_each(store: Store, clock: Clock) -> None:
    """Two daemons asking for both mailboxes at the same instant each end up with one."""
    beat(store, clock, "daemon-a")
    beat(store, clock, "daemon-b")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def ask(holder: str, name: str) -> None:
        try:
            barrier.wait()
            take(store, clock, holder, name)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(h, n))
               for h in ("daemon-a", "daemon-b") for n in POOL]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(h for h in holders(store).values() if h) == ["daemon-a", "daemon-b"]
