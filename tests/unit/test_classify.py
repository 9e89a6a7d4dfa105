"""classify(): human, auto-reply, bounce, list or our own, with reasons and bounce reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdesk.mail.classify import classify, is_noreply_address, parse_bounce_text, parse_dsn
from helpdesk.mail.parse import parse
from helpdesk.values import BounceRecipient, BounceReport, MailClass, ParsedMessage, Verdict

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = ROOT / "tests" / "messages"
OWN = frozenset({"support@example.com", "helpdesk@example.com"})
LOOP_ID = "helpdesk.example.com"
HUMAN_DIRS = ("gmail", "outlook", "apple", "mobile", "thunderbird")
HUMAN_FIXTURES = sorted(path for name in HUMAN_DIRS for path in (MESSAGES / name).glob("*.eml"))
ALL_FIXTURES = sorted(MESSAGES.rglob("*.eml"))


def verdict_of(raw: bytes, *, loop_id: str = LOOP_ID) -> Verdict:
    return classify(parse(raw), raw, own_addresses=OWN, loop_id=loop_id)


def fixture(relative: str) -> Verdict:
    return verdict_of((MESSAGES / relative).read_bytes())


def mail(*headers: str, body: str = "Hello,\n\nplease help.\n") -> bytes:
    """A small mail from a customer, with extra header lines; later lines win nothing."""
    lines = [
        "From: Dana Reyes <dana.reyes@example.org>",
        "To: IT Support <support@example.com>",
        "Date: Mon, 02 Mar 2026 08:30:00 +0000",
        "Message-ID: <req-1@mail.example.org>",
        *headers,
    ]
    if not any(line.lower().startswith("subject:") for line in headers):
        lines.append("Subject: Printer on 3rd floor is jammed")
    return ("\n".join(lines) + "\n\n" + body).encode("utf-8")


def sent_by(sender: str, *headers: str, body: str = "Hello\n") -> bytes:
    """A mail whose From is `sender`."""
    lines = [
        f"From: {sender}",
        "To: support@example.com",
        "Subject: Notice",
        "Message-ID: <n-1@example.net>",
        *headers,
    ]
    return ("\n".join(lines) + "\n\n" + body).encode("utf-8")


BOUNDARY = "report-boundary-1"


def dsn(
    *recipient_blocks: str,
    returned: str | None = (
        "From: IT Support <support@example.com>\n"
        "To: someone@example.net\n"
        "Subject: [#7] Your request\n"
        "Message-ID: <ticket-7-1@helpdesk.example.com>\n"
        "\n"
        "We received your request.\n"
    ),
    returned_type: str = "message/rfc822",
    status_type: str = "message/delivery-status",
    headers: tuple[str, ...] = (),
) -> bytes:
    """A multipart/report DSN (RFC 3464) with the given per-recipient blocks."""
    status = "Reporting-MTA: dns; mx.example.com\n\n" + "\n\n".join(recipient_blocks)
    parts = [
        "Content-Type: text/plain; charset=us-ascii\n\nYour message could not be delivered.\n",
        f"Content-Type: {status_type}\n\n{status}\n",
    ]
    if returned is not None:
        parts.append(f"Content-Type: {returned_type}\n\n{returned}")
    head = "\n".join(
        [
            "Return-Path: <>",
            "From: MAILER-DAEMON@mx.example.com (Mail Delivery System)",
            "To: support@example.com",
            "Subject: Undelivered Mail Returned to Sender",
            "Message-ID: <dsn-1@mx.example.com>",
            "MIME-Version: 1.0",
            *headers,
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{BOUNDARY}"',
        ]
    )
    body = "".join(f"--{BOUNDARY}\n{part}\n" for part in parts) + f"--{BOUNDARY}--\n"
    return f"{head}\n\n{body}".encode()


def block(address: str, action: str, status: str, diagnostic: str | None = None) -> str:
    lines = [f"Final-Recipient: rfc822; {address}", f"Action: {action}", f"Status: {status}"]
    if diagnostic is not None:
        lines.append(f"Diagnostic-Code: smtp; {diagnostic}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The fixture corpus


@pytest.mark.parametrize("path", HUMAN_FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_client_mail_is_human(path: Path) -> None:
    """Ordinary mail from Gmail, Outlook, Apple, mobile clients and Thunderbird is HUMAN."""
    verdict = verdict_of(path.read_bytes())
    assert verdict == Verdict(MailClass.HUMAN)
    assert not verdict.automated


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fixture_classifies_without_raising(path: Path) -> None:
    """Every fixture, hostile ones included, gets a verdict with a class."""
    verdict = verdict_of(path.read_bytes())
    assert isinstance(verdict.mail_class, MailClass)


def test_exchange_out_of_office() -> None:
    """Exchange's automatic reply: Auto-Submitted, its own suppress header and the subject."""
    assert fixture("ooo/exchange.eml") == Verdict(
        MailClass.AUTO_REPLY,
        (
            "Auto-Submitted: auto-replied",
            "X-Auto-Response-Suppress: All",
            "Subject: Automatic reply: [#80] Your account will be migrated",
        ),
    )


def test_german_abwesenheitsnotiz() -> None:
    """A German Abwesenheitsnotiz is an auto-reply; its decoded subject is the reason."""
    verdict = fixture("ooo/german-abwesenheit.eml")
    assert verdict.mail_class is MailClass.AUTO_REPLY
    assert verdict.reasons[-1] == "Subject: Abwesenheitsnotiz: [#81] Passwortänderung"


def test_gmail_vacation_beats_its_bulk_precedence() -> None:
    """Gmail's vacation reply says Precedence: bulk too; AUTO_REPLY outranks LIST."""
    assert fixture("ooo/gmail-vacation.eml") == Verdict(
        MailClass.AUTO_REPLY, ("Auto-Submitted: auto-replied", "X-Autoreply: yes")
    )


def test_mailman_announcement_is_a_list() -> None:
    """A Mailman post is LIST, with List-Id first and Precedence last among the reasons."""
    verdict = fixture("lists/announce.eml")
    assert verdict.mail_class is MailClass.LIST
    assert verdict.bounce is None
    assert verdict.reasons[0] == "List-Id: <it-announce.lists.example.org>"
    assert verdict.reasons[1] == "List-Post: <mailto:it-announce@lists.example.org>"
    assert "X-Mailman-Version: 2.1.39" in verdict.reasons
    assert verdict.reasons[-1] == "Precedence: list"
    assert len(verdict.reasons) == 8


def test_postfix_bounce() -> None:
    """Postfix's DSN: the recipient, action, status and the id of our returned mail."""
    verdict = fixture("dsn/postfix-bounce.eml")
    assert verdict.mail_class is MailClass.BOUNCE
    assert verdict.reasons == (
        "Content-Type: multipart/report; report-type=delivery-status",
        "sender mailer-daemon@mx.example.com",
        "Return-Path: <> with Subject: Undelivered Mail Returned to Sender",
    )
    assert verdict.bounce == BounceReport(
        recipients=(
            BounceRecipient(
                address="nobody@example.test",
                action="failed",
                status="5.1.1",
                diagnostic=(
                    "550 5.1.1 <nobody@example.test>: Recipient address rejected: "
                    "User unknown in virtual mailbox table"
                ),
            ),
        ),
        original_message_id="ticket-90-1@helpdesk.example.com",
    )
    assert verdict.bounce.recipients[0].permanent


def test_exchange_ndr() -> None:
    """Exchange's NDR: its own header, the RFC 3464 part and the returned mail's id."""
    verdict = fixture("dsn/exchange-ndr.eml")
    assert verdict.mail_class is MailClass.BOUNCE
    assert verdict.reasons[:2] == (
        "Content-Type: multipart/report; report-type=delivery-status",
        "X-MS-Exchange-Message-Is-Ndr present",
    )
    assert verdict.bounce == BounceReport(
        recipients=(
            BounceRecipient(
                address="gone.user@example.com",
                action="failed",
                status="5.1.10",
                diagnostic=(
                    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; "
                    "Recipient not found by SMTP address lookup"
                ),
            ),
        ),
        original_message_id="ticket-91-1@helpdesk.example.com",
    )


def test_parse_dsn_reads_the_fixture_directly() -> None:
    """parse_dsn on the raw Postfix bounce gives the same report classify attaches."""
    raw = (MESSAGES / "dsn/postfix-bounce.eml").read_bytes()
    report = parse_dsn(raw)
    assert report is not None
    assert [(r.address, r.action, r.status) for r in report.recipients] == [
        ("nobody@example.test", "failed", "5.1.1")
    ]
    assert report.original_message_id == "ticket-90-1@helpdesk.example.com"


# --------------------------------------------------------------------------
# Auto-replies (RFC 3834)


@pytest.mark.parametrize(
    ("value", "keyword"),
    [
        ("auto-replied", "auto-replied"),
        ("auto-generated", "auto-generated"),
        ('Auto-Replied; owner-email="boss@example.org"', "auto-replied"),
        ("  AUTO-NOTIFIED (from the vacation robot)  ", "auto-notified"),
    ],
)
def test_auto_submitted_values(value: str, keyword: str) -> None:
    """Any Auto-Submitted keyword but "no" is an auto-reply; parameters and comments go."""
    assert verdict_of(mail(f"Auto-Submitted: {value}")) == Verdict(
        MailClass.AUTO_REPLY, (f"Auto-Submitted: {keyword}",)
    )


@pytest.mark.parametrize("value", ["no", "No (a person wrote this)", "NO; x=y", ""])
def test_auto_submitted_no_is_human(value: str) -> None:
    """Auto-Submitted: no (any case, with comments) or an empty value is no signal."""
    assert verdict_of(mail(f"Auto-Submitted: {value}")).mail_class is MailClass.HUMAN


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("X-Autoreply: yes", "X-Autoreply: yes"),
        ("X-Autorespond: vacation", "X-Autorespond: vacation"),
        ("X-Autoresponder: true", "X-Autoresponder: true"),
        ("X-AutoReply-From: boss@example.org", "X-AutoReply-From: boss@example.org"),
        ("X-Mail-Autoreply: Auto-reply", "X-Mail-Autoreply: Auto-reply"),
        ("x-autoreply:", "X-Autoreply present"),
        ("Precedence: auto_reply", "Precedence: auto_reply"),
        ("X-Precedence: AUTO_REPLY", "X-Precedence: auto_reply"),
        ("X-Auto-Response-Suppress: OOF", "X-Auto-Response-Suppress: OOF"),
        ("X-Auto-Response-Suppress: DR, AutoReply", "X-Auto-Response-Suppress: DR, AutoReply"),
        ("X-Auto-Response-Suppress: all", "X-Auto-Response-Suppress: all"),
    ],
)
def test_autoresponder_headers(header: str, reason: str) -> None:
    """Each autoresponder header alone makes an auto-reply, named in the reason."""
    assert verdict_of(mail(header)) == Verdict(MailClass.AUTO_REPLY, (reason,))


@pytest.mark.parametrize(
    "header",
    ["X-Autoreply: no", "X-Auto-Response-Suppress: RN, NRN", "Precedence: first-class"],
)
def test_headers_that_do_not_mean_auto_reply(header: str) -> None:
    """A negated X-Autoreply, suppression of receipts only, or an unknown precedence is human."""
    assert verdict_of(mail(header)).mail_class is MailClass.HUMAN


@pytest.mark.parametrize(
    "subject",
    [
        "Out of Office: Printer",
        "OUT OF OFFICE",
        "Out of Office AutoReply: Printer",
        "Automatic reply: [#80] Account",
        "Auto-Reply: Printer",
        "AutoReply: Printer",
        "Auto Reply - back on Monday",
        "RE: Automatic reply: Printer",
        "AW: Abwesenheitsnotiz: Drucker",
        "Automatische Antwort: Drucker",
        "Réponse automatique : Imprimante",
        "Reponse automatique: Imprimante",
        "Absence du bureau: Imprimante",
        "Respuesta automática: Impresora",
        "Fuera de la oficina: Impresora",
        "Risposta automatica: Stampante",
        "R: Fuori sede: Stampante",
        "Automatisch antwoord: Printer",
        "Afwezig: Printer",
        "SV: Autosvar: Skrivare",
        "Frånvaro: Skrivare",
        "Automaattinen vastaus: Tulostin",
        "Resposta automática: Impressora",
        "Автоответ: Принтер",
        "自動応答: プリンター",
        "自动回复：打印机",
    ],
)
def test_out_of_office_subjects(subject: str) -> None:
    """Out-of-office subjects in many languages are auto-replies by the subject alone."""
    assert verdict_of(mail(f"Subject: {subject}")) == Verdict(
        MailClass.AUTO_REPLY, (f"Subject: {subject}",)
    )


@pytest.mark.parametrize(
    "subject",
    [
        "Out of office assistant does not work",
        "Automatic replies are not sent",
        "Question about Autoreply settings",
        "Fwd: Automatic reply: Printer",
        "WG: Abwesenheitsnotiz: Drucker",
        "Undeliverable: Printer",
    ],
)
def test_subjects_that_are_human(subject: str) -> None:
    """People asking about auto-replies, forwarding one, or quoting a bounce subject are human."""
    assert verdict_of(mail(f"Subject: {subject}")) == Verdict(MailClass.HUMAN)


def test_read_receipt_is_an_auto_reply() -> None:
    """An RFC 8098 read receipt (disposition-notification report) is an auto-reply."""
    raw = mail(
        "Subject: Read: Printer",
        'Content-Type: multipart/report; report-type="disposition-notification"; boundary="b"',
        body="--b\nContent-Type: text/plain\n\nYour message was read.\n--b--\n",
    )
    assert verdict_of(raw) == Verdict(
        MailClass.AUTO_REPLY,
        ("Content-Type: multipart/report; report-type=disposition-notification (read receipt)",),
    )


def test_other_reports_are_auto_replies() -> None:
    """A feedback report (RFC 5965) is machine-made too, and not a bounce."""
    raw = mail('Content-Type: multipart/report; report-type=feedback-report; boundary="b"')
    assert verdict_of(raw) == Verdict(
        MailClass.AUTO_REPLY, ("Content-Type: multipart/report; report-type=feedback-report",)
    )


# --------------------------------------------------------------------------
# No-reply senders


@pytest.mark.parametrize(
    "address",
    [
        "noreply@example.com",
        "No-Reply@Example.com",
        "no_reply@example.com",
        "donotreply@example.com",
        "do-not-reply@example.com",
        "MAILER-DAEMON@mx.example.com",
        "mailer-daemon",
        "postmaster@example.com",
        "bounce@mail.example.com",
        "it-announce-bounces+support=example.com@lists.example.org",
        "notification@example.com",
        "notifications@github.example",
        "shop.noreply@example.com",
        "noreply+tracking@example.com",
        "<noreply@example.com>",
    ],
)
def test_noreply_addresses(address: str) -> None:
    """No-reply, daemon, bounce and notification mailboxes are recognised in any form."""
    assert is_noreply_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "dana.reyes@example.com",
        "reply@example.com",
        "bouncer.smith@example.com",
        "noreplyinghere@example.com",
        "support@noreply.example.com",
        "",
    ],
)
def test_ordinary_addresses_are_not_noreply(address: str) -> None:
    """People, "reply@" and a no-reply *domain* are not no-reply local parts."""
    assert not is_noreply_address(address)


def test_noreply_sender_is_an_auto_reply() -> None:
    """A no-reply sender alone makes an auto-reply, and the reason says so."""
    assert verdict_of(sent_by("Vendor <no-reply@vendor.example>")) == Verdict(
        MailClass.AUTO_REPLY, ("sender no-reply@vendor.example looks like a no-reply address",)
    )


def test_noreply_sender_outranks_list_headers() -> None:
    """A notification with list headers is an AUTO_REPLY: it outranks LIST."""
    raw = sent_by("notifications@github.example", "List-Id: <repo.github.example>")
    verdict = verdict_of(raw)
    assert verdict.mail_class is MailClass.AUTO_REPLY
    assert verdict.reasons == ("sender notifications@github.example looks like a no-reply address",)


# --------------------------------------------------------------------------
# Bounces


@pytest.mark.parametrize(
    ("sender", "reason"),
    [
        ("MAILER-DAEMON@mx.example.com (Mail Delivery System)",
         "sender mailer-daemon@mx.example.com"),
        ("Mail Delivery Subsystem <mailer-daemon@googlemail.example>",
         "sender mailer-daemon@googlemail.example"),
        ("postmaster@example.net", "sender postmaster@example.net"),
        ("MAILER-DAEMON (Mail Delivery System)", "sender mailer-daemon"),
    ],
)  # fmt: skip
def test_daemon_senders_are_bounces(sender: str, reason: str) -> None:
    """MAILER-DAEMON and postmaster senders are bounces, even without a domain."""
    verdict = verdict_of(sent_by(sender))
    assert verdict.mail_class is MailClass.BOUNCE
    assert verdict.reasons == (reason,)
    assert verdict.bounce is None  # nothing in the text names a failed address


@pytest.mark.parametrize(
    "subject",
    [
        "Undelivered Mail Returned to Sender",
        "Delivery Status Notification (Failure)",
        "Undeliverable: [#91] Password reset",
        "Unzustellbar: [#91] Passwort",
        "Non remis : [#91] Mot de passe",
        "Mail delivery failed: returning message to sender",
        "Returned mail: see transcript for details",
    ],
)
def test_null_sender_with_report_subject_is_a_bounce(subject: str) -> None:
    """From the null sender (Return-Path: <>), a report subject makes a bounce."""
    raw = sent_by("Mail System <system@mx.example.net>", "Return-Path: <>", f"Subject: {subject}")
    raw = raw.replace(b"Subject: Notice\n", b"")
    assert verdict_of(raw) == Verdict(
        MailClass.BOUNCE, (f"Return-Path: <> with Subject: {subject}",)
    )


def test_null_sender_alone_is_not_a_bounce() -> None:
    """Return-Path: <> with an ordinary subject is no bounce (auto-replies use it too)."""
    assert verdict_of(mail("Return-Path: <>")).mail_class is MailClass.HUMAN


def test_exchange_ndr_header_alone() -> None:
    """X-MS-Exchange-Message-Is-Ndr alone makes a bounce; the report comes from the text."""
    raw = sent_by(
        "Microsoft Outlook <MicrosoftExchange1@example.com>",
        "X-MS-Exchange-Message-Is-Ndr:",
        "In-Reply-To: <ticket-5-1@helpdesk.example.com>",
        body="Your message to gone.user@example.com couldn't be delivered.\n"
        "gone.user wasn't found at example.com.\n",
    )
    verdict = verdict_of(raw)
    assert verdict.mail_class is MailClass.BOUNCE
    assert verdict.reasons == ("X-MS-Exchange-Message-Is-Ndr present",)
    assert verdict.bounce == BounceReport(
        (BounceRecipient("gone.user@example.com", "failed", ""),),
        original_message_id="ticket-5-1@helpdesk.example.com",
    )
    assert not verdict.bounce.recipients[0].permanent  # unknown status: not proven dead


def test_transient_dsn_is_not_permanent() -> None:
    """A delayed delivery with a 4.x.x status is a bounce report, but not permanent."""
    raw = dsn(block("slow@example.net", "delayed", "4.4.7", "451 4.4.7 Message delayed"))
    verdict = verdict_of(raw)
    assert verdict.mail_class is MailClass.BOUNCE
    assert verdict.bounce == BounceReport(
        (BounceRecipient("slow@example.net", "delayed", "4.4.7", "451 4.4.7 Message delayed"),),
        original_message_id="ticket-7-1@helpdesk.example.com",
    )
    assert verdict.bounce.recipients[0].permanent is False


def test_permanent_dsn_with_several_recipients() -> None:
    """Each per-recipient block is read; a failed 5.x.x is permanent, a delay is not."""
    raw = dsn(
        block("Gone@Example.NET", "failed", "5.1.1 (bad destination mailbox)", "550 No such user"),
        block("slow@example.net", "Delayed", "4.2.2"),
    )
    report = parse_dsn(raw)
    assert report == BounceReport(
        (
            BounceRecipient("gone@example.net", "failed", "5.1.1", "550 No such user"),
            BounceRecipient("slow@example.net", "delayed", "4.2.2"),
        ),
        original_message_id="ticket-7-1@helpdesk.example.com",
    )
    assert [r.permanent for r in report.recipients] == [True, False]


def test_dsn_fills_missing_action_and_status() -> None:
    """Without Action the status class decides it; without Status the diagnostic gives it."""
    raw = dsn(
        "Final-Recipient: rfc822;<a@example.net>\nStatus: 5.2.2",
        "Original-Recipient: rfc822;b@example.net\nAction: failed\n"
        "Diagnostic-Code: smtp; 552 5.2.2 Mailbox full",
    )
    report = parse_dsn(raw)
    assert report is not None
    assert report.recipients == (
        BounceRecipient("a@example.net", "failed", "5.2.2"),
        BounceRecipient("b@example.net", "failed", "5.2.2", "552 5.2.2 Mailbox full"),
    )


def test_dsn_original_id_from_returned_headers() -> None:
    """The id of our mail comes from a text/rfc822-headers part (RFC 6522)."""
    raw = dsn(
        block("gone@example.net", "failed", "5.1.1"),
        returned="Message-ID: <ticket-8-2@helpdesk.example.com>\nSubject: [#8] Hi\n",
        returned_type="text/rfc822-headers",
    )
    report = parse_dsn(raw)
    assert report is not None
    assert report.original_message_id == "ticket-8-2@helpdesk.example.com"


def original_id(raw: bytes) -> str | None:
    report = parse_dsn(raw)
    assert report is not None
    return report.original_message_id


def test_dsn_original_id_from_threading_headers() -> None:
    """Without the returned mail, In-Reply-To names it; else the newest References entry."""
    replied = dsn(
        block("gone@example.net", "failed", "5.1.1"),
        returned=None,
        headers=("In-Reply-To: <ticket-9-1@helpdesk.example.com>",),
    )
    referenced = dsn(
        block("gone@example.net", "failed", "5.1.1"),
        returned=None,
        headers=(
            "References: <ticket-9-1@helpdesk.example.com> <ticket-9-4@helpdesk.example.com>",
        ),
    )
    bare = dsn(block("gone@example.net", "failed", "5.1.1"), returned=None)
    assert original_id(replied) == "ticket-9-1@helpdesk.example.com"
    assert original_id(referenced) == "ticket-9-4@helpdesk.example.com"
    assert parse_dsn(bare) == BounceReport(
        (BounceRecipient("gone@example.net", "failed", "5.1.1"),)
    )


def test_global_dsn_rfc6533() -> None:
    """A message/global-delivery-status part (RFC 6533) is read like the classic one."""
    raw = dsn(
        block("jürgen@example.de", "failed", "5.1.1"),
        status_type="message/global-delivery-status",
        returned_type="message/global-headers",
        returned="Message-ID: <ticket-10-1@helpdesk.example.com>\n",
    )
    assert parse_dsn(raw) == BounceReport(
        (BounceRecipient("jürgen@example.de", "failed", "5.1.1"),),
        original_message_id="ticket-10-1@helpdesk.example.com",
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff garbage",
        b"Subject: hi\n\nno report here\n",
        b"Content-Type: multipart/report",
    ],
)
def test_parse_dsn_without_a_report(raw: bytes) -> None:
    """Bytes without a readable delivery-status part give None, never an exception."""
    assert parse_dsn(raw) is None


def test_old_style_bounce_text() -> None:
    """An Exim bounce without an RFC 3464 part: the failed address and status from the text."""
    body = (
        "This message was created automatically by mail delivery software.\n\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n\n"
        "  nobody@example.test\n"
        "    host mx.example.test [192.0.2.99]\n"
        "    SMTP error from remote mail server after RCPT TO:<nobody@example.test>:\n"
        "    550 5.1.1 User unknown\n\n"
        "------ This is a copy of the message, including all the headers. ------\n\n"
        "From: IT Support <support@example.com>\n"
        "To: nobody@example.test, cc.person@example.org\n"
        "Message-ID: <ticket-11-1@helpdesk.example.com>\n"
    )
    raw = sent_by(
        "Mail Delivery System <Mailer-Daemon@mx.example.com>",
        "Subject: Mail delivery failed: returning message to sender",
        "References: <ticket-11-1@helpdesk.example.com>",
        body=body,
    )
    verdict = verdict_of(raw)
    assert verdict.mail_class is MailClass.BOUNCE
    assert verdict.bounce is not None
    assert [(r.address, r.action, r.status) for r in verdict.bounce.recipients] == [
        ("nobody@example.test", "failed", "5.1.1")
    ]
    assert verdict.bounce.original_message_id == "ticket-11-1@helpdesk.example.com"
    assert verdict.bounce.recipients[0].permanent


def test_bounce_text_with_basic_smtp_codes() -> None:
    """A bare 550 becomes 5.0.0 (failed); a 452 becomes 4.0.0 (delayed); IPs are no codes."""
    text = (
        "<gone@example.net>:\n192.0.2.1 does not like recipient.\nRemote host said: 550 no\n\n"
        "<full@example.net>: host 10.4.5.6 said: 452 mailbox full, try later\n\n"
        "Write to postmaster@example.com or support@example.com for help.\n"
    )
    report = parse_bounce_text(text, ignore=lambda address: address == "support@example.com")
    assert report is not None
    assert [(r.address, r.action, r.status, r.permanent) for r in report.recipients] == [
        ("gone@example.net", "failed", "5.0.0", True),
        ("full@example.net", "delayed", "4.0.0", False),
    ]
    assert report.original_message_id is None


@pytest.mark.parametrize("text", ["", "Nothing to see.", "Mail postmaster@example.com 550"])
def test_bounce_text_without_recipients(text: str) -> None:
    """Text that names no failed address gives None."""
    assert parse_bounce_text(text) is None


# --------------------------------------------------------------------------
# Our own mail


def test_own_address_with_other_case_is_own() -> None:
    """From one of our addresses, in any case, is OWN, even when it also looks like a bounce."""
    raw = sent_by("IT Support <SUPPORT@Example.COM>", "Auto-Submitted: auto-replied")
    assert verdict_of(raw) == Verdict(
        MailClass.OWN, ("sender support@example.com is one of our own addresses",)
    )


def test_own_addresses_given_in_upper_case() -> None:
    """The own-address set is compared case-insensitively on both sides."""
    raw = sent_by("helpdesk@example.com")
    verdict = classify(
        parse(raw), raw, own_addresses=frozenset({"HelpDesk@Example.com"}), loop_id=""
    )
    assert verdict.mail_class is MailClass.OWN


def test_own_addresses_as_a_predicate() -> None:
    """A predicate is asked with the lower-cased sender address."""
    asked: list[str] = []

    def is_ours(address: str) -> bool:
        asked.append(address)
        return address.endswith("@helpdesk.example.com")

    raw = sent_by("Agent <Sam@HelpDesk.Example.com>")
    verdict = classify(parse(raw), raw, own_addresses=is_ours, loop_id=LOOP_ID)
    assert verdict == Verdict(
        MailClass.OWN, ("sender sam@helpdesk.example.com is one of our own addresses",)
    )
    assert asked == ["sam@helpdesk.example.com"]


@pytest.mark.parametrize(
    "value", ["helpdesk.example.com", "<HelpDesk.Example.com>", "x, helpdesk.example.com"]
)
def test_x_loop_with_our_id_is_own(value: str) -> None:
    """An X-Loop carrying our loop id (any case, brackets, among others) is OWN."""
    raw = dsn(block("gone@example.net", "failed", "5.1.1"), headers=(f"X-Loop: {value}",))
    verdict = verdict_of(raw)
    assert verdict == Verdict(MailClass.OWN, (f"X-Loop: {value}",))
    assert verdict.bounce is None


def test_x_loop_with_another_id_is_not_own() -> None:
    """Another system's X-Loop is no signal of ours."""
    assert verdict_of(mail("X-Loop: rt.other.example")) == Verdict(MailClass.HUMAN)


def test_x_loop_ignored_without_a_loop_id() -> None:
    """With an empty loop id, no X-Loop value (not even an empty one) makes a mail OWN."""
    assert verdict_of(mail("X-Loop:"), loop_id="").mail_class is MailClass.HUMAN


# --------------------------------------------------------------------------
# Precedence and robustness


def test_precedence_bounce_over_auto_reply_over_list() -> None:
    """When every kind of signal is present, BOUNCE wins and only its reasons are kept."""
    raw = sent_by(
        "postmaster@example.net",
        "Auto-Submitted: auto-replied",
        "List-Id: <x.example.net>",
    )
    assert verdict_of(raw) == Verdict(MailClass.BOUNCE, ("sender postmaster@example.net",))
    auto_and_list = mail("Auto-Submitted: auto-generated", "Precedence: bulk", "List-Id: x")
    assert verdict_of(auto_and_list) == Verdict(
        MailClass.AUTO_REPLY, ("Auto-Submitted: auto-generated",)
    )


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("List-Id: Announcements <announce.example.com>", "List-Id: <announce.example.com>"),
        ("List-Unsubscribe: <mailto:leave@example.com>",
         "List-Unsubscribe: <mailto:leave@example.com>"),
        ("List-Post: NO", "List-Post: NO"),
        ("Mailing-List: contact x-help@example.com; run by ezmlm",
         "Mailing-List: contact x-help@example.com; run by ezmlm"),
        ("X-Mailman-Version: 3.3.9", "X-Mailman-Version: 3.3.9"),
        ("Precedence: bulk", "Precedence: bulk"),
        ("Precedence: JUNK", "Precedence: junk"),
        ("Precedence: list (mailing list)", "Precedence: list"),
    ],
)  # fmt: skip
def test_list_signals(header: str, reason: str) -> None:
    """Each list or bulk header alone makes a LIST, named in the reason."""
    assert verdict_of(mail(header)) == Verdict(MailClass.LIST, (reason,))


def test_long_values_are_shortened_in_reasons() -> None:
    """A reason quotes at most 80 characters of a header value."""
    verdict = verdict_of(mail("List-Unsubscribe: <https://example.com/" + "x" * 200 + ">"))
    assert verdict.mail_class is MailClass.LIST
    assert len(verdict.reasons[0]) == len("List-Unsubscribe: ") + 80
    assert verdict.reasons[0].endswith("…")


def test_empty_message_is_human() -> None:
    """A message with nothing in it (no From, no headers) is HUMAN, not an error."""
    empty = ParsedMessage(
        message_id="x@synthetic", message_id_synthetic=True, subject="", from_=None
    )
    assert classify(empty, b"", own_addresses=OWN, loop_id=LOOP_ID) == Verdict(MailClass.HUMAN)


def test_odd_headers_do_not_raise() -> None:
    """Odd casing, stray whitespace and broken values still classify."""
    raw = (
        b"FROM:    \n"
        b'content-TYPE:   MULTIPART/REPORT ;REPORT-TYPE = "Delivery-Status"; boundary=\n'
        b"auto-submitted: ;\n"
        b"x-loop:   \n"
        b"\n"
        b"--\n"
    )
    verdict = verdict_of(raw)
    assert verdict.mail_class is MailClass.BOUNCE
    assert verdict.reasons == ("Content-Type: multipart/report; report-type=delivery-status",)
    assert verdict.bounce is None
