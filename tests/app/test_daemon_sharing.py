"""Several daemons share the work (issue 13 §6): with two mailboxes and two daemons on one
PostgreSQL, each works one; when one stops, the other takes both."""

from __future__ import annotations

from collections import Counter

import pytest

from helpdesk.flow.mailboxes import list_states
from tests.app.daemon_helpers import (
    append_all,
    connect,
    incoming_ids,
    logout,
    request_mails,
    wait_for,
)
from tests.app.test_daemon import POSTGRES, DaemonFactory, daemons, dovecot, settings_for, sink
from tests.conftest import Store
from tests.servers.dovecot import DovecotServer
from tests.servers.smtp_sink import SmtpSink

__all__ = ["daemons", "dovecot", "sink"]  # fixtures, imported for pytest


def holders(store: Store) -> Counter[str | None]:
    with store.sessions() as session:
        return Counter(s.lease_holder for s in list_states(session)
                       if s.name in ("support", "second"))


@pytest.mark.slow
@POSTGRES
def test_two_daemons_with_two_mailboxes_each_work_one(
    store: Store, sink: SmtpSink, dovecot: DovecotServer, daemons: DaemonFactory,
) -> None:
    """The first daemon takes both mailboxes alone, gives one back when a second daemon
    asks, and both mailboxes' mail is stored; a stopped daemon's mailbox is taken over."""
    client = connect(dovecot)
    try:
        client.create_folder("Second")
    finally:
        logout(client)
    second = (f'\n[[mailbox]]\nname = "second"\nhost = "127.0.0.1"\nport = {dovecot.port}\n'
              f'tls = "none"\nusername = "support@example.test"\npassword = "support-pw"\n'
              f'folder = "Second"\nprocessed_folder = "Second/Done"\npoll_interval = 1.0\n')
    config = settings_for(store, sink, dovecot, lease_seconds=3.0, poll_interval=1.0) + second
    first = daemons(config, name="a").start()
    first.wait_event("imap.lease_acquired", timeout=30, count=2)
    other = daemons(config, name="b").start()
    assert wait_for(lambda: sorted(holders(store).values()) == [1, 1]
                    and None not in holders(store), 30, 0.2, alive=other), holders(store)

    append_all(dovecot, request_mails(2, batch="one"), folder="INBOX")
    append_all(dovecot, request_mails(2, batch="two"), folder="Second")
    assert wait_for(lambda: len(incoming_ids(store)) == 4, 30, 0.2, alive=other)
    by_daemon = [{e["mailbox"] for e in d.events("message.ingested")} for d in (first, other)]
    assert all(len(boxes) == 1 for boxes in by_daemon), by_daemon

    assert other.terminate()[0] == 0
    assert wait_for(lambda: list(holders(store).values()) == [2], 30, 0.2, alive=first), \
        holders(store)
    append_all(dovecot, request_mails(1, batch="three"), folder="Second")
    assert wait_for(lambda: len(incoming_ids(store)) == 5, 30, 0.2, alive=first)
    assert first.terminate()[0] == 0
