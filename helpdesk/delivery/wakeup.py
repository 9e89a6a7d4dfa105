"""Waking the senders when a transaction that queued mail commits (issue 14).

`outbox.enqueue` marks its session (`mark_queued`). `install_commit_hooks`
puts two SQLAlchemy session events on a sessionmaker:

* before the outermost commit of a marked transaction, on PostgreSQL, a
  `NOTIFY helpdesk_outbox`: PostgreSQL delivers it when (and only if) the
  transaction commits, once per transaction whatever the number of mails,
  to every daemon's sender that LISTENs (`helpdesk.smtp.watch`); the idle
  one claims the rows with SKIP LOCKED as always;
* after that commit, the in-process callback if one was given (a `Sender`'s
  `wake` in the same process), called in the committing thread. The daemon
  gives none: its sender runs in a process of its own and hears the commit
  as every other process does (NOTIFY, or SQLite's data_version).

A savepoint's commit or rollback does neither: only the outermost
transaction decides whether the mail exists. A savepoint that queued mail and
was rolled back still leaves the mark, which costs one needless wake-up.
Polling stays as the safety net and for retries coming due.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

# The LISTEN/NOTIFY channel on PostgreSQL.
CHANNEL = "helpdesk_outbox"
# In `Session.info`: this transaction queued mail.
QUEUED_KEY = "helpdesk.delivery.outbox.queued"

_callbacks: weakref.WeakKeyDictionary[sessionmaker[Session], list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def mark_queued(session: Session) -> None:
    """Note that the session's transaction queued mail: its commit wakes the senders."""
    session.info[QUEUED_KEY] = True


def install_commit_hooks(
    sessions: sessionmaker[Session], on_commit: Callable[[], None] | None = None
) -> None:
    """NOTIFY (PostgreSQL) and call `on_commit` when a transaction that queued mail commits.

    Safe to call more than once on the same factory: the events are installed
    once, each call adds its callback.
    """
    if sessions in _callbacks:
        if on_commit is not None:
            _callbacks[sessions].append(on_commit)
        return
    callbacks = [on_commit] if on_commit is not None else []
    _callbacks[sessions] = callbacks

    def before_commit(session: Session) -> None:
        if session.info.get(QUEUED_KEY) and not session.in_nested_transaction():
            connection = session.connection()
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"NOTIFY {CHANNEL}")

    def after_commit(session: Session) -> None:
        if not session.info.get(QUEUED_KEY) or session.in_nested_transaction():
            return
        session.info.pop(QUEUED_KEY, None)
        for callback in callbacks:
            # The mail is committed whatever a wake-up does; polling still finds it.
            with contextlib.suppress(Exception):
                callback()

    def after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:
            session.info.pop(QUEUED_KEY, None)

    event.listen(sessions, "before_commit", before_commit)
    event.listen(sessions, "after_commit", after_commit)
    event.listen(sessions, "after_transaction_end", after_transaction_end)
