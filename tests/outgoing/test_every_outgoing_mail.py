"""Every kind of mail we send, through the real path, checked as receiving systems check it.

Issue 10. For each requester client (Outlook, Gmail, iOS Mail) one conversation
produces every kind of outgoing mail: the acknowledgement, the team forward,
the team's notification of a reply, the relayed agent reply by mail and by
`tickets reply`, the answer to an unknown #command, the assignee's
notification, the acknowledgement that reaches the rate limit, the
auto-resolve notice and the escalation. Ingest queues them, the real sender
(aiosmtplib) delivers them to aiosmtpd, and each is checked by `checks.check`:
strict parsing without a defect, 7-bit with CRLF, no line over 998 and none over
78 that could fold, valid encoded-words, subject and display names decoding
to exactly what was meant, In-Reply-To / References (RFC 5322 section 3.6.4),
Thread-Index (MS-OXOMSG: the parent's index plus one child block), the
envelope sender on the wire (RFC 3834 section 3.3) and Auto-Submitted /
Precedence (RFC 3834 section 5).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from email.header import Header
from email.utils import format_datetime, formataddr
from pathlib import Path

import pytest
from sqlalchemy import select

from helpdesk import context
from helpdesk.context import Configured
from helpdesk.desk import timers
from helpdesk.errors import ConfigError
from helpdesk.flow import relay
from helpdesk.flow.ingest import ingest
from helpdesk.mail.conversation import parse_index, reply_index, root_index, thread_guid
from helpdesk.rules import RuleSet
from helpdesk.settings import load_settings
from helpdesk.settings.sections import OutboxSettings
from helpdesk.store.models import Event, OutboxItem, Suppression, Ticket
from helpdesk.templates import TemplateSet
from helpdesk.values import Address, Origin, OutcomeKind
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail
from tests.outgoing.checks import Expect, check, ids
from tests.outgoing.conftest import (
    ALICE,
    MX,
    STAFF_BOUNCES,
    SUPPORT,
    Delivered,
    Desk,
    RecordingServer,
    make_desk,
)

HELPDESK = "Example IT – Service Desk"
EMILE = ("Émile Zola, Direction", "emile.zola@kunde.example")
AUTH_OK = f"{MX}; dkim=pass header.d=it.example.com; spf=pass smtp.mailfrom=it.example.com"
SECURITY = ("security", "security@example.com")
# Long, with an en dash, umlauts, German quotes and an emoji: the shape that lost a
# space and produced empty encoded-words in the standard library's folder.
SUBJECT_1 = ("Verdächtige E-Mail – „Ihr Konto wird gesperrt“ 🚨 phishing? Bitte prüfen, "
             "ob der Link im Anhang gefährlich ist")
SUBJECT_2 = "Phishing-Verdacht: „Rechnung März“ von unbekanntem Absender 🚨"


@dataclass(frozen=True)
class Client:
    """How a requester's mail program writes its mail."""

    name: str
    requester: tuple[str, str]
    message_id: Callable[[int], str]
    thread_index: bool  # Outlook writes Thread-Index and Thread-Topic
    references: bool  # Gmail and Outlook write References; iOS Mail In-Reply-To only


CLIENTS = [
    Client("outlook", ("Jörg Müller-Lüdenscheidt (IT-Einkauf)", "joerg.mueller@kunde.example"),
           # "In-Reply-To: <id>" is 87 characters: it must fold after the colon.
           lambda n: f"AM0PR04MB6433{n:019d}@AM0PR04MB6433.eurprd04.prod.outlook.com",
           thread_index=True, references=True),
    Client("gmail", ("Zoë Ångström 😀", "zoe.angstrom@gmail.example"),
           lambda n: f"CAJ{n:05d}x9ZqW2kVnR+P8T5a_hQ7mYb3Lc=dKs@mail.gmail.com",
           thread_index=False, references=True),
    Client("ios", ("Ærøskøbing Åse", "aase@icloud.example"),
           lambda n: f"{n:08d}-8F2A-4C1E-9D3B-ABCDEF012345@icloud.example",
           thread_index=False, references=False),
]


def raw_mail(headers: list[tuple[str, str]], body: str) -> bytes:
    """A mail as a client writes it, its headers encoded by email.header and formataddr.

    Not by the header registry: on Python 3.11 its folder drops the space
    before an encoded-word (issue 10 item 4) and leaves the comma of an
    encoded display name unquoted, so the requester's own mail would arrive
    broken before our code ever saw it.
    """
    lines = [f"{name}: {value}" for name, value in headers]
    lines += ["MIME-Version: 1.0", 'Content-Type: text/plain; charset="utf-8"',
              "Content-Transfer-Encoding: 8bit", "", body.replace("\n", "\r\n")]
    return "\r\n".join(lines).encode("utf-8")


def encoded(text: str) -> str:
    return Header(text, "utf-8").encode(maxlinelen=76, linesep="\r\n")


def mailbox(person: tuple[str, str]) -> str:
    return formataddr(person, charset="utf-8")


def rfc5322_references(refs: list[str], in_reply_to: list[str], mid: str) -> tuple[str, ...]:
    """RFC 5322 section 3.6.4, written out again for the test."""
    chain = refs if refs else (in_reply_to if len(in_reply_to) == 1 else [])
    return (*chain, mid)


@dataclass
class Sent:
    """A mail the test wrote (a requester's or an agent's), with what a reply to it needs."""

    message_id: str
    references: list[str]
    in_reply_to: list[str]
    thread_index: bytes | None
    raw: bytes


class Conversation:
    """One requester's conversation with the desk; every delivered mail is checked."""

    def __init__(self, desk: Desk, client: Client) -> None:
        self.desk = desk
        self.client = client
        self.count = 0
        # Each ticket's conversation root as the requester's Outlook wrote it.
        self.roots: dict[int, bytes] = {}

    # -- writing mail --------------------------------------------------------

    def requester_mail(self, subject: str, *, parent: Delivered | None = None,
                       cc: tuple[str, str] | None = None,
                       body: str = "Hallo,\n\nsiehe unten.\n") -> Sent:
        """A mail from the requester, new or answering one of our mails."""
        self.count += 1
        mid = self.client.message_id(self.count)
        refs: list[str] = []
        irt: list[str] = []
        index = None
        if parent is not None:
            ours = parent.message()
            irt = [str(ours["Message-ID"]).strip("<>")]
            refs = [*ids(ours, "References"), irt[0]] if self.client.references else []
            index = reply_index(parse_index(str(ours["Thread-Index"])) or b"", self.desk.clock())
        elif self.client.thread_index:
            # A new conversation: Outlook picks a fresh GUID.
            guid = uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.client.name}-{self.count}").bytes
            index = root_index(self.desk.clock(), guid)
        headers = [("From", mailbox(self.client.requester)), ("To", SUPPORT)]
        headers += [("Cc", mailbox(cc))] if cc else []
        headers += [("Subject", encoded(subject)), ("Date", format_datetime(self.desk.clock())),
                    ("Message-ID", f"<{mid}>")]
        headers += [("In-Reply-To", f"<{irt[0]}>")] if irt else []
        headers += [("References", " ".join(f"<{r}>" for r in refs))] if refs else []
        if self.client.thread_index:
            assert index is not None
            headers += [("Thread-Topic", encoded(subject)),
                        ("Thread-Index", base64.b64encode(index).decode())]
        raw = raw_mail(headers, body)
        return Sent(mid, refs, irt, index if self.client.thread_index else None, raw)

    def agent_mail(self, subject: str, body: str, parent: Delivered) -> Sent:
        """An agent's answer from her mail client (DKIM-verified by our MX)."""
        self.count += 1
        mid = f"agent-{self.count}.{self.client.name}@it.example.com"
        ours = parent.message()
        irt = [str(ours["Message-ID"]).strip("<>")]
        refs = [*ids(ours, "References"), irt[0]]
        raw = raw_mail([
            ("From", mailbox(ALICE)), ("To", SUPPORT), ("Subject", encoded(subject)),
            ("Date", format_datetime(self.desk.clock())), ("Message-ID", f"<{mid}>"),
            ("In-Reply-To", f"<{irt[0]}>"), ("References", " ".join(f"<{r}>" for r in refs)),
            ("Authentication-Results", AUTH_OK),
        ], body)
        return Sent(mid, refs, irt, None, raw)

    def ingest(self, sent: Sent) -> int:
        with self.desk.store.sessions.begin() as session:
            outcome = ingest(session, sent.raw, Origin("lmtp", recipient=SUPPORT), self.desk.ctx)
        assert outcome.kind in (OutcomeKind.NEW_TICKET, OutcomeKind.REPLY), outcome
        assert outcome.ticket_id is not None
        if outcome.kind is OutcomeKind.NEW_TICKET and sent.thread_index is not None:
            self.roots[outcome.ticket_id] = sent.thread_index[:22]
        return outcome.ticket_id

    # -- what we expect ------------------------------------------------------

    def root(self, ticket_id: int) -> bytes:
        """The ticket's conversation root: the Outlook requester's, else ours."""
        if ticket_id in self.roots:
            return self.roots[ticket_id]
        with self.desk.store.sessions() as session:
            created = session.get_one(Ticket, ticket_id).created_at
        return root_index(created, thread_guid(f"ticket:{SUPPORT}:{ticket_id}"))

    def parent_index(self, parent: Sent, ticket_id: int) -> bytes:
        return parent.thread_index or self.root(ticket_id)

    def answering(self, parent: Sent, ticket_id: int, *, reply: bool = True) -> dict[str, object]:
        """In-Reply-To, References and parent index of a mail that follows `parent`."""
        return {
            "in_reply_to": parent.message_id if reply else None,
            "references": rfc5322_references(parent.references, parent.in_reply_to,
                                             parent.message_id),
            "parent_index": self.parent_index(parent, ticket_id),
        }

    def to_requester(self, kind: str, subject: str, **fields: object) -> Expect:
        return Expect(kind=kind, to=(self.client.requester,), subject=subject,
                      from_name=HELPDESK, envelope_sender="<>", **fields)  # type: ignore[arg-type]

    def to_staff(self, kind: str, to: tuple[str, str], subject: str, **fields: object) -> Expect:
        return Expect(kind=kind, to=(to,), subject=subject, from_name=HELPDESK,
                      envelope_sender=f"<{STAFF_BOUNCES}>", **fields)  # type: ignore[arg-type]

    def deliver(self, *expects: Expect) -> list[Delivered]:
        """Send what is queued; check each mail against its expectation, in queue order."""
        delivered = self.desk.send()
        assert len(delivered) == len(expects), [d.recipients for d in delivered]
        for mail, expect in zip(delivered, expects, strict=True):
            check(mail, expect, self.desk.clock())
        return delivered


def converse(desk: Desk, client: Client) -> tuple[dict[str, Delivered], Conversation]:
    """The whole conversation; returns every delivered mail by kind."""
    talk = Conversation(desk, client)
    clock = desk.clock
    mails: dict[str, Delivered] = {}
    name = client.requester[0]

    # 1. A new request (a phishing report: acknowledged and forwarded to security).
    first = talk.requester_mail(SUBJECT_1, cc=EMILE)
    t1 = talk.ingest(first)
    ack, forward = talk.deliver(
        talk.to_requester("ack", f"Re: [#{t1}] {SUBJECT_1}", auto_submitted="auto-replied",
                          **talk.answering(first, t1)),
        talk.to_staff("team forward", SECURITY, f"[#{t1}] {SUBJECT_1}",
                      auto_submitted="auto-generated", **talk.answering(first, t1, reply=False)),
    )
    mails |= {"ack": ack, "team forward": forward}

    # 2. The requester adds something before anyone answered: the team is told.
    clock.advance(minutes=20)
    second = talk.requester_mail(f"Re: [#{t1}] {SUBJECT_1}", parent=ack,
                                 body="Noch ein Detail: der Link führt nach evil.example.\n")
    assert talk.ingest(second) == t1
    (mails["team notification"],) = talk.deliver(replace(talk.to_staff(
        "team notification", SECURITY, f"[#{t1}] New reply: {SUBJECT_1}",
        auto_submitted="auto-generated", **talk.answering(second, t1, reply=False)),
        from_name=f"{name} via {HELPDESK}"))

    # 3. The agent answers the team forward from her mail client: relayed to both people.
    clock.advance(minutes=30)
    answer = talk.agent_mail(f"RE: [#{t1}] {SUBJECT_1}",
                             "#assign alice@it.example.com\n\nHallo, bitte nicht klicken.\n",
                             forward)
    assert talk.ingest(answer) == t1
    (mails["relay by mail"],) = talk.deliver(replace(
        talk.to_requester("relay by mail", f"Re: [#{t1}] {SUBJECT_1}", auto_submitted=None,
                          precedence=None, **talk.answering(second, t1)),
        cc=(EMILE,), from_name=ALICE[0], envelope_sender=f"<{SUPPORT}>"))

    # 4. A mistyped command: the agent gets an answer, nothing is relayed.
    clock.advance(minutes=5)
    typo = talk.agent_mail(f"RE: [#{t1}] {SUBJECT_1}", "#staus pending\nErledigt.\n", forward)
    assert talk.ingest(typo) == t1
    (mails["command answer"],) = talk.deliver(talk.to_staff(
        "command answer", ALICE, f"[#{t1}] Commands not applied: RE: [#{t1}] {SUBJECT_1}",
        auto_submitted="auto-replied", **talk.answering(typo, t1)))

    # 5. The requester answers the relay: now the assignee is told.
    clock.advance(hours=1)
    third = talk.requester_mail(f"Re: [#{t1}] {SUBJECT_1}", parent=mails["relay by mail"],
                                body="Danke, ich habe nicht geklickt.\n")
    assert talk.ingest(third) == t1
    (mails["assignee notification"],) = talk.deliver(replace(talk.to_staff(
        "assignee notification", ALICE, f"[#{t1}] New reply: {SUBJECT_1}",
        auto_submitted="auto-generated", **talk.answering(third, t1, reply=False)),
        from_name=f"{name} via {HELPDESK}"))

    # 6. The agent sets the ticket pending by mail (commands only: nothing is sent)
    #    and writes once more with `helpdesk tickets reply`.
    clock.advance(minutes=10)
    pending = talk.agent_mail(f"RE: [#{t1}] {SUBJECT_1}", "#status pending\n", forward)
    talk.ingest(pending)
    assert desk.send() == []
    with desk.store.sessions.begin() as session:
        relay.agent_reply(session, ticket_id=t1, agent=Address(ALICE[1], ALICE[0]),
                          text="Bitte melden Sie sich, falls noch etwas ist.\n",
                          ctx=desk.actions, now=clock())
    (mails["relay by tickets reply"],) = talk.deliver(replace(
        talk.to_requester("relay by tickets reply", f"Re: [#{t1}] {SUBJECT_1}",
                          auto_submitted=None, precedence=None, **talk.answering(third, t1)),
        cc=(EMILE,), from_name=ALICE[0], envelope_sender=f"<{SUPPORT}>"))

    # 7. A second request: the acknowledgement that reaches the rate limit (2) says so.
    clock.advance(minutes=1)
    fourth = talk.requester_mail(SUBJECT_2)
    t2 = talk.ingest(fourth)
    limit_ack, forward2 = talk.deliver(
        talk.to_requester("rate-limit ack", f"Re: [#{t2}] {SUBJECT_2}",
                          auto_submitted="auto-replied", **talk.answering(fourth, t2)),
        talk.to_staff("team forward 2", SECURITY, f"[#{t2}] {SUBJECT_2}",
                      auto_submitted="auto-generated", **talk.answering(fourth, t2, reply=False)),
    )
    mails |= {"rate-limit ack": limit_ack}
    assert "\n-- \nThis is the last automatic reply" in _text(limit_ack)

    # 8. A week later: ticket 1 (pending, silent) is resolved with a notice in reply
    #    to the requester's last mail; ticket 2 (high, unanswered) is escalated in
    #    reply to our forward to the team.
    clock.advance(days=8)
    with desk.store.sessions.begin() as session:
        fired = timers.run(session, desk.rules.timers, desk.actions, clock())
    assert sorted(f.timer.name for f in fired) == ["escalate-unanswered",
                                                   "resolve-stale-pending"]
    forward2_sent = _as_sent(forward2)
    notice, escalation = talk.deliver(
        talk.to_requester("auto-resolve notice", f"[#{t1}] Resolved: {SUBJECT_1}",
                          auto_submitted="auto-generated", **talk.answering(third, t1)),
        talk.to_staff("escalation", ("", "sec-lead@example.com"),
                      f"[#{t2}] Escalated: {SUBJECT_2}", auto_submitted="auto-generated",
                      **talk.answering(forward2_sent, t2)),
    )
    mails |= {"auto-resolve notice": notice, "escalation": escalation}
    assert "no answer within its target time" in _text(escalation)
    return mails, talk


def _as_sent(ours: Delivered) -> Sent:
    """One of our own mails as a parent: its id, References and Thread-Index as written."""
    msg = ours.message()
    return Sent(str(msg["Message-ID"]).strip("<>"), ids(msg, "References"),
                ids(msg, "In-Reply-To"), parse_index(str(msg["Thread-Index"])), ours.data)


def _text(delivered: Delivered) -> str:
    part = delivered.message().get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


@pytest.fixture
def desk(store: Store, clock: Clock, smtp_server: RecordingServer) -> Desk:
    return make_desk(store, clock, smtp_server, auto_reply_limit=2)


@pytest.mark.parametrize("client", CLIENTS, ids=[c.name for c in CLIENTS])
def test_every_kind_of_mail_we_send(desk: Desk, client: Client) -> None:
    """Ten kinds of mail, each passing every check of `checks.check`."""
    mails, _talk = converse(desk, client)

    assert sorted(mails) == sorted([
        "ack", "team forward", "team notification", "relay by mail", "command answer",
        "assignee notification", "relay by tickets reply", "rate-limit ack",
        "auto-resolve notice", "escalation",
    ])


def test_outlook_conversation_is_continued_not_replaced(desk: Desk) -> None:
    """Issue 10 item 3: our mails carry the Outlook requester's own 22-byte root."""
    mails, talk = converse(desk, CLIENTS[0])
    requester_root = talk.roots[1]

    for kind in ("ack", "team forward", "team notification", "relay by mail",
                 "command answer", "auto-resolve notice"):
        index = parse_index(str(mails[kind].message()["Thread-Index"]))
        assert index is not None
        assert index[:22] == requester_root, kind  # the requester's header block, not ours
    # Each level appends one block: ack 27, the requester's answer to it 32, ...
    assert [len(parse_index(str(mails[k].message()["Thread-Index"])) or b"")
            for k in ("ack", "team notification", "relay by mail")] == [27, 37, 37]


def test_ios_in_reply_to_only_keeps_the_first_id(desk: Desk) -> None:
    """Issue 10 item 6: a reply to an In-Reply-To-only mail keeps the thread's first id."""
    mails, _talk = converse(desk, CLIENTS[2])
    relayed = mails["relay by mail"].message()

    # The requester's second mail answered our ack with In-Reply-To only.
    assert ids(relayed, "References")[0] == ids(mails["ack"].message(), "Message-ID")[0]


# --------------------------------------------------------------------------
# Single promises, with the exact bytes


def test_acknowledgement_keeps_the_requesters_subject(desk: Desk) -> None:
    """Issue 10 item 9: `Re: [#1] VPN drops every hour`, so that Gmail threads it."""
    raw = make_mail(sender="Dana Reyes <dana.reyes@example.com>",
                    subject="VPN drops every hour", message_id="<vpn-1@mail.example.com>")
    with desk.store.sessions.begin() as session:
        ingest(session, raw, Origin("lmtp", recipient=SUPPORT), desk.ctx)

    (ack,) = desk.send()

    assert b"\r\nSubject: Re: [#1] VPN drops every hour\r\n" in ack.data
    assert (b"\r\nIn-Reply-To: <vpn-1@mail.example.com>\r\n"
            b"References: <vpn-1@mail.example.com>\r\n") in ack.data
    assert b"\r\nAuto-Submitted: auto-replied\r\nX-Auto-Response-Suppress: All\r\n" \
        b"Precedence: bulk\r\n" in ack.data


def test_null_sender_on_the_wire(desk: Desk) -> None:
    """Issue 10 item 1: automatic mail to a requester goes out as `MAIL FROM:<>`."""
    raw = make_mail(sender="Dana Reyes <dana.reyes@example.com>", subject="Printer jammed")
    with desk.store.sessions.begin() as session:
        ingest(session, raw, Origin("lmtp", recipient=SUPPORT), desk.ctx)
        (item,) = session.scalars(select(OutboxItem))
        assert item.envelope_from == ""

    (ack,) = desk.send()

    assert ack.mail_command.split(" ")[0] == "FROM:<>"
    assert ack.recipients == ["dana.reyes@example.com"]


def test_precedence_can_be_turned_off(store: Store, clock: Clock,
                                      smtp_server: RecordingServer) -> None:
    """`[outbox] precedence_bulk = false`: Auto-Submitted stays, Precedence goes."""
    desk = make_desk(store, clock, smtp_server, precedence_bulk=False)
    raw = make_mail(sender="Dana Reyes <dana.reyes@example.com>", subject="Printer jammed")
    with store.sessions.begin() as session:
        ingest(session, raw, Origin("lmtp", recipient=SUPPORT), desk.ctx)

    (ack,) = desk.send()

    assert b"\r\nAuto-Submitted: auto-replied\r\n" in ack.data
    assert b"Precedence" not in ack.data


def test_staff_bounce_address_defaults_to_the_null_sender(store: Store, clock: Clock,
                                                          smtp_server: RecordingServer) -> None:
    """Without a staff bounce address, staff mail uses `<>` too."""
    desk = make_desk(store, clock, smtp_server, staff_envelope="")
    raw = make_mail(sender="Dana Reyes <dana.reyes@example.com>", subject="Phishing mail")
    with store.sessions.begin() as session:
        ingest(session, raw, Origin("lmtp", recipient=SUPPORT), desk.ctx)

    delivered = desk.send()

    assert [d.mail_command.split(" ")[0] for d in delivered] == ["FROM:<>", "FROM:<>"]


def test_bounce_to_the_bounce_address_is_attached(desk: Desk) -> None:
    """A DSN that reaches the staff bounce address lands on the ticket and suppresses."""
    raw = make_mail(sender="Dana Reyes <dana.reyes@example.com>", subject="Phishing mail")
    with desk.store.sessions.begin() as session:
        ticket_id = ingest(session, raw, Origin("lmtp", recipient=SUPPORT), desk.ctx).ticket_id
    _ack, forward = desk.send()
    assert forward.mail_command.split(" ")[0] == f"FROM:<{STAFF_BOUNCES}>"

    dsn = _dsn(to=STAFF_BOUNCES, failed="security@example.com", original=forward.data)
    with desk.store.sessions.begin() as session:
        outcome = ingest(session, dsn, Origin("lmtp", recipient=STAFF_BOUNCES), desk.ctx)
    assert outcome.ticket_id == ticket_id
    assert outcome.mail_class == "bounce"
    with desk.store.sessions() as session:
        kinds = [e.kind for e in session.scalars(select(Event).where(
            Event.ticket_id == ticket_id))]
        assert "bounce.received" in kinds
        assert session.get(Suppression, "security@example.com") is not None
    assert desk.send() == []  # a bounce is never answered


def _dsn(*, to: str, failed: str, original: bytes) -> bytes:
    """A Postfix-style delivery status notification returning `original`."""
    head = original.split(b"\r\n\r\n", 1)[0]
    return (
        b"Return-Path: <>\r\n"
        b"From: MAILER-DAEMON@mx.example.com (Mail Delivery System)\r\n"
        + f"To: {to}\r\n".encode()
        + b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"Date: Mon, 02 Mar 2026 09:05:00 +0000\r\n"
        b"Message-ID: <dsn-1@mx.example.com>\r\n"
        b"Auto-Submitted: auto-replied\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.com\r\n\r\n"
        + f"Final-Recipient: rfc822; {failed}\r\n".encode()
        + b"Action: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
        b"--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        + head + b"\r\n--b1--\r\n"
    )


# --------------------------------------------------------------------------
# Configuration


def test_outbox_settings_reach_the_actions(store: Store, tmp_path: Path) -> None:
    """`[outbox]` bounce addresses and precedence_bulk become what actions send with."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(
        '[helpdesk]\nsupport_address = "support@example.com"\n'
        '[outbox]\nbounce_address = "<>"\nstaff_bounce_address = "Bounces@Example.com"\n'
        "precedence_bulk = false\n", encoding="utf-8")
    settings = load_settings(config, {}, cwd=tmp_path)
    with store.sessions.begin() as session:
        actions = context.ingest_context(session, settings, Configured(RuleSet(), TemplateSet())
                                         ).actions

    assert actions is not None
    assert (actions.requester_envelope, actions.staff_envelope, actions.precedence_bulk) == (
        "", "bounces@example.com", False)


def test_staff_bounce_address_defaults_to_bounce_address(tmp_path: Path) -> None:
    """Unset, staff mail uses bounce_address; a bad value is named with its key."""
    config = tmp_path / "helpdesk.toml"
    config.write_text('[outbox]\nbounce_address = "bounces@example.com"\n', encoding="utf-8")
    outbox = load_settings(config, {}, cwd=tmp_path).outbox
    assert (outbox.requester_envelope_sender, outbox.staff_envelope_sender) == (
        "bounces@example.com", "bounces@example.com")
    assert (OutboxSettings().requester_envelope_sender,
            OutboxSettings().staff_envelope_sender) == ("", "")

    config.write_text('[outbox]\nbounce_address = "nobody"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"outbox.bounce_address: must be \"<>\" or an email"):
        load_settings(config, {}, cwd=tmp_path)
