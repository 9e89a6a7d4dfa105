"""Mailbox state and leases on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from helpdesk.flow import mailboxes
from helpdesk.flow.mailboxes import LeaseLost
from helpdesk.store.models import MailboxState
from tests.conftest import Clock, Store
from tests.leaseclock import elapse, remaining

TTL = timedelta(seconds=60)
POSTGRES_ONLY = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def rows(store: Store) -> int:
    with store.sessions() as session:
        return session.scalar(select(func.count()).select_from(MailboxState)) or 0


def test_get_state_creates_the_row_once(store: Store) -> None:
    """get_state makes an empty row on first use and returns the same row afterwards."""
    with store.sessions.begin() as session:
        state = mailboxes.get_state(session, "it")
        assert (state.uidvalidity, state.last_uid, state.lease_holder) == (None, 0, None)
        assert state.counters == {}
    with store.sessions.begin() as session:
        assert mailboxes.get_state(session, "it").name == "it"
    assert rows(store) == 1


def test_find_state_does_not_create(store: Store) -> None:
    """find_state is read-only: an unknown mailbox is None and no row appears."""
    with store.sessions.begin() as session:
        assert mailboxes.find_state(session, "nope") is None
    assert rows(store) == 0


def test_get_state_races_safely(store: Store) -> None:
    """Several threads creating the same row at once all succeed and make one row."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def create() -> None:
        try:
            barrier.wait()
            with store.sessions.begin() as session:
                mailboxes.get_state(session, "race")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert rows(store) == 1


def test_uidvalidity_first_seen_is_not_a_change(store: Store) -> None:
    """Recording a UIDVALIDITY for the first time keeps progress and reports no change."""
    with store.sessions.begin() as session:
        assert mailboxes.record_uidvalidity(session, "it", 1000) is False
        mailboxes.record_progress(session, "it", 42)
        assert mailboxes.record_uidvalidity(session, "it", 1000) is False
    with store.sessions() as session:
        state = mailboxes.get_state(session, "it")
        assert (state.uidvalidity, state.last_uid) == (1000, 42)


def test_uidvalidity_change_resets_progress(store: Store) -> None:
    """A different UIDVALIDITY voids all UIDs: it is reported and last_uid goes back to 0."""
    with store.sessions.begin() as session:
        mailboxes.record_uidvalidity(session, "it", 1000)
        mailboxes.record_progress(session, "it", 42)
    with store.sessions.begin() as session:
        assert mailboxes.record_uidvalidity(session, "it", 2000) is True
    with store.sessions() as session:
        state = mailboxes.get_state(session, "it")
        assert (state.uidvalidity, state.last_uid) == (2000, 0)


def test_progress_never_goes_backwards(store: Store) -> None:
    """record_progress keeps the highest UID it was given."""
    with store.sessions.begin() as session:
        mailboxes.record_progress(session, "it", 10)
        mailboxes.record_progress(session, "it", 7)
    with store.sessions() as session:
        assert mailboxes.get_state(session, "it").last_uid == 10


def test_counters_add_up(store: Store) -> None:
    """Counter deltas add to the JSON counters across transactions; zero deltas are skipped."""
    with store.sessions.begin() as session:
        mailboxes.add_counters(session, "it", fetched=3, ingested=2, duplicates=1, errors=0)
    with store.sessions.begin() as session:
        result = mailboxes.add_counters(session, "it", fetched=1, quarantined=1)
    assert result == {"fetched": 4, "ingested": 2, "duplicates": 1, "quarantined": 1}
    with store.sessions() as session:
        assert mailboxes.get_state(session, "it").counters == result


def test_record_poll(store: Store, clock: Clock) -> None:
    """The time of the last poll is kept, timezone-aware."""
    with store.sessions.begin() as session:
        mailboxes.record_poll(session, "it", clock.now)
    with store.sessions() as session:
        assert mailboxes.get_state(session, "it").last_poll_at == clock.now


def lease(store: Store, holder: str, clock: Clock, ttl: timedelta = TTL) -> bool:
    with store.sessions.begin() as session:
        return mailboxes.acquire_lease(session, "it", holder, ttl, clock.now)


def test_lease_is_exclusive(store: Store, clock: Clock) -> None:
    """While one holder's lease runs, another cannot take it."""
    assert lease(store, "daemon-a", clock) is True
    assert lease(store, "daemon-b", clock) is False
    elapse(store, clock, 59)
    assert lease(store, "daemon-b", clock) is False
    with store.sessions() as session:
        assert mailboxes.get_state(session, "it").lease_holder == "daemon-a"


def test_renew_extends_the_lease(store: Store, clock: Clock) -> None:
    """Taking the lease again as its holder moves the expiry forward."""
    assert lease(store, "daemon-a", clock)
    elapse(store, clock, 50)
    assert remaining(store, clock) <= timedelta(seconds=10)
    assert lease(store, "daemon-a", clock)
    assert TTL - timedelta(seconds=1) <= remaining(store, clock) <= TTL
    elapse(store, clock, 50)  # 100 s after the first take, 50 s after the renewal
    assert lease(store, "daemon-b", clock) is False


def test_expired_lease_is_taken_over(store: Store, clock: Clock) -> None:
    """A holder that stopped renewing (a dead daemon) loses the lease at expiry."""
    assert lease(store, "daemon-a", clock)
    elapse(store, clock, 60)
    assert lease(store, "daemon-b", clock) is True
    assert lease(store, "daemon-a", clock) is False
    with store.sessions() as session:
        assert mailboxes.get_state(session, "it").lease_holder == "daemon-b"


def test_release_frees_the_lease_only_for_its_holder(store: Store, clock: Clock) -> None:
    """release_lease by a non-holder does nothing; by the holder it frees the lease at once."""
    assert lease(store, "daemon-a", clock)
    with store.sessions.begin() as session:
        assert mailboxes.release_lease(session, "it", "daemon-b") is False
    assert lease(store, "daemon-b", clock) is False
    with store.sessions.begin() as session:
        assert mailboxes.release_lease(session, "it", "daemon-a") is True
    assert lease(store, "daemon-b", clock) is True


@POSTGRES_ONLY
def test_competing_holders_get_one_lease(store: Store, clock: Clock) -> None:
    """Many daemons asking at the same instant: exactly one gets the lease (row lock)."""
    barrier = threading.Barrier(6)
    won: list[str] = []
    errors: list[BaseException] = []

    def compete(holder: str) -> None:
        try:
            barrier.wait()
            if lease(store, holder, clock):
                won.append(holder)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=compete, args=(f"daemon-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(won) == 1
    with store.sessions() as session:
        assert mailboxes.get_state(session, "it").lease_holder == won[0]


@POSTGRES_ONLY
def test_lease_expiry_follows_the_database_clock_not_the_host(store: Store, clock: Clock
                                                               ) -> None:
    """On PostgreSQL a host whose clock runs an hour ahead cannot take a running lease,
    and a holder whose clock runs behind still loses it when the database says so."""
    assert lease(store, "daemon-a", clock)
    skewed_ahead = Clock()
    skewed_ahead.now = clock.now + timedelta(hours=1)
    assert lease(store, "daemon-b", skewed_ahead) is False
    assert TTL - timedelta(seconds=5) <= remaining(store, skewed_ahead) <= TTL
    skewed_behind = Clock()
    skewed_behind.now = clock.now - timedelta(hours=1)
    elapse(store, clock, 61)
    assert lease(store, "daemon-b", skewed_behind) is True
    assert lease(store, "daemon-a", clock) is False


def progress_setup(store: Store, clock: Clock) -> None:
    """daemon-a holds the lease and recorded UIDVALIDITY 1000 and progress 10."""
    assert lease(store, "daemon-a", clock)
    with store.sessions.begin() as session:
        mailboxes.record_uidvalidity(session, "it", 1000, holder="daemon-a")
        mailboxes.record_progress(session, "it", 10, holder="daemon-a", uidvalidity=1000)


def last_uid(store: Store) -> int:
    with store.sessions() as session:
        return mailboxes.get_state(session, "it").last_uid


def test_progress_of_a_holder_that_lost_its_lease_is_refused(store: Store, clock: Clock
                                                             ) -> None:
    """A daemon whose lease was taken over cannot move progress: the new holder would skip
    mail."""
    progress_setup(store, clock)
    elapse(store, clock, 61)
    assert lease(store, "daemon-b", clock)
    with pytest.raises(LeaseLost, match="held by daemon-b"), store.sessions.begin() as session:
        mailboxes.record_progress(session, "it", 500, holder="daemon-a", uidvalidity=1000)
    assert last_uid(store) == 10
    with store.sessions.begin() as session:
        mailboxes.record_progress(session, "it", 12, holder="daemon-b", uidvalidity=1000)
    assert last_uid(store) == 12


def test_progress_after_a_release_is_refused(store: Store, clock: Clock) -> None:
    """Once released, the lease is nobody's: its former holder records nothing."""
    progress_setup(store, clock)
    with store.sessions.begin() as session:
        assert mailboxes.release_lease(session, "it", "daemon-a", clock.now)
    with pytest.raises(LeaseLost, match="released"), store.sessions.begin() as session:
        mailboxes.record_progress(session, "it", 20, holder="daemon-a", uidvalidity=1000)
    assert last_uid(store) == 10


def test_progress_read_under_another_uidvalidity_is_refused(store: Store, clock: Clock) -> None:
    """UIDs read under UIDVALIDITY 1000 mean nothing once the folder is at 2000."""
    progress_setup(store, clock)
    with store.sessions.begin() as session:
        assert mailboxes.record_uidvalidity(session, "it", 2000, holder="daemon-a") is True
    with pytest.raises(LeaseLost, match="UIDVALIDITY is 2000"), store.sessions.begin() as session:
        mailboxes.record_progress(session, "it", 5000, holder="daemon-a", uidvalidity=1000)
    assert last_uid(store) == 0


def test_uidvalidity_from_a_stale_holder_is_refused(store: Store, clock: Clock) -> None:
    """A stale daemon cannot turn the UIDVALIDITY back (and reset the holder's progress)."""
    progress_setup(store, clock)
    elapse(store, clock, 61)
    assert lease(store, "daemon-b", clock)
    with pytest.raises(LeaseLost), store.sessions.begin() as session:
        mailboxes.record_uidvalidity(session, "it", 999, holder="daemon-a")
    with store.sessions() as session:
        state = mailboxes.get_state(session, "it")
        assert (state.uidvalidity, state.last_uid) == (1000, 10)


def test_release_records_since_when_the_mailbox_is_free(store: Store, clock: Clock) -> None:
    """A released lease has no holder and its expiry says when it was freed."""
    assert lease(store, "daemon-a", clock)
    with store.sessions.begin() as session:
        assert mailboxes.release_lease(session, "it", "daemon-a", clock.now)
    with store.sessions() as session:
        state = mailboxes.get_state(session, "it")
        freed = state.lease_expires_at
        assert state.lease_holder is None
        assert freed is not None
        assert abs(mailboxes.database_now(session, clock.now) - freed) < timedelta(seconds=5)
