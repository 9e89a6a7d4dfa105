"""Contacts: one row per address, found or made, without making another writer wait."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from helpdesk.store import queries
from helpdesk.store.models import Contact
from tests.conftest import Store

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


def test_a_contact_is_made_once_and_keeps_its_first_name(store: Store) -> None:
    with store.sessions.begin() as session:
        first = queries.contact(session, "dana@example.com", "Dana Reyes", NOW)
    with store.sessions.begin() as session:
        again = queries.contact(session, "dana@example.com", "D. Reyes", NOW)
    assert first == again == (first[0], "Dana Reyes")
    with store.sessions() as session:
        assert session.scalar(select(func.count(Contact.id))) == 1


@pytest.mark.postgres
def test_a_new_person_does_not_make_another_writer_wait(store: Store) -> None:
    """Two daemons store mail from the same new person at once (two mailboxes, one
    requester): the second does not wait for the first one's batch to commit."""
    if store.backend != "postgres":
        pytest.skip("SQLite has one writer at a time anyway")
    first = store.sessions()
    first.begin()
    try:
        queries.contacts_apart(first)  # as the group-commit writer's sessions are
        made, _ = queries.contact(first, "kim@example.com", "Kim", NOW)
        # The first writer's batch goes on and has not committed yet.
        with store.sessions.begin() as second:
            # Waiting for the first writer's batch would fail this instead of hanging.
            second.execute(text("SET LOCAL lock_timeout = '2s'"))
            queries.contacts_apart(second)
            found, name = queries.contact(second, "kim@example.com", "Kim S.", NOW)
        assert (found, name) == (made, "Kim")
        first.rollback()  # the batch fails: the contact stays, harmlessly
    finally:
        first.close()
    with store.sessions() as session:
        assert session.execute(select(Contact.id, Contact.name)).all() == [(made, "Kim")]


@pytest.mark.postgres
def test_an_address_another_writer_made_meanwhile_is_found(store: Store) -> None:
    """Between our look-up and our insert another writer made the contact: theirs is used."""
    if store.backend != "postgres":
        pytest.skip("the insert of its own is PostgreSQL's")
    with store.sessions.begin() as session:
        session.add(Contact(address="sam@example.com", name="Sam"))
    with store.sessions.begin() as session:
        sam = session.scalar(select(Contact.id))
    assert queries._contact_apart(store.engine, "sam@example.com", "Samuel", NOW) == (sam, "Sam")


def test_other_sessions_keep_a_new_contact_in_their_transaction(store: Store) -> None:
    """Only the group-commit writer commits contacts apart: a dry run (`rules test`)
    rolls its transaction back and leaves no contact behind."""
    with store.sessions() as session:
        session.begin()
        queries.contact(session, "lee@example.com", "Lee", NOW)
        session.rollback()
    with store.sessions() as session:
        assert session.scalar(select(func.count(Contact.id))) == 0


@pytest.mark.postgres
def test_the_separate_insert_leaves_its_pooled_connection_as_it_found_it(store: Store) -> None:
    """The insert runs in autocommit with a lazy commit of its own: neither may stay on
    the pooled connection, whose next user expects transactions and durable commits."""
    if store.backend != "postgres":
        pytest.skip("the insert of its own is PostgreSQL's")
    store.engine.dispose()  # one pooled connection: the next checkout gets the same
    with store.engine.connect() as conn:
        conn.exec_driver_sql("SET synchronous_commit = remote_write")  # not its default
        conn.commit()
    made, _ = queries._contact_apart(store.engine, "ash@example.com", "Ash", NOW)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "remote_write"
        conn.exec_driver_sql("DELETE FROM contacts")
        conn.rollback()  # in a transaction, so the delete is undone
    with store.sessions() as session:
        assert session.scalar(select(Contact.id)) == made
