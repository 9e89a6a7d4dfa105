"""The LMTP listener: a real aiosmtpd LMTP server, a real smtplib.LMTP client, a real store."""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator, Sequence

import pytest
from sqlalchemy import select

from helpdesk.errors import StoreUnavailable
from helpdesk.sources.base import Sink
from helpdesk.sources.lmtp import LmtpController, LmtpHandler, start_lmtp
from helpdesk.store.models import Message
from helpdesk.values import Incoming, IngestOutcome, Origin
from tests.conftest import Store
from tests.edges.conftest import quarantined, stored_ids
from tests.mailfactory import make_mail
from tests.servers import free_port

SENDER = "dana.reyes@example.com"


Serve = Callable[[LmtpHandler], int]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start an LMTP listener on a free loopback port for a handler; stopped at the end."""
    controllers: list[LmtpController] = []

    def start(handler: LmtpHandler) -> int:
        port = free_port()
        controllers.append(start_lmtp(handler, "127.0.0.1", port))
        return port

    yield start
    for controller in controllers:
        controller.stop()


def client(port: int) -> smtplib.LMTP:
    lmtp = smtplib.LMTP("127.0.0.1", port)
    lmtp.ehlo_or_helo_if_needed()  # LHLO
    return lmtp


def deliver(port: int, raw: bytes, recipients: list[str]) -> list[tuple[int, bytes]]:
    """One LMTP transaction; the per-recipient replies after DATA (RFC 2033 §4.2).

    smtplib's data() reads only the first reply; the others follow on the wire.
    """
    with client(port) as lmtp:
        assert lmtp.mail(SENDER)[0] == 250
        for rcpt in recipients:
            assert lmtp.rcpt(rcpt)[0] == 250
        replies = [lmtp.data(raw)]
        replies += [lmtp.getreply() for _ in recipients[1:]]
        assert lmtp.noop()[0] == 250  # the conversation is still in step
    return replies


def test_two_recipients_one_ticket_two_replies(serve: Serve, store: Store, sink: Sink) -> None:
    """A message for two of our addresses is stored once and answered 250 once per recipient."""
    port = serve(LmtpHandler(sink, accept_domains=["example.test"]))
    replies = deliver(port, make_mail(), ["support@example.test", "it@example.test"])

    assert [code for code, _ in replies] == [250, 250]
    assert all(b"<req-1@mail.example.com> queued as ticket 1" in text for _, text in replies)
    assert stored_ids(store) == ["req-1@mail.example.com"]


def test_redelivery_is_answered_as_already_stored(serve: Serve, store: Store, sink: Sink) -> None:
    """An MTA retrying after a lost 250 gets 250 again, and nothing is stored twice."""
    port = serve(LmtpHandler(sink, accept_domains=["example.test"]))
    deliver(port, make_mail(), ["support@example.test"])
    ((code, text),) = deliver(port, make_mail(), ["support@example.test"])
    assert (code, b"already stored on ticket 1" in text) == (250, True)
    assert len(stored_ids(store)) == 1


def test_unknown_recipient_is_refused(serve: Serve, sink: Sink) -> None:
    """RCPT for an address that is not ours gets 550 5.1.1; ours still get 250."""
    port = serve(LmtpHandler(sink, accept_domains=["example.test"]))
    with client(port) as lmtp:
        lmtp.mail(SENDER)
        code, text = lmtp.rcpt("someone@elsewhere.example")
        assert (code, text.startswith(b"5.1.1")) == (550, True)
        assert lmtp.rcpt("SUPPORT@Example.Test")[0] == 250


def test_accept_predicate(serve: Serve, sink: Sink) -> None:
    """Instead of domains, a predicate can decide which addresses are ours."""
    port = serve(LmtpHandler(sink, accept=lambda a: a == "helpdesk@corp.example"))
    with client(port) as lmtp:
        lmtp.mail(SENDER)
        assert lmtp.rcpt("helpdesk@corp.example")[0] == 250
        assert lmtp.rcpt("boss@corp.example")[0] == 550


def test_store_unavailable_answers_451_per_recipient(serve: Serve, store: Store) -> None:
    """When the store is down every recipient gets 451 4.3.0, and nothing is stored."""

    def down(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        raise StoreUnavailable("database is locked")

    port = serve(LmtpHandler(down, accept_domains=["example.test"]))
    replies = deliver(port, make_mail(), ["support@example.test", "it@example.test"])

    assert [(code, text[:5]) for code, text in replies] == [(451, b"4.3.0"), (451, b"4.3.0")]
    assert stored_ids(store) == []


def test_quarantined_mail_is_accepted(serve: Serve, store: Store, sink: Sink) -> None:
    """Mail ingest cannot use is still kept (quarantine), so the MTA gets 250, not a bounce."""
    port = serve(LmtpHandler(sink, accept_domains=["example.test"]))
    ((code, text),) = deliver(port, b"\x00\x01 not mail at all\r\n", ["support@example.test"])
    assert code == 250
    assert b"kept in quarantine" in text
    assert quarantined(store) == 1


def test_the_envelope_sender_stands_in_for_a_missing_from(
    serve: Serve, store: Store, sink: Sink
) -> None:
    """A mail naming no sender in its headers is kept under its MAIL FROM, not quarantined."""
    port = serve(LmtpHandler(sink, accept_domains=["example.test"]))
    ((code, text),) = deliver(port, b"Subject: no sender\r\n\r\nbody\r\n", ["support@example.test"])
    assert code == 250
    assert b"queued as ticket" in text
    assert quarantined(store) == 0
    with store.sessions() as session:
        (sender,) = session.scalars(select(Message.from_address)).all()
    assert sender == SENDER.lower()


def test_sink_called_once_with_all_recipients(serve: Serve, sink: Sink) -> None:
    """One sink call per message, whatever the number of recipients."""
    calls: list[Origin] = []

    def counting(batch: Sequence[Incoming]) -> list[IngestOutcome]:
        calls.extend(item.origin for item in batch)
        return sink(batch)

    port = serve(LmtpHandler(counting, accept_domains=["example.test"], name="mx"))
    deliver(port, make_mail(), ["support@example.test", "it@example.test"])
    assert calls == [
        Origin(source="lmtp", mailbox="mx", recipient="support@example.test, it@example.test")
    ]
