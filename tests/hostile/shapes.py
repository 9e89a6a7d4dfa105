"""The hostile inputs of issue 12, built in code (nothing large is checked in).

Each builder returns the input of a pure step (a string) or a whole raw mail
(bytes) at the size the issue measured; `ordinary()` is the mail that must be
stored right behind a hostile one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

from tests.mailfactory import make_mail

SUPPORT = "support@example.com"
AGENT = "Alice Admin <alice@it.example.com>"
CUSTOMER = "Dana Reyes <dana.reyes@example.com>"
POSTMASTER = "Mail Delivery System <postmaster@mx.example.org>"
MX = "mx.example.com"
# What our MX writes on an agent's authenticated mail (the agent's domain is it.example.com).
AUTH_OK = f"{MX}; dkim=pass header.d=it.example.com; spf=pass smtp.mailfrom=it.example.com"
ORDINARY_ID = "ordinary@example.org"

# --------------------------------------------------------------------------
# Inputs of the pure steps, as the issue sized them

BLANK_LINES = "Delivery to the following recipient failed.\n" + "\n" * 40_000 + "end\n"
BANG_AT = "!" * 30_000 + "@" + "a" * 30_000
REPLY_HEADERS = "On ab wrote:\n>\nn\n" * 70_000
HTML_OPEN_TAGS = "<a " * 25_000
HTML_OPEN_QUOTES = "<a b='" * 20_000
HTML_OPEN_COMMENTS = "<!--" * 80_000
# Not in the issue, same family: nesting that multiplied the output, and
# stray end tags under thousands of unclosed elements.
HTML_NESTED_QUOTES = "<blockquote>" * 20_000 + "x<br>" * 20_000
HTML_STRAY_END_TAGS = "<div>" * 100_000 + "</span>" * 100_000
# A run of blanks on the line above where the returned copy starts, and an
# address whose domain has a million labels: each cost a regex frame per
# character or label (issue 12 item 10).
BLANK_RUN = "Delivery failed.\n" + " " * 2_000_000 + "original message follows\n"
MANY_LABELS = "550 5.1.1 unknown: x@" + "a." * 1_000_000 + "com\n"
TAG_LINES = "".join(f"#tag t{i}\n" for i in range(20_000)) + "\nThanks.\n"
FOLDED_LINES = 1_000_000
SENT_CONTINUATIONS = 10_000


def folded_status(lines: int = FOLDED_LINES) -> str:
    """An RFC 3464 status block whose Diagnostic-Code is folded over `lines` lines."""
    return (
        "Reporting-MTA: dns; mx.example.org\n\n"
        "Final-Recipient: rfc822; gone@example.com\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\n" + " x\n" * lines
    )


def forwarded_body(lines: int = SENT_CONTINUATIONS) -> str:
    """An inline forward whose Sent value goes on for `lines` continuation lines of spaces."""
    return (
        "FYI, see below.\n\n"
        "---------- Forwarded message ---------\n"
        "From: Dana Reyes <dana.reyes@example.com>\n"
        "Sent: Tuesday, September 3, 2024 10:00 AM\n"
        + ("  a" + " " * 400 + "b\n") * lines
        + "Subject: VPN drops every hour\nTo: Alice <alice@it.example.com>\n\n"
        "Hi, the VPN drops every hour.\n"
    )


# --------------------------------------------------------------------------
# Whole mails


def ordinary() -> bytes:
    """The mail behind the hostile one: it must be stored whatever came before it."""
    return make_mail(subject="Monitor flickers", sender="Sam Lee <sam@example.org>",
                     message_id=f"<{ORDINARY_ID}>", body="Hi,\n\nmy monitor flickers.\n\nSam\n")


def first_request() -> bytes:
    """Opens ticket #1, for the hostile agent replies to land on."""
    return make_mail(subject="Printer jammed", sender=CUSTOMER, message_id="<first@example.com>")


def bounce(body: str, message_id: str) -> bytes:
    """A text bounce from a postmaster: anyone can send one."""
    return make_mail(subject="Undelivered Mail Returned to Sender", sender=POSTMASTER,
                     message_id=f"<{message_id}@mx.example.org>", body=body,
                     extra={"Auto-Submitted": "auto-replied"})


def dsn(lines: int = FOLDED_LINES) -> bytes:
    """A multipart/report whose status part folds one field over `lines` lines."""
    head = (
        f"From: {POSTMASTER}\nTo: {SUPPORT}\nSubject: Undelivered Mail Returned to Sender\n"
        "Message-ID: <dsn-folded@mx.example.org>\nDate: Mon, 02 Mar 2026 08:30:00 +0000\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n"
        "--b\nContent-Type: message/global-delivery-status\n\n"
    )
    return (head + folded_status(lines) + "--b--\n").encode()


def folded_header(lines: int = FOLDED_LINES, *, junk: bool = False) -> bytes:
    """A Subject folded over `lines` continuation lines; with `junk`, a line that is no
    field ends the header block (the reader's line-by-line path)."""
    return (
        f"From: {CUSTOMER}\nTo: {SUPPORT}\nMessage-ID: <folded@example.com>\n"
        "Subject: Help\n" + " x\n" * lines + ("junk\n" if junk else "") + "\nHello.\n"
    ).encode()


def long_parameter(size: int = 1_000_000) -> bytes:
    """A Content-Type parameter of `size` characters (read by the MIME reader)."""
    return (
        f"From: {CUSTOMER}\nTo: {SUPPORT}\nMessage-ID: <param@example.com>\n"
        "Content-Type: text/plain; x=" + "a" * size + "\n\nHello.\n"
    ).encode()


def many_fields(count: int = FOLDED_LINES) -> bytes:
    """`count` short header fields (a part keeps the first 1,000)."""
    return (
        f"From: {CUSTOMER}\nTo: {SUPPORT}\nMessage-ID: <fields@example.com>\n"
        + "X-A: b\n" * count + "\nHello.\n"
    ).encode()


def customer(body: str, message_id: str, *, subject: str = "Help") -> bytes:
    return make_mail(subject=subject, sender=CUSTOMER, message_id=f"<{message_id}@example.com>",
                     body=body)


def html_mail(html: str, message_id: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = CUSTOMER
    msg["To"] = SUPPORT
    msg["Subject"] = "Help (HTML)"
    msg["Message-ID"] = f"<{message_id}@example.com>"
    msg["Date"] = "Mon, 02 Mar 2026 08:30:00 +0000"
    msg.set_content(html, subtype="html")
    return msg.as_bytes()


def agent_forward(lines: int = SENT_CONTINUATIONS) -> bytes:
    """An agent forwards a customer's mail (a new ticket on the customer's behalf)."""
    return make_mail(subject="Fwd: VPN drops every hour", sender=AGENT,
                     message_id="<fwd-1@it.example.com>", body=forwarded_body(lines),
                     extra={"Authentication-Results": AUTH_OK})


def agent_commands(body: str = TAG_LINES) -> bytes:
    """An agent's answer on ticket #1 that starts with `body`'s command lines."""
    return make_mail(subject="Re: [#1] Printer jammed", sender=AGENT,
                     message_id="<tags-1@it.example.com>", body=body,
                     extra={"Authentication-Results": AUTH_OK})


def content_type_params() -> bytes:
    """A parameter-like run without "=" in Content-Type, read by classify for every mail."""
    raw = customer("Hello.", "ctype")
    plain = b'Content-Type: text/plain; charset="utf-8"'
    assert plain in raw
    return raw.replace(plain, plain + b"; " + b"_" * 200_000, 1)


def many_recipients_bounce() -> bytes:
    """A "bounce" naming 100,000 addresses: a report names at most MAX_RECIPIENTS."""
    body = "550 5.1.1 unknown: " + " ".join(f"user{i}@example.com" for i in range(100_000))
    return bounce(body, "many")


# Fixed in other modules (compose, id lookups, the MIME reader); checked here too.


def huge_subject() -> bytes:
    """A 1 MB subject that the acknowledgement repeats (compose's header folding).

    Folded by hand as a mail client would: the standard library's own folding
    of it took half a minute of the test suite.
    """
    words = " ".join(["word"] * 15)
    folded = "\n ".join([words] * (200_000 // 15))
    raw = make_mail(subject="Printer", sender=CUSTOMER, message_id="<subj@example.com>")
    return raw.replace(b"Subject: Printer\n", f"Subject: {folded}\n".encode(), 1)


def huge_display_name() -> bytes:
    """A 1 MB non-ASCII sender display name (raw UTF-8) that the acknowledgement addresses:
    the stdlib encodes it as RFC 2047 words, quadratically."""
    raw = make_mail(sender="Dana <dana.reyes@example.com>", message_id="<name@example.com>")
    name = ("é" * 70 + " ") * 7_000
    return raw.replace(b"From: Dana <", f'From: "{name}" <'.encode(), 1)


def many_references() -> bytes:
    """260,000 ids in References: one bound parameter each in the thread lookup."""
    ids = " ".join(f"<r{i}@example.org>" for i in range(260_000))
    raw = make_mail(message_id="<refs@example.com>", subject="Re: Printer")
    return raw.replace(b"Subject:", f"References: {ids}\nSubject:".encode(), 1)


def big_attachment() -> bytes:
    """A 34 MB mail carrying a 25 MB attachment (base64): memory, not time."""
    msg = EmailMessage()
    msg["From"] = CUSTOMER
    msg["To"] = SUPPORT
    msg["Subject"] = "Logs attached"
    msg["Message-ID"] = "<big@example.com>"
    msg["Date"] = format_datetime(datetime(2026, 3, 2, 8, 30, tzinfo=UTC))
    msg.set_content("The logs are attached.\n")
    msg.add_attachment(bytes(range(256)) * (25 * 1024 * 1024 // 256), maintype="application",
                       subtype="octet-stream", filename="logs.bin")
    return msg.as_bytes()
