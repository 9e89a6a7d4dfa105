"""The sender against a real aiosmtpd server: once per recipient, retries, claims, TLS and AUTH.

The relay scenarios of issue 9 (greylisting, slow relay, store failing after
the 250, SIGTERM, AUTH refused) are in tests/faults/.
"""

from __future__ import annotations

import asyncio
import email
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr
from sqlalchemy import select, text

from helpdesk.delivery import claims, outbox, views
from helpdesk.settings import SmtpSettings
from helpdesk.smtp import Sender
from helpdesk.store import schema
from helpdesk.store.models import OutboxItem
from tests.conftest import Clock, Store
from tests.faults.helpers import FAST, items, make_sender, queue
from tests.faults.relay import ScriptedRelay
from tests.servers import free_port
from tests.servers.smtp_controller import ClosingController
from tests.servers.smtp_sink import RecordingHandler

POLICY = outbox.OutboxPolicy(max_permanent_failures=2)
POSTGRES = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


@pytest.fixture
def relay() -> Iterator[ScriptedRelay]:
    server = ScriptedRelay().start()
    yield server
    server.stop()


def sender(store: Store, port: int | ScriptedRelay, clock: Clock, holder: str = "test") -> Sender:
    return make_sender(store, port, holder=holder, clock=clock, policy=POLICY)


def states(store: Store) -> list[tuple[str, int]]:
    return [(i.state, i.attempts) for i in items(store)]


def test_sent_once_over_one_connection_and_marked(
    store: Store, relay: ScriptedRelay, clock: Clock
) -> None:
    """Queued mail is delivered once over one connection, marked sent; a second pass sends
    nothing."""
    queue(store, 3, now=clock.now)
    s = sender(store, relay, clock)
    assert asyncio.run(s.run_once()) == 3
    assert asyncio.run(s.run_once()) == 0
    assert len(relay.accepted) == 3
    assert relay.connections == 1, "the batch went over one connection"
    assert states(store) == [("sent", 1)] * 3
    first = email.message_from_bytes(relay.accepted[0].data)
    assert first["Auto-Submitted"] == "auto-replied"
    assert relay.accepted[0].recipients == ["user0@example.org"]
    assert [r.state for i in items(store) for r in i.recipients] == ["sent"] * 3


def test_relay_down_is_not_the_mails_fault_and_mail_goes_once_it_is_up(
    store: Store, clock: Clock
) -> None:
    """While the relay is down rows stay queued untouched (no attempt counted, no error on
    the mail), the relay's problem is recorded; once it is up they go out once."""
    port = free_port()
    queue(store, 2, now=clock.now)
    s = sender(store, port, clock)
    assert asyncio.run(s.run_once()) == 0
    for item in items(store):
        assert (item.state, item.attempts, item.last_error) == ("pending", 0, None)
        assert item.next_attempt_at == clock.now
        assert item.claimed_by is None, "the claims were given back"
    with store.sessions() as session:
        [status] = views.relay_status(session)
    assert (status.state, status.problem) == ("failing", "unreachable")
    assert "Connect" in (status.error or "")
    assert asyncio.run(s.run_once()) == 0, "backing off: the relay is not tried at once"
    server = ScriptedRelay(port=port).start()
    try:
        time.sleep(FAST.cap)
        assert asyncio.run(s.run_once()) == 2
        assert len(server.accepted) == 2
    finally:
        server.stop()
    with store.sessions() as session:
        [status] = views.relay_status(session)
    assert status.ok


def test_temporary_refusal_is_retried(store: Store, relay: ScriptedRelay, clock: Clock) -> None:
    """A 451 to DATA is retried after the backoff and then delivered."""
    queue(store, now=clock.now)
    relay.script.data.append("451 4.3.0 try again later")
    s = sender(store, relay, clock)
    assert asyncio.run(s.run_once()) == 0
    assert asyncio.run(s.run_once()) == 0  # not due yet
    clock.advance(minutes=10)
    assert asyncio.run(s.run_once()) == 1
    assert states(store) == [("sent", 2)]
    with store.sessions() as session:
        history = outbox.attempts(session, items(store)[0].id)
    assert [(a.outcome, "451" in a.detail) for a in history] == [("deferred", True),
                                                                 ("sent", False)]


def test_permanent_refusal_fails_after_the_configured_count(
    store: Store, relay: ScriptedRelay, clock: Clock
) -> None:
    """5xx twice (max_permanent_failures = 2) marks the row failed with the error kept;
    `outbox.retry` queues it again."""
    [item_id] = queue(store, now=clock.now)
    relay.script.data.extend(["554 5.7.1 rejected", "554 5.7.1 rejected"])
    s = sender(store, relay, clock)
    asyncio.run(s.run_once())
    assert states(store) == [("pending", 1)], "one 5xx is not enough"
    clock.advance(hours=1)
    asyncio.run(s.run_once())
    with store.sessions() as session:
        item = session.get_one(OutboxItem, item_id)
        assert (item.state, item.permanent_failures) == ("failed", 2)
        assert "554" in (item.last_error or "")
    with store.sessions.begin() as session:
        outbox.retry(session, item_id, now=clock.now)
    assert asyncio.run(s.run_once()) == 1
    assert len(relay.accepted) == 1


def test_two_senders_never_send_the_same_row(
    store: Store, relay: ScriptedRelay, clock: Clock
) -> None:
    """Claims are exclusive: two senders in parallel deliver 40 rows exactly once each."""
    queue(store, 40, now=clock.now)

    async def both() -> None:
        a = sender(store, relay, clock, holder="a")
        b = sender(store, relay, clock, holder="b")
        a.batch = b.batch = 5
        for _ in range(10):
            await asyncio.gather(a.run_once(), b.run_once())

    asyncio.run(both())
    ids = [a.message_id for a in relay.accepted]
    assert len(ids) == 40
    assert len(set(ids)) == 40


def test_expired_claim_is_taken_over(store: Store, relay: ScriptedRelay, clock: Clock) -> None:
    """A sender that died holding a claim does not block the row past the claim."""
    queue(store, now=clock.now)
    with store.sessions.begin() as session:
        claimed = claims.claim_due(session, holder="dead", limit=10, now=clock.now,
                                   lease=timedelta(seconds=1))
        assert len(claimed) == 1
    s = sender(store, relay, clock, holder="alive")
    assert asyncio.run(s.run_once()) == 0
    # Expired on either clock: the host's (SQLite) and the database's (PostgreSQL).
    clock.advance(seconds=2)
    time.sleep(1.1)
    assert asyncio.run(s.run_once()) == 1


def test_claiming_settles_rows_with_nothing_to_send_and_fills_in_missing_recipients(
    store: Store, clock: Clock
) -> None:
    """A row without recipient rows (written by hand, or before they existed) is sent to
    its envelope, each address once; a row whose recipients are all done is settled, not
    claimed: sent when any was sent, else failed."""
    bare, done, dead, normal = queue(store, 4, now=clock.now)
    recipients = schema.outbox_recipients
    with store.engine.begin() as conn:
        conn.execute(recipients.delete().where(recipients.c.outbox_id == bare))
        conn.execute(schema.outbox.update().where(schema.outbox.c.id == bare)
                     .values(envelope_to=["x@example.org", "y@example.org", "x@example.org"]))
        conn.execute(recipients.update().where(recipients.c.outbox_id == done)
                     .values(state="sent"))
        conn.execute(recipients.update().where(recipients.c.outbox_id == dead)
                     .values(state="failed"))
    with store.sessions.begin() as session:
        claimed = claims.claim_due(session, holder="a", limit=10, now=clock.now,
                                   lease=timedelta(minutes=5))
    assert [(c.id, c.recipients) for c in claimed] == [
        (bare, ("x@example.org", "y@example.org")), (normal, ("user3@example.org",))]
    with store.engine.connect() as conn:
        rows = dict(conn.execute(select(schema.outbox.c.id,
                                        schema.outbox.c.state)).all())
        holders = dict(conn.execute(select(schema.outbox.c.id,
                                           schema.outbox.c.claimed_by)).all())
        filled = conn.execute(select(recipients.c.address, recipients.c.state)
                              .where(recipients.c.outbox_id == bare)
                              .order_by(recipients.c.id)).all()
    assert (rows[done], rows[dead]) == ("sent", "failed")
    assert holders == {bare: "a", done: None, dead: None, normal: "a"}
    assert [tuple(r) for r in filled] == [("x@example.org", "pending"),
                                          ("y@example.org", "pending")]
    with store.sessions.begin() as session:  # claimed: nobody else takes them meanwhile
        assert claims.claim_due(session, holder="b", limit=10, now=clock.now,
                                lease=timedelta(minutes=5)) == []


@POSTGRES
def test_claims_expire_on_the_database_clock(store: Store, clock: Clock) -> None:
    """A sender whose host clock runs an hour ahead cannot take a row claimed a moment ago
    by a sender on another host: the claim's expiry is PostgreSQL's now() plus the lease."""
    queue(store, now=clock.now)
    with store.sessions.begin() as session:
        db_now = session.execute(text("SELECT now()")).scalar_one()
        [item] = claims.claim_due(session, holder="a", limit=10, now=clock.now,
                                  lease=timedelta(minutes=5))
        assert item.claimed_until is not None
        assert abs((item.claimed_until - db_now) - timedelta(minutes=5)) < timedelta(seconds=1)
    ahead = clock.now + timedelta(hours=1)
    with store.sessions.begin() as session:
        assert claims.claim_due(session, holder="b", limit=10, now=ahead,
                                lease=timedelta(minutes=5)) == []
    with store.sessions.begin() as session:
        assert claims.renew_claims(session, holder="a", lease=timedelta(minutes=5),
                                   now=clock.now - timedelta(hours=3)) == 1
        until = session.scalars(select(OutboxItem.claimed_until)).one()
        assert until is not None
        assert until > db_now


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
    a wrong password is the relay's problem (535 recorded there), not the mail's."""
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
    controller = ClosingController(handler, hostname="127.0.0.1", port=port,
                                   authenticator=_authenticator, auth_required=True,
                                   **tls_options)
    controller.start()
    try:
        [item_id] = queue(store, now=clock.now)
        settings = SmtpSettings(host="127.0.0.1", port=port, tls=mode, ca_file=cert,
                                username="helpdesk", password="s3cret", timeout=5.0)
        good = Sender(store.sessions, settings, POLICY, holder="t", clock=clock, watch=False)
        assert asyncio.run(good.run_once()) == 1
        assert len(handler.messages) == 1
        queue(store, now=clock.now)
        bad_settings = settings.model_copy(update={"password": SecretStr("wrong")})
        bad = Sender(store.sessions, bad_settings, POLICY, holder="t", clock=clock, watch=False)
        assert asyncio.run(bad.run_once()) == 0
        with store.sessions() as session:
            waiting = session.scalars(select(OutboxItem).where(OutboxItem.id != item_id)).one()
            assert (waiting.state, waiting.attempts, waiting.last_error) == ("pending", 0, None)
            [status] = views.relay_status(session)
        assert (status.problem, "535" in (status.error or "")) == ("auth", True)
    finally:
        controller.stop()


def test_tls_failure_is_the_relays_problem(
    store: Store, relay: ScriptedRelay, clock: Clock, certificate: tuple[Path, Path]
) -> None:
    """STARTTLS configured but not offered by the relay: nothing is sent in clear, the
    mail waits, the relay is marked failing with a TLS problem."""
    cert, _ = certificate
    queue(store, now=clock.now)
    s = make_sender(store, relay, clock=clock, smtp={"tls": "starttls", "ca_file": cert})
    assert asyncio.run(s.run_once()) == 0
    assert relay.accepted == []
    assert states(store) == [("pending", 0)]
    with store.sessions() as session:
        [status] = views.relay_status(session)
    assert status.problem == "tls"


@pytest.mark.parametrize("reply", ["451 4.3.0 sender verify deferred",
                                   "550 5.7.1 sender not allowed"])
def test_mail_from_refused_is_the_relays_problem(
    store: Store, relay: ScriptedRelay, clock: Clock, reply: str
) -> None:
    """4xx or 5xx to MAIL FROM (our relay distrusts our sender address): the mail stays
    queued untouched and goes out once the relay takes it."""
    queue(store, now=clock.now)
    relay.script.mail.append(reply)
    s = sender(store, relay, clock)
    assert asyncio.run(s.run_once()) == 0
    assert states(store) == [("pending", 0)]
    with store.sessions() as session:
        [status] = views.relay_status(session)
    assert (status.problem, status.error) == ("sender_refused", reply)
    time.sleep(FAST.cap)
    assert asyncio.run(s.run_once()) == 1
    assert states(store) == [("sent", 1)]


def test_a_connection_the_relay_closed_while_idle_is_reopened_at_once(
    store: Store, relay: ScriptedRelay, clock: Clock
) -> None:
    """A reused connection the relay dropped meanwhile costs a reconnect, not a backoff."""
    queue(store, now=clock.now)

    async def two_batches() -> int:
        s = sender(store, relay, clock)
        s._loop = asyncio.get_running_loop()  # keep the connection open as run() does
        first = await s.run_once()
        assert s.relay.connected
        relay.drop_connections()  # as if the relay had timed us out
        await asyncio.sleep(0.1)
        queue(store, now=clock.now)
        second = await s.run_once()
        assert s.relay_problem is None
        await s.relay.close()
        return first + second

    assert asyncio.run(two_batches()) == 2
    assert relay.connections == 2
