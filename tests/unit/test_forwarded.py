"""find_forwarded: the original mail inside an agent's forward, inline or attached."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

import pytest

from helpdesk.mail.forwarded import ForwardedMail, find_forwarded
from helpdesk.mail.parse import parse
from helpdesk.values import Address, ParsedMessage
from tests.mailfactory import make_mail

CEST = timezone(timedelta(hours=2))
AGENT = "Max Muster <max.muster@example.com>"


def forward(subject: str, body: str, *, date: datetime | None = None) -> ParsedMessage:
    """An agent's mail to support with `body` as its plain text."""
    return parse(
        make_mail(
            subject=subject,
            sender=AGENT,
            body=body,
            date=date or datetime(2024, 9, 3, 11, 0, tzinfo=CEST),
            message_id="<fwd-1@example.com>",
        )
    )


def found(msg: ParsedMessage) -> ForwardedMail:
    result = find_forwarded(msg)
    assert result is not None, "expected a forward"
    return result


GMAIL_BODY = """\
Can you have a look? She is on the 3rd floor.

---------- Forwarded message ---------
From: Dana Reyes <dana.reyes@customer.example>
Date: Tue, Sep 3, 2024 at 10:00 AM
Subject: VPN drops every 5 minutes
To: Max Muster <max.muster@example.com>


Hi Max,

since this morning the VPN drops every five minutes.

Dana
"""


def test_gmail_inline_forward() -> None:
    """Gmail's "Forwarded message" block gives sender, subject, date, text and the note."""
    result = found(forward("Fwd: VPN drops every 5 minutes", GMAIL_BODY))
    assert result.sender == Address("dana.reyes@customer.example", "Dana Reyes")
    assert result.subject == "VPN drops every 5 minutes"
    # Gmail prints the time in the forwarder's zone, which the forward's Date header carries.
    assert result.date == datetime(2024, 9, 3, 8, 0, tzinfo=UTC)
    assert result.text == (
        "Hi Max,\n\nsince this morning the VPN drops every five minutes.\n\nDana"
    )
    assert result.note == "Can you have a look? She is on the 3rd floor."
    assert result.how == "gmail"
    assert result.message_id is None


OUTLOOK_DE_BODY = """\
Hallo Team,
bitte kümmert euch darum.

Gruß
Max

-----Ursprüngliche Nachricht-----
Von: Reyes, Dana [mailto:Dana.Reyes@kunde.example]
Gesendet: Dienstag, 3. September 2024 10:00
An: Max Muster <max.muster@example.com>
Cc: Lee Chen <lee.chen@kunde.example>
Betreff: VPN geht nicht
Wichtigkeit: Hoch

Hallo Max,
seit heute Morgen geht das VPN nicht.

-----Ursprüngliche Nachricht-----
Von: Max Muster [mailto:max.muster@example.com]
Gesendet: Montag, 2. September 2024 16:00
Betreff: AW: VPN
"""


def test_outlook_inline_forward_with_mailto_and_german_labels() -> None:
    """Outlook's "[mailto:]" sender and German labels; the older history stays in the text."""
    result = found(forward("WG: VPN geht nicht", OUTLOOK_DE_BODY))
    assert result.sender == Address("dana.reyes@kunde.example", "Reyes, Dana")
    assert result.subject == "VPN geht nicht"
    assert result.date == datetime(2024, 9, 3, 8, 0, tzinfo=UTC)
    assert result.text.startswith("Hallo Max,\nseit heute Morgen geht das VPN nicht.\n\n")
    assert result.text.endswith("Betreff: AW: VPN")
    assert result.note == "Hallo Team,\nbitte kümmert euch darum.\n\nGruß\nMax"
    assert result.how == "outlook"


def test_outlook_underscore_separator_in_french() -> None:
    """New Outlook's line of underscores and French labels with a space before the colon."""
    body = (
        "Pour info.\n\n"
        "________________________________\n"
        "De : Dana Reyes <dana.reyes@client.example>\n"
        "Envoyé : mardi 3 septembre 2024 10:00\n"
        "À : Support <support@example.com>\n"
        "Objet : Imprimante en panne\n\n"
        "L'imprimante affiche E-104.\n"
    )
    result = found(forward("TR: Imprimante en panne", body))
    assert result.sender == Address("dana.reyes@client.example", "Dana Reyes")
    assert result.subject == "Imprimante en panne"
    assert result.date == datetime(2024, 9, 3, 8, 0, tzinfo=UTC)
    assert result.text == "L'imprimante affiche E-104."
    assert result.how == "outlook"


APPLE_BODY = """\
FYI

Begin forwarded message:

From: Dana Reyes <dana.reyes@customer.example>
Subject: Laptop will not boot
Date: 3 September 2024 at 10:00:00 CEST
To: Max Muster <max.muster@example.com>

The laptop shows a black screen with a blinking cursor.

Sent from my iPhone
"""


def test_apple_mail_forward() -> None:
    """Apple Mail's "Begin forwarded message:" with a blank line before the headers."""
    result = found(forward("Fwd: Laptop will not boot", APPLE_BODY))
    assert result.sender == Address("dana.reyes@customer.example", "Dana Reyes")
    assert result.subject == "Laptop will not boot"
    assert result.date == datetime(2024, 9, 3, 8, 0, tzinfo=UTC)
    assert result.text == (
        "The laptop shows a black screen with a blinking cursor.\n\nSent from my iPhone"
    )
    assert result.note == "FYI"
    assert result.how == "apple"


def test_apple_mail_forward_in_german_without_subject_prefix() -> None:
    """A marker on the first line counts even when the forwarder removed the prefix."""
    body = (
        "Anfang der weitergeleiteten Nachricht:\n\n"
        "Von: Dana Reyes <dana.reyes@kunde.example>\n"
        "Betreff: Drucker\n"
        "Datum: 3. September 2024 um 10:00:00 MESZ\n"
        "An: max.muster@example.com\n\n"
        "Der Drucker druckt nicht.\n"
    )
    result = found(forward("Drucker", body))
    assert result.sender.address == "dana.reyes@kunde.example"
    assert result.date == datetime(2024, 9, 3, 8, 0, tzinfo=UTC)
    assert result.text == "Der Drucker druckt nicht."
    assert result.note == ""


THUNDERBIRD_BODY = """\
Please open a ticket for Dana.

-------- Forwarded Message --------
Subject: \tShared drive is read-only
Date: \tTue, 3 Sep 2024 10:00:00 +0200
From: \tDana Reyes <dana.reyes@customer.example>
To: \tmax.muster@example.com

Since the update I cannot save to S:.
"""


def test_thunderbird_forward() -> None:
    """Thunderbird's tab-aligned block that starts with Subject and has an RFC 5322 date."""
    result = found(forward("Fwd: Shared drive is read-only", THUNDERBIRD_BODY))
    assert result.sender == Address("dana.reyes@customer.example", "Dana Reyes")
    assert result.subject == "Shared drive is read-only"
    assert result.date == datetime(2024, 9, 3, 8, 0, tzinfo=UTC)
    assert result.text == "Since the update I cannot save to S:."
    assert result.note == "Please open a ticket for Dana."
    assert result.how == "thunderbird"


def test_thunderbird_forward_in_german() -> None:
    """Thunderbird's German marker is recognised by its Subject-first block."""
    body = THUNDERBIRD_BODY.replace("Forwarded Message", "Weitergeleitete Nachricht")
    result = found(forward("WG: Shared drive is read-only", body))
    assert result.how == "thunderbird"
    assert result.sender.address == "dana.reyes@customer.example"


def attached_forward(
    inner: bytes, *, subject: str, note: str, as_object: bool = False
) -> ParsedMessage:
    """An agent's forward with `inner` attached as message/rfc822.

    `add_attachment(bytes, maintype="message", ...)` base64-encodes the part
    (which RFC 2046 does not allow, but senders do); `as_object` attaches a
    message object instead, sent as 7bit like most clients do.
    """
    outer = EmailMessage()
    outer["From"] = AGENT
    outer["To"] = "support@example.com"
    outer["Subject"] = subject
    outer["Date"] = "Tue, 03 Sep 2024 11:00:00 +0200"
    outer["Message-ID"] = "<outer-1@example.com>"
    outer.set_content(note)
    if as_object:
        outer.add_attachment(message_from_bytes(inner, policy=default))
    else:
        outer.add_attachment(inner, maintype="message", subtype="rfc822")
    return parse(outer.as_bytes())


def inner_mail() -> bytes:
    return make_mail(
        subject="Cannot log in to the ERP",
        sender="Dana Reyes <dana.reyes@customer.example>",
        to="max.muster@example.com",
        body="Hi Max,\n\nthe ERP says my account is locked.\n\nDana\n",
        message_id="<orig-42@customer.example>",
        date=datetime(2024, 9, 3, 8, 0, tzinfo=UTC),
        attachment=("screenshot.png", b"\x89PNG fake"),
    )


@pytest.mark.parametrize("as_object", [False, True], ids=["base64", "7bit"])
def test_attached_eml_forward(as_object: bool) -> None:
    """A message/rfc822 attachment is parsed: its headers, text and attachments are the original."""
    subject = "Fw: Cannot log in to the ERP"
    msg = attached_forward(inner_mail(), subject=subject, note="See attached.", as_object=as_object)
    result = found(msg)
    assert result.sender == Address("dana.reyes@customer.example", "Dana Reyes")
    assert result.subject == "Cannot log in to the ERP"
    assert result.date == datetime(2024, 9, 3, 8, 0, tzinfo=UTC)
    assert result.message_id == "orig-42@customer.example"
    assert result.text == "Hi Max,\n\nthe ERP says my account is locked.\n\nDana"
    assert [a.filename for a in result.attachments] == ["screenshot.png"]
    assert result.attachments[0].content == b"\x89PNG fake"
    assert result.note == "See attached."
    assert result.how == "attached"


def test_attached_mail_with_a_long_unrelated_text_is_not_a_forward() -> None:
    """Without a forward prefix, a long text that merely carries a mail is not a forward."""
    note = "\n".join(f"Line {n} of a long report about the incident." for n in range(8))
    msg = attached_forward(inner_mail(), subject="Incident report", note=note)
    assert find_forwarded(msg) is None


def test_inline_forward_wins_over_a_mail_it_carries() -> None:
    """A customer's mail forwarded inline with a phishing sample attached is the customer's."""
    phish = make_mail(sender="Bank <security@phish.example>", subject="Verify your account")
    body = GMAIL_BODY.replace("VPN drops every 5 minutes", "Is this phishing?")
    msg = attached_forward(phish, subject="Fwd: Is this phishing?", note=body)
    result = found(msg)
    assert result.sender.address == "dana.reyes@customer.example"
    assert result.how == "gmail"
    assert any(a.content_type == "message/rfc822" for a in result.attachments)


def test_reply_with_quoted_history_is_not_a_forward() -> None:
    """An Outlook reply ("RE:") with an "Original Message" block is a reply, not a forward."""
    body = (
        "Thanks, that fixed it.\n\n"
        "-----Original Message-----\n"
        "From: Dana Reyes <dana.reyes@customer.example>\n"
        "Sent: Tuesday, September 3, 2024 10:00 AM\n"
        "To: Max Muster <max.muster@example.com>\n"
        "Subject: VPN\n\n"
        "The VPN is down.\n"
    )
    assert find_forwarded(forward("RE: VPN", body)) is None
    # The same reply with the prefix removed: the note above Outlook's block makes it a reply.
    assert find_forwarded(forward("VPN", body)) is None


def test_reply_quoting_a_forward_is_not_a_forward() -> None:
    """A Gmail reply whose quoted history contains a forward marker stays a reply."""
    quoted = "\n".join(f"> {line}" if line else ">" for line in GMAIL_BODY.splitlines())
    header = "On Tue, Sep 3, 2024 at 11:00 AM Max <max@example.com> wrote:"
    body = f"Done, closed it.\n\n{header}\n{quoted}\n"
    assert find_forwarded(forward("Re: Fwd: VPN drops every 5 minutes", body)) is None
    assert find_forwarded(forward("VPN drops every 5 minutes", body)) is None


def test_marker_after_a_long_text_needs_a_forward_prefix() -> None:
    """Without a forward prefix, a marker below more than a few lines of text does not count."""
    note = "\n".join(f"Paragraph {n}." for n in range(7))
    body = f"{note}\n\n{GMAIL_BODY}"
    assert find_forwarded(forward("VPN drops every 5 minutes", body)) is None
    assert found(forward("Fwd: VPN drops every 5 minutes", body)).sender.address == (
        "dana.reyes@customer.example"
    )


def test_forward_without_any_sender_address_is_none() -> None:
    """Outlook's "From: Name" without an address, and no attachment: nothing usable."""
    body = (
        "FYI\n\n"
        "-----Original Message-----\n"
        "From: Dana Reyes\n"
        "Sent: Tuesday, September 3, 2024 10:00 AM\n"
        "To: Max Muster\n"
        "Subject: VPN\n\n"
        "The VPN is down.\n"
    )
    assert find_forwarded(forward("FW: VPN", body)) is None


def test_plain_mail_is_not_a_forward() -> None:
    """An ordinary request has no forward in it."""
    assert find_forwarded(forward("Printer jammed", "Hi,\n\nthe printer is jammed.\n")) is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Tue, Sep 3, 2024 at 10:00 AM", datetime(2024, 9, 3, 8, 0, tzinfo=UTC)),
        ("Tuesday, September 3, 2024 2:30 PM", datetime(2024, 9, 3, 12, 30, tzinfo=UTC)),
        ("mar. 3 sept. 2024 à 10:00", datetime(2024, 9, 3, 8, 0, tzinfo=UTC)),
        ("03.09.2024 10:00", datetime(2024, 9, 3, 8, 0, tzinfo=UTC)),
        ("2024-09-03 10:00:00 +0000", datetime(2024, 9, 3, 10, 0, tzinfo=UTC)),
        ("September 3, 2024 at 10:00:00 GMT-4", datetime(2024, 9, 3, 14, 0, tzinfo=UTC)),
        ("sometime last week", None),
    ],
)
def test_inline_dates(line: str, expected: datetime | None) -> None:
    """Dates as clients print them; without a zone, the forward's own zone (+02:00) applies."""
    body = GMAIL_BODY.replace("Tue, Sep 3, 2024 at 10:00 AM", line)
    assert found(forward("Fwd: VPN", body)).date == expected


def test_inline_date_without_outer_date_is_none() -> None:
    """A zone-less inline date cannot be placed in time when the forward has no Date header."""
    raw = forward("Fwd: VPN", GMAIL_BODY)
    headers = tuple((k, v) for k, v in raw.headers if k.lower() != "date")
    msg = ParsedMessage(
        message_id=raw.message_id,
        message_id_synthetic=False,
        subject=raw.subject,
        from_=raw.from_,
        headers=headers,
        text=raw.text,
    )
    assert found(msg).date is None


@pytest.mark.parametrize(
    "text",
    [
        "From: a@b.example\n" * 20_000,
        "---------- Forwarded message ---------\n" * 20_000,
        "From: " + "x" * 200_000,
        "\n" * 200_000 + "Begin forwarded message:",
    ],
)
def test_hostile_text_never_raises(text: str) -> None:
    """Large and repetitive bodies are handled quickly and without an exception."""
    msg = ParsedMessage(
        message_id="x@y", message_id_synthetic=False, subject="Fwd: x", from_=None, text=text
    )
    result = find_forwarded(msg)
    assert result is None or result.sender.address == "a@b.example"


def test_folded_header_lines_are_joined_and_bounded() -> None:
    """A wrapped To line is joined with spaces; a field folded a million times keeps 4,000
    characters (the rest of the block is still read as the block)."""
    wrapped = GMAIL_BODY.replace(
        "To: Max Muster <max.muster@example.com>",
        "To: Max Muster <max.muster@example.com>,\n  Eva <eva@example.com>",
    )
    assert found(forward("Fwd: VPN", wrapped)).text.startswith("Hi Max,")
    folded = GMAIL_BODY.replace(
        "Date: Tue, Sep 3, 2024 at 10:00 AM",
        "Date: Tue, Sep 3, 2024 at 10:00 AM\n" + " +0000 +0000\n" * 50_000,
    )
    result = found(forward("Fwd: VPN", folded))
    assert result.subject == "VPN drops every 5 minutes"
    assert result.text.startswith("Hi Max,")
    assert result.date == datetime(2024, 9, 3, 10, 0, tzinfo=UTC)


def test_many_subject_prefixes_are_skipped_in_one_pass() -> None:
    """Without a Subject line in the block, the forward's own subject loses all its prefixes."""
    body = GMAIL_BODY.replace("Subject: VPN drops every 5 minutes\n", "")
    # Built directly: parse() keeps only the first 998 characters of a subject.
    msg = ParsedMessage(message_id="fwd-1@example.com", message_id_synthetic=False,
                        subject="Fwd: " * 20_000 + "AW: VPN",
                        from_=Address("max.muster@example.com", "Max Muster"), text=body)
    assert found(msg).subject == "VPN"
