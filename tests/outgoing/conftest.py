"""A help desk wired like the daemon's, and an SMTP server that records the exact MAIL FROM."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from helpdesk.context import BUILTIN_TEMPLATES
from helpdesk.delivery.outbox import OutboxPolicy, Signer
from helpdesk.desk import directory
from helpdesk.desk.actions import ActionContext
from helpdesk.flow.ingest import IngestContext
from helpdesk.mail.compose import ticket_from_message_id
from helpdesk.mail.trust import TrustPolicy
from helpdesk.rules import RuleSet, load_rules
from helpdesk.settings import SmtpSettings
from helpdesk.smtp import Sender
from helpdesk.templates import load_templates
from tests.conftest import Clock, Store
from tests.servers import free_port
from tests.servers.smtp_controller import ClosingController

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = "support@example.com"
STAFF_BOUNCES = "helpdesk-bounces@example.com"
KEY = b"outgoing mail test key"
MX = "mx.example.com"
TEAMS = {
    # name: (address, lead)
    "security": ("security@example.com", "sec-lead@example.com"),
    "networking": ("networking@example.com", None),
    "support": ("support-team@example.com", None),
    "identity-and-access": ("iam@example.com", None),
    "infrastructure": ("infra@example.com", None),
}
ALICE = ("Alice Ågren-Müller", "alice@it.example.com")


@dataclass
class Delivered:
    """One mail as the SMTP server saw it."""

    mail_command: str  # what followed "MAIL " on the wire, e.g. "FROM:<> SIZE=1234"
    recipients: list[str]
    data: bytes

    @property
    def envelope_sender(self) -> str:
        """The reverse-path as written: "<>" for the null sender."""
        return self.mail_command.split(" ")[0].removeprefix("FROM:")

    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP, remembering the MAIL command's argument of each transaction."""

    async def smtp_MAIL(self, arg: str) -> None:
        setattr(self.session, "mail_command", arg)  # noqa: B010 - Session has no such field
        await super().smtp_MAIL(arg)


@dataclass
class _Handler:
    delivered: list[Delivered] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or envelope.content
        self.delivered.append(Delivered(getattr(session, "mail_command", ""),
                                        list(envelope.rcpt_tos), bytes(content)))
        return "250 2.0.0 accepted"


class _Controller(ClosingController):
    def make_smtp(self) -> SMTP:
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)


class RecordingServer:
    """aiosmtpd on a free loopback port; `take()` returns what arrived since the last call."""

    def __init__(self) -> None:
        self.handler = _Handler()
        self.port = free_port()
        self.controller = _Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self._seen = 0

    def take(self) -> list[Delivered]:
        new = self.handler.delivered[self._seen:]
        self._seen = len(self.handler.delivered)
        return new


@pytest.fixture
def smtp_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    server.controller.start()
    yield server
    server.controller.stop()


@dataclass
class Desk:
    """The help desk under test: ingest context, rules and the real sender."""

    store: Store
    clock: Clock
    server: RecordingServer
    ctx: IngestContext
    rules: RuleSet

    @property
    def actions(self) -> ActionContext:
        assert self.ctx.actions is not None
        return self.ctx.actions

    def send(self) -> list[Delivered]:
        """One pass of the real sender (aiosmtplib to aiosmtpd); what arrived."""
        sender = Sender(self.store.sessions,
                        SmtpSettings(host="127.0.0.1", port=self.server.port, timeout=10.0),
                        OutboxPolicy(), holder="test", clock=self.clock)
        asyncio.run(sender.run_once())
        return self.server.take()


def make_desk(store: Store, clock: Clock, server: RecordingServer, **actions: Any) -> Desk:
    agents = [_Spec(ALICE[0], addresses=[ALICE[1]], teams=["security", "networking"])]
    teams = [_Spec(name, address=address, lead=lead) for name, (address, lead) in TEAMS.items()]
    with store.sessions.begin() as session:
        directory.sync(session, teams, agents)  # type: ignore[arg-type]
    templates = load_templates(ROOT / "templates")
    rules = load_rules(ROOT / "rules", teams=set(TEAMS), agents={ALICE[1]},
                       templates=templates.names | BUILTIN_TEMPLATES)
    signer = Signer("example.com", KEY, SUPPORT)
    options: dict[str, Any] = {
        "helpdesk_name": "Example IT – Service Desk", "support_address": SUPPORT,
        "tag_prefix": "#", "signer": signer, "templates": templates,
        "teams": {name: address for name, (address, _lead) in TEAMS.items()},
        "is_own_address": lambda a: a.startswith("support") or a == STAFF_BOUNCES,
        "requester_envelope": "", "staff_envelope": STAFF_BOUNCES, **actions,
    }
    ctx = IngestContext(
        is_own_address=options["is_own_address"], clock=clock, loop_id=SUPPORT, rules=rules,
        actions=ActionContext(**options), trust=TrustPolicy(authserv_id=MX),
        verify_signed_id=lambda mid: ticket_from_message_id(mid, secret=KEY,
                                                            domains={"example.com"}),
    )
    return Desk(store, clock, server, ctx, rules)


class _Spec:
    def __init__(self, name: str, **kw: object) -> None:
        self.name = name
        self.__dict__.update(kw)
