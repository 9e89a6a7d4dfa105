"""The sender against a real aiosmtpd server: sent once, retried on 4xx, failed on 5xx."""

from __future__ import annotations

import asyncio
import email
import random
import ssl
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr
from sqlalchemy import select

from helpdesk import outbox
from helpdesk.settings import SmtpSettings
from helpdesk.smtp import Sender
from helpdesk.store.models import OutboxItem
from helpdesk.values import Address, MessageKind, OutgoingMail
from tests.conftest import Clock, Store
from tests.servers import free_port
from tests.servers.smtp_sink import RecordingHandler, SmtpSink

SIGNER = outbox.Signer(domain="example.com", key=b"k" * 32, loop_id="support@example.com")
POLICY = outbox.OutboxPolicy(max_permanent_failures=2)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink()
    server.start()
    yield server
    server.stop()


def queue(store: Store, clock: Clock, n: int = 1) -> list[int]:
    ids = []
    with store.sessions.begin() as session:
        for i in range(n):
            mail = OutgoingMail(
                kind=MessageKind.AUTO_REPLY,
                ticket_id=None,
                from_=Address("support@example.com", "IT Help Desk"),
                to=(Address(f"user{i}@example.org", "Jörg Ünlü"),),
                subject=f"[#{i}] Ihre Anfrage",
                body="Wir haben Ihre Anfrage erhalten.\n",
                automated=True,
            )
            ids.append(outbox.enqueue(session, mail, SIGNER, now=clock.now).id)
    return ids


def sender(store: Store, port: int, clock: Clock, holder: str = "test") -> Sender:
    settings = SmtpSettings(host="127.0.0.1", port=port, timeout=5.0)
    return Sender(store.sessions, settings, POLICY, holder=holder, clock=clock,
                  rng=random.Random(1))


def states(store: Store) -> list[tuple[str, int]]:
    with store.sessions() as session:
        return [(i.state, i.attempts) for i in session.scalars(select(OutboxItem).order_by(
            OutboxItem.id))]


def test_sent_once_and_marked(store: Store, sink: SmtpSink, clock: Clock) -> None:
    """Queued mail is delivered once, marked sent, and a second pass sends nothing."""
    queue(store, clock, 3)
    s = sender(store, sink.port, clock)
    assert asyncio.run(s.run_once()) == 3
    assert asyncio.run(s.run_once()) == 0
    assert len(sink.messages) == 3
    assert states(store) == [("sent", 1)] * 3
    first = email.message_from_bytes(sink.messages[0].data)
    assert first["Auto-Submitted"] == "auto-replied"
    assert sink.messages[0].recipients == ["user0@example.org"]


def test_server_down_then_up(store: Store, clock: Clock) -> None:
    """While the SMTP server is down rows wait with backoff; once it is up they go out once."""
    port = free_port()
    queue(store, clock, 2)
    s = sender(store, port, clock)
    assert asyncio.run(s.run_once()) == 0
    with store.sessions() as session:
        first = session.scalars(select(OutboxItem).order_by(OutboxItem.id)).first()
        assert first is not None
        assert first.state == "pending"
        assert first.next_attempt_at > clock.now
        assert first.last_error
    server = SmtpSink(port)
    server.start()
    try:
        clock.advance(hours=2)
        assert asyncio.run(s.run_once()) == 2
        assert len(server.messages) == 2
    finally:
        server.stop()


def test_temporary_refusal_is_retried(store: Store, sink: SmtpSink, clock: Clock) -> None:
    """A 451 is retried after the backoff and then delivered."""
    queue(store, clock)
    sink.handler.refuse_next.append("451 4.3.0 try again later")
    s = sender(store, sink.port, clock)
    assert asyncio.run(s.run_once()) == 0
    assert asyncio.run(s.run_once()) == 0  # not due yet
    clock.advance(minutes=10)
    assert asyncio.run(s.run_once()) == 1
    assert states(store) == [("sent", 2)]


def test_permanent_refusal_fails_after_the_configured_count(
    store: Store, sink: SmtpSink, clock: Clock
) -> None:
    """5xx twice (max_permanent_failures = 2) marks the row failed with the error kept."""
    [item_id] = queue(store, clock)
    sink.handler.refuse_next.extend(["554 5.7.1 rejected", "554 5.7.1 rejected"])
    s = sender(store, sink.port, clock)
    asyncio.run(s.run_once())
    clock.advance(hours=1)
    asyncio.run(s.run_once())
    with store.sessions() as session:
        item = session.get_one(OutboxItem, item_id)
        assert (item.state, item.permanent_failures) == ("failed", 2)
        assert "554" in (item.last_error or "")
    with store.sessions.begin() as session:
        outbox.retry(session, item_id, now=clock.now)
    assert asyncio.run(s.run_once()) == 1
    assert len(sink.messages) == 1


def test_two_senders_never_send_the_same_row(store: Store, sink: SmtpSink, clock: Clock) -> None:
    """Claims are exclusive: two senders in parallel deliver 40 rows exactly once each."""
    queue(store, clock, 40)

    async def both() -> None:
        a = sender(store, sink.port, clock, holder="a")
        b = sender(store, sink.port, clock, holder="b")
        a.batch = b.batch = 5
        for _ in range(10):
            await asyncio.gather(a.run_once(), b.run_once())

    asyncio.run(both())
    ids = [email.message_from_bytes(m.data)["Message-ID"] for m in sink.messages]
    assert len(ids) == 40
    assert len(set(ids)) == 40


def test_expired_claim_is_taken_over(store: Store, sink: SmtpSink, clock: Clock) -> None:
    """A sender that died holding a claim does not block the row past the lease."""
    queue(store, clock)
    with store.sessions.begin() as session:
        claimed = outbox.claim_due(session, holder="dead", limit=10, now=clock.now,
                                   lease=timedelta(minutes=5))
        assert len(claimed) == 1
    s = sender(store, sink.port, clock, holder="alive")
    assert asyncio.run(s.run_once()) == 0
    clock.advance(minutes=6)
    assert asyncio.run(s.run_once()) == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 (openssl, as test-servers.md shows)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "2",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def _authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"helpdesk", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_tls_and_auth(store: Store, clock: Clock, certificate: tuple[Path, Path], mode: str,
                      tmp_path: Path) -> None:
    """STARTTLS and implicit TLS with certificate checks (our CA file) and AUTH both deliver;
    a wrong password is a permanent refusal that keeps the error."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    handler = RecordingHandler()
    port = free_port()
    tls_options: dict[str, object] = (
        {"tls_context": context, "require_starttls": True} if mode == "starttls"
        # aiosmtpd counts only STARTTLS as TLS for AUTH; on an implicit-TLS
        # listener the connection is encrypted anyway.
        else {"ssl_context": context, "auth_require_tls": False}
    )
    controller = Controller(handler, hostname="127.0.0.1", port=port, authenticator=_authenticator,
                            auth_required=True, **tls_options)  # type: ignore[arg-type]
    controller.start()
    try:
        [item_id] = queue(store, clock)
        settings = SmtpSettings(host="127.0.0.1", port=port, tls=mode, ca_file=cert,
                                username="helpdesk", password="s3cret", timeout=5.0)
        good = Sender(store.sessions, settings, POLICY, holder="t", clock=clock)
        assert asyncio.run(good.run_once()) == 1
        assert len(handler.messages) == 1
        queue(store, clock)
        bad_settings = settings.model_copy(update={"password": SecretStr("wrong")})
        bad = Sender(store.sessions, bad_settings, POLICY, holder="t", clock=clock)
        assert asyncio.run(bad.run_once()) == 0
        with store.sessions() as session:
            failed = session.scalars(select(OutboxItem).where(OutboxItem.id != item_id)).one()
            assert failed.state == "pending"
            assert "535" in (failed.last_error or "")
    finally:
        controller.stop()
