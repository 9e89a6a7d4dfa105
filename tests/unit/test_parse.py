"""parse(): raw bytes to ParsedMessage, for real client mail and for hostile input."""

from __future__ import annotations

import base64
import hashlib
import random
import re
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest

from helpdesk.mail.parse import parse, safe_filename
from helpdesk.values import Address, ParsedMessage

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = ROOT / "tests" / "messages"
DEMO = ROOT / "helpdesk" / "demo_mail"
ALL_FIXTURES = sorted([*MESSAGES.rglob("*.eml"), *DEMO.glob("*.eml")])
SAFE_NAME_RE = re.compile(r'^[^/\\<>:"|?*\x00-\x1f\x7f.][^/\\<>:"|?*\x00-\x1f\x7f]*$')


def load(relative: str) -> ParsedMessage:
    return parse((MESSAGES / relative).read_bytes())


def mail(*headers: str, body: str = "Hello\n", content_type: str | None = None) -> bytes:
    """A small LF-terminated mail built from header lines and a body."""
    lines = list(headers)
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    return ("\n".join(lines) + "\n\n" + body).encode("utf-8")


# --------------------------------------------------------------------------
# The whole corpus


def test_corpus_covers_every_origin() -> None:
    """The fixture corpus has mail from every origin the brief lists."""
    origins = {path.parent.name for path in MESSAGES.rglob("*.eml")}
    assert origins >= {
        "outlook", "gmail", "apple", "mobile", "thunderbird",
        "lists", "ooo", "dsn", "charsets", "hostile",
    }  # fmt: skip
    assert len(list(DEMO.glob("*.eml"))) == 6


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fixture_parses_safely(path: Path) -> None:
    """Every fixture parses without raising, with an id and no CR/LF/NUL where it matters."""
    raw = path.read_bytes()
    parsed = parse(raw)
    assert parsed.message_id
    assert "<" not in parsed.message_id
    assert " " not in parsed.message_id
    assert parsed.size == len(raw)
    assert re.fullmatch(r"[0-9a-f]{64}", parsed.content_hash)
    for name, value in parsed.headers:
        assert "\r" not in name + value
        assert "\n" not in name + value
    for text in (
        parsed.subject,
        parsed.text,
        parsed.new_text,
        parsed.quoted_text,
        parsed.html or "",
    ):
        assert "\x00" not in text
        assert "\r" not in text
    assert "\n" not in parsed.subject
    for attachment in parsed.attachments:
        assert SAFE_NAME_RE.match(attachment.filename), attachment.filename
        assert len(attachment.filename.encode()) <= 150
        assert attachment.sha256 == hashlib.sha256(attachment.content).hexdigest()
    assert parsed.date is None or parsed.date.tzinfo is UTC
    assert len(set(parsed.defects)) == len(parsed.defects)


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_parse_is_deterministic(path: Path) -> None:
    """Parsing the same bytes twice gives the same result (a pure function)."""
    raw = path.read_bytes()
    assert parse(raw) == parse(raw)


@pytest.mark.parametrize(
    "relative", ["gmail/reply.eml", "outlook/reply-german.eml", "apple/inline-image.eml"]
)
def test_crlf_and_lf_give_the_same_content(relative: str) -> None:
    """The same mail with CRLF or LF line ends parses to the same content and hash."""
    raw = (MESSAGES / relative).read_bytes().replace(b"\r\n", b"\n")
    lf, crlf = parse(raw), parse(raw.replace(b"\n", b"\r\n"))
    assert lf.text == crlf.text
    assert lf.subject == crlf.subject
    assert lf.content_hash == crlf.content_hash


# --------------------------------------------------------------------------
# Outlook


def test_outlook_german_reply() -> None:
    """Outlook: encoded "Last, First" name, AW: subject, Von/Gesendet block is the quote."""
    parsed = load("outlook/reply-german.eml")
    assert parsed.from_ == Address("juergen.mueller@example.com", "Müller, Jürgen")
    assert parsed.to == (Address("support@example.com", "IT Support"),)
    assert parsed.subject == "AW: [#42] Drucker im 3. Stock druckt nicht"
    assert parsed.message_id == (
        "AM6PR04MB5678A1B2C3D4E5F6A7B8C9D0E1F2@AM6PR04MB5678.eurprd04.prod.outlook.example.com"
    )
    assert parsed.in_reply_to == ("ticket-42-1@helpdesk.example.com",)
    assert parsed.date == datetime(2024, 9, 3, 9, 12, 44, tzinfo=UTC)
    assert parsed.header("Thread-Index") == "AQHa/f3kR2Zx1y2hS0K3m5W0mZ5g7LKx0ZWA"
    assert parsed.header("x-ms-has-attach") == ""
    assert (
        parsed.new_text
        == "Hallo,\n\nder Drucker funktioniert jetzt wieder, vielen Dank!\n\nGruß\nJürgen"
    )
    assert parsed.quoted_text.startswith("Von: IT Support <support@example.com>\nGesendet:")
    assert parsed.html is not None
    assert "WordSection1" in parsed.html
    assert parsed.attachments == ()
    assert parsed.defects == ()


def test_outlook_attachments_and_inline_image() -> None:
    """Outlook: inline image with Content-ID, RFC 2047 PDF name, Cc with quoted comma."""
    parsed = load("outlook/new-with-attachments.eml")
    assert parsed.cc == (
        Address("tom.becker@example.com", "Tom Becker"),
        Address("sam.oneil@example.com", "O'Neil, Sam"),
    )
    assert parsed.to == (Address("support@example.com", ""),)
    image, pdf = parsed.attachments
    assert (image.filename, image.content_type, image.inline) == ("image001.png", "image/png", True)
    assert image.content_id == "image001.png@01DAFE9A.3B4C5D60"
    assert image.content.startswith(b"\x89PNG\r\n")
    assert pdf.filename == "VPN-Protokoll – September.pdf"
    assert (pdf.content_type, pdf.inline, pdf.content_id) == ("application/pdf", False, None)
    assert pdf.content.startswith(b"%PDF-1.4")
    assert pdf.sha256 == hashlib.sha256(pdf.content).hexdigest()
    assert parsed.new_text.startswith("Hi support,\n\nsince this morning the VPN client")


def test_outlook_winmail_dat_is_kept() -> None:
    """A TNEF winmail.dat stays an ordinary attachment."""
    parsed = load("outlook/winmail-tnef.eml")
    (tnef,) = parsed.attachments
    assert (tnef.filename, tnef.content_type) == ("winmail.dat", "application/ms-tnef")
    assert tnef.content.startswith(bytes.fromhex("789f3e22"))
    assert parsed.header("X-MS-TNEF-Correlator") == (
        "<0e1f2a3b4c5d4e6f8a9b0c1d2e3f4a5b@EXCH01.corp.example.com>"
    )


def test_outlook_original_message_separator() -> None:
    """Plain-text Outlook: "-----Original Message-----" starts the quote; date goes to UTC."""
    parsed = load("outlook/original-message.eml")
    assert parsed.new_text == (
        "Friday afternoon works for me. I will bring the old laptop.\n\nChris"
    )
    assert parsed.quoted_text.startswith("-----Original Message-----\nFrom: IT Support")
    assert parsed.date == datetime(2024, 9, 6, 18, 5, 33, tzinfo=UTC)
    assert parsed.references == (
        "ticket-7-1@helpdesk.example.com",
        "ticket-7-3@helpdesk.example.com",
    )


# --------------------------------------------------------------------------
# Gmail, Apple, mobile, Thunderbird


def test_gmail_reply() -> None:
    """Gmail: quoted-printable emoji, wrapped "On ... wrote:" line, gmail_quote HTML."""
    parsed = load("gmail/reply.eml")
    assert parsed.message_id == "CAJ7qN2Zt9Xr0Bk4Fv2yQm1LsP3wHa8oKdE5uGcT6iVbRn_x4Yw@mail.gmail.com"
    assert parsed.new_text == "Thanks, mapping the drive with the new path worked 👍\n\nMaya"
    assert parsed.quoted_text.startswith(
        "On Tue, Sep 3, 2024 at 10:00\u202fAM IT Support <support@example.com>\nwrote:"
    )
    assert "> please map \\\\files.example.com\\team instead" in parsed.quoted_text
    assert parsed.html is not None
    assert 'class="gmail_quote"' in parsed.html


def test_gmail_attachment_and_encoded_subject() -> None:
    """Gmail: UTF-8 Q-encoded subject and name, attachment with a name containing dots."""
    parsed = load("gmail/new-with-attachment.eml")
    assert parsed.subject == "Error message when printing – screenshot"
    assert parsed.from_ == Address("jose.garcia.example@example.com", "José García")
    (shot,) = parsed.attachments
    assert shot.filename == "Screenshot 2024-09-09 at 08.44.51.png"
    assert (shot.inline, shot.content_id) == (False, "f_m0sx1abc0")
    assert parsed.new_text.endswith("screenshot.\n\nJosé")


def test_gmail_forward_is_quoted_but_kept() -> None:
    """Gmail forward: the note is new text, the forwarded mail is the quote."""
    parsed = load("gmail/forward.eml")
    assert parsed.new_text == "Is this mail legit?"
    assert parsed.quoted_text.startswith("---------- Forwarded message ---------")
    assert "https://login.example.net/keep" in parsed.quoted_text


def test_apple_reply() -> None:
    """Apple Mail: Apple-Mail boundary, folded References, bottom quote with attribution."""
    parsed = load("apple/reply.eml")
    assert parsed.header("Mime-Version") == "1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))"
    assert parsed.references == (
        "ticket-31-1@helpdesk.example.com",
        "ticket-31-2@helpdesk.example.com",
    )
    assert parsed.thread_ids[0] == "ticket-31-2@helpdesk.example.com"
    assert parsed.new_text == "Great, Tuesday is fine. Please bring the USB-C cable too.\n\nNoah"
    assert parsed.quoted_text.startswith("> On 12 Sep 2024, at 16:40, IT Support")


def test_apple_inline_image_with_decomposed_name() -> None:
    """Apple Mail: inline image in multipart/related, NFD RFC 2231 name normalised to NFC."""
    parsed = load("apple/inline-image.eml")
    assert parsed.subject == "Drucker zeigt Fehler „Papierstau“"
    assert parsed.from_ == Address("zoe.martin@example.com", "Zoë Martin")
    (image,) = parsed.attachments
    assert image.filename == "Bildschirmfoto Ausdruck Grösse.jpeg"
    assert (image.inline, image.content_id) == (True, "7B1C2D3E-4F5A-4B6C-8D7E-9F0A1B2C3D4E")
    assert image.content.startswith(b"\xff\xd8")
    assert "kein Papier drin:" in parsed.text


def test_iphone_reply() -> None:
    """iOS: "Sent from my iPhone" ends the new text; the BOM iOS inserts is removed."""
    parsed = load("mobile/iphone-reply.eml")
    assert parsed.new_text == "Removing and re-adding the account fixed it. Thanks!"
    assert parsed.quoted_text.startswith("Sent from my iPhone\n\n> On 15 Sep 2024")
    assert "\ufeff" not in parsed.text


def test_iphone_german_signature() -> None:
    """iOS German: "Von meinem iPhone gesendet" is cut from the new text."""
    parsed = load("mobile/iphone-german.eml")
    assert parsed.new_text.endswith("Gruß\nLena")
    assert parsed.quoted_text == "Von meinem iPhone gesendet"


def test_outlook_ios_html_only_reply() -> None:
    """Outlook for iOS, HTML only: converted text, divRplyFwdMsg history quoted and cut."""
    parsed = load("mobile/outlook-ios.eml")
    assert parsed.html is not None
    assert parsed.new_text == "The driver update fixed the camera, you can close the ticket."
    assert "> From: IT Support <support@example.com>" in parsed.quoted_text
    assert "> please install the camera driver update" in parsed.quoted_text


def test_android_reply() -> None:
    """Android: "Sent from my Android device" and the Original Message block are cut."""
    parsed = load("mobile/android.eml")
    assert parsed.new_text == "It works now on the phone too, obrigada!"
    assert "-----Original Message-----" in parsed.quoted_text


def test_thunderbird_format_flowed() -> None:
    """Thunderbird format=flowed: soft line breaks are joined, quote and signature cut."""
    parsed = load("thunderbird/reply-flowed.eml")
    assert parsed.header("User-Agent") == "Mozilla Thunderbird"
    assert parsed.new_text == (
        "Hi,\n\nI removed the calendar and subscribed again, now the events from last week "
        "show up but new ones created on the phone still do not appear in Thunderbird.\n\nFelix"
    )
    assert "> please remove the calendar and subscribe to it again, then tell us whether" in (
        parsed.quoted_text
    )
    assert parsed.quoted_text.endswith("-- \nFelix Braun, Controlling")


def test_thunderbird_inline_answers() -> None:
    """Inline answers are new text; only the unanswered trailing quote is cut."""
    parsed = load("thunderbird/inline-answers.eml")
    assert "Yes, everything in your home folder is copied." in parsed.new_text
    assert parsed.new_text.endswith("Yes, it works with the new model.")
    assert parsed.quoted_text == "> And what about the old laptop?\n> Do I return it to you?"


def test_forwarded_message_attachment() -> None:
    """A message/rfc822 part becomes "<subject>.eml" holding the forwarded mail."""
    parsed = load("thunderbird/forward-attached.eml")
    assert parsed.new_text == "Is this safe to install?"
    (eml,) = parsed.attachments
    assert eml.filename == "Firmware update für Ihren Drucker.eml"
    assert eml.content_type == "message/rfc822"
    assert eml.content.startswith(b"From: Printer Vendor <noreply@example.net>\r\n")
    inner = parse(eml.content)
    assert inner.message_id == "vendor-123@example.net"
    assert inner.text == "Bitte installieren Sie das Firmware-Update."


# --------------------------------------------------------------------------
# Lists, out-of-office, bounces


def test_mailing_list_headers() -> None:
    """List headers are available decoded and unfolded."""
    parsed = load("lists/announce.eml")
    assert parsed.header("List-Id") == "IT announcements <it-announce.lists.example.org>"
    assert parsed.header("Precedence") == "list"
    assert parsed.header("List-Unsubscribe") == (
        "<https://lists.example.org/mailman/options/it-announce>, "
        "<mailto:it-announce-request@lists.example.org?subject=unsubscribe>"
    )
    assert len(parsed.header_all("Received")) == 1
    assert parsed.new_text.startswith("Hello all,")


@pytest.mark.parametrize(
    ("relative", "subject"),
    [
        ("ooo/exchange.eml", "Automatic reply: [#80] Your account will be migrated"),
        ("ooo/gmail-vacation.eml", "Away until Monday"),
        ("ooo/german-abwesenheit.eml", "Abwesenheitsnotiz: [#81] Passwortänderung"),
    ],
)
def test_out_of_office(relative: str, subject: str) -> None:
    """Auto-replies keep their Auto-Submitted header and decoded subject."""
    parsed = load(relative)
    assert parsed.subject == subject
    assert parsed.header("Auto-Submitted") == "auto-replied"


def test_exchange_auto_reply_headers() -> None:
    """Exchange auto-replies carry X-Auto-Response-Suppress; the German one is decoded."""
    assert load("ooo/exchange.eml").header("X-Auto-Response-Suppress") == "All"
    german = load("ooo/german-abwesenheit.eml")
    assert german.from_ == Address("bjoern.schroeder@example.com", "Björn Schröder")
    assert german.text.startswith("Vielen Dank für Ihre Nachricht. Ich bin bis einschließlich")


def test_postfix_bounce() -> None:
    """Postfix DSN: notification is the text; status and returned mail are attachments."""
    parsed = load("dsn/postfix-bounce.eml")
    assert parsed.from_ == Address("mailer-daemon@mx.example.com", "Mail Delivery System")
    assert "report-type=delivery-status" in (parsed.header("Content-Type") or "")
    assert parsed.text.startswith("This is the mail system at host mx.example.com.")
    status, returned = parsed.attachments
    assert (status.filename, status.content_type) == (
        "delivery-status.txt",
        "message/delivery-status",
    )
    assert b"Status: 5.1.1" in status.content
    assert b"Final-Recipient: rfc822; nobody@example.test" in status.content
    assert returned.filename == "[#90] Your request has been received.eml"
    assert parse(returned.content).message_id == "ticket-90-1@helpdesk.example.com"


def test_exchange_ndr() -> None:
    """Exchange NDR: plain alternative is the text, threading headers point at our mail."""
    parsed = load("dsn/exchange-ndr.eml")
    assert parsed.subject == "Undeliverable: [#91] Password reset"
    assert parsed.text.startswith("Your message to gone.user@example.com couldn't be delivered.")
    assert parsed.in_reply_to == ("ticket-91-1@helpdesk.example.com",)
    assert [a.content_type for a in parsed.attachments] == [
        "message/delivery-status",
        "message/rfc822",
    ]
    assert b"Status: 5.1.10" in parsed.attachments[0].content


# --------------------------------------------------------------------------
# Charsets


@pytest.mark.parametrize(
    ("relative", "subject", "name", "snippet"),
    [
        (
            "charsets/iso-2022-jp.eml",
            "会議室のプロジェクターが映りません",
            "山田 太郎",
            "会議室Ａのプロジェクターが映りません。",
        ),
        ("charsets/windows-1252.eml", "License “Pro” – 49 €", "Renée Dubois", "49\u00a0€ – can"),
        ("charsets/koi8-r.eml", "Не работает принтер", "Иван Петров", "Принтер на втором этаже"),
        ("charsets/gb2312.eml", "邮箱无法登录", "朱镕", "我的邮箱从今天早上开始无法登录。"),
        ("charsets/ks_c_5601.eml", "프린터 문제", "김민수", "프린터가 작동하지 않습니다."),
        (
            "charsets/utf8-undeclared.eml",
            "Skærmen flimrer på min bærbare",
            "Søren Ødegård",
            "skærmen på min bærbare flimrer",
        ),
        ("charsets/wrong-declaration.eml", "Acesso negado", "Ana Souza", "não consigo acessar"),
    ],
)
def test_charsets(relative: str, subject: str, name: str, snippet: str) -> None:
    """Subjects, display names and bodies decode in the charsets real mail uses."""
    parsed = load(relative)
    assert parsed.subject == subject
    assert parsed.from_ is not None
    assert parsed.from_.name == name
    assert snippet in parsed.text
    assert "\ufffd" not in parsed.text


def test_unknown_charset_falls_back() -> None:
    """An unknown charset label falls back to UTF-8, then Windows-1252, with a defect."""
    parsed = load("charsets/unknown-charset.eml")
    assert parsed.subject == "Report für September"
    assert parsed.text == "Bericht für September ist fertig – 3 Fehler."
    assert "unknown-charset" in parsed.defects


def test_rfc2231_filename() -> None:
    """An RFC 2231 continued, percent-encoded UTF-8 file name is decoded."""
    (sheet,) = load("charsets/rfc2231-filename.eml").attachments
    assert sheet.filename == "Übersicht Zugänge – Q3 2024 (endgültig).xlsx"
    assert sheet.content.startswith(b"PK")


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?UTF-8?B?Y2Fmw6k=?=", "café"),
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # RFC 2047 6.2: space between words goes
        ("=?utf-8?q?a?=\n =?utf-8?q?_b?=", "a b"),
        ("x =?utf-8?q?a?= y", "x a y"),
        ("=?utf-8?b?4oI=?= =?utf-8?b?rA==?=", "€"),  # one character split over two words
        ("=?iso-8859-1?q?J=FCrgen?=", "Jürgen"),
        ("=?utf-8*de?q?Gr=C3=BC=C3=9Fe?=", "Grüße"),  # RFC 2231 language suffix
        ("=?windows-1252?q?=93quoted=94?=", "“quoted”"),
        ("=?bogus-charset?q?caf=C3=A9?=", "café"),
        ("=?x-unknown?q?caf=E9?=", "café"),
        ("=?utf-8?b?Y2Fmw6k?=", "café"),  # missing base64 padding
        ("=?utf-8?q?unterminated", "=?utf-8?q?unterminated"),
    ],
)
def test_encoded_word_subjects(encoded: str, decoded: str) -> None:
    """RFC 2047 encoded words decode, joined when adjacent, tolerant of broken ones."""
    parsed = parse(mail(f"Subject: {encoded}", "From: a@example.com"))
    assert parsed.subject == decoded


def test_raw_8bit_latin1_header() -> None:
    """Raw 8-bit header bytes that are not UTF-8 are read as Windows-1252."""
    raw = b"From: J\xfcrgen <j@example.com>\nSubject: Gr\xfc\xdfe\n\nx\n"
    parsed = parse(raw)
    assert parsed.subject == "Grüße"
    assert parsed.from_ == Address("j@example.com", "Jürgen")


@pytest.mark.parametrize(
    ("charset", "body", "expected"),
    [
        ("gb2312", "镕".encode("gb18030"), "镕"),
        ("ks_c_5601-1987", "한국".encode("cp949"), "한국"),
        ("iso-2022-jp", "日本".encode("iso2022_jp"), "日本"),
        ("koi8-r", "Мир".encode("koi8_r"), "Мир"),
        ("windows-1252", "€".encode("cp1252"), "€"),
        ("us-ascii", "Olá".encode(), "Olá"),
        ("unknown-8bit", "Olá".encode(), "Olá"),
        ("x-unknown", "Olá".encode("cp1252"), "Olá"),
        ("utf-8", b"caf\xe9", "café"),  # declared UTF-8, actually Latin-1
        ("base64", "Olá".encode(), "Olá"),  # a bytes codec is no charset
        ("unicode_escape", b"\\u0041", "\\u0041"),  # never interpret escapes
    ],
)
def test_body_charsets(charset: str, body: bytes, expected: str) -> None:
    """Body bytes decode with charset aliases and fall back instead of failing."""
    raw = (
        b"From: a@example.com\nContent-Type: text/plain; charset="
        + charset.encode()
        + b"\n\n"
        + body
    )
    assert parse(raw).text == expected


def test_wrong_declared_charset_is_a_defect() -> None:
    """Bytes that are not in the declared charset fall back and are named in defects."""
    raw = b"From: a@example.com\nContent-Type: text/plain; charset=utf-8\n\ncaf\xe9"
    parsed = parse(raw)
    assert parsed.text == "café"
    assert "charset-mismatch" in parsed.defects


def test_forwarded_subject_with_slash_keeps_both_parts() -> None:
    """A slash in a forwarded mail's subject does not cut its .eml name short."""
    inner = "From: x@example.com\nSubject: Invoice 2024/09\n\nhi\n"
    raw = (
        "From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        "Content-Type: text/plain\n\nsee\n--b\nContent-Type: message/rfc822\n\n"
        + inner
        + "--b--\n"
    ).encode()
    (eml,) = parse(raw).attachments
    assert eml.filename == "Invoice 2024_09.eml"


def test_html_charset_from_meta() -> None:
    """An HTML part without a MIME charset uses its <meta charset>."""
    body = '<html><head><meta charset="koi8-r"></head><body>Мир</body></html>'.encode("koi8_r")
    raw = b"From: a@example.com\nContent-Type: text/html\n\n" + body
    assert parse(raw).text == "Мир"


# --------------------------------------------------------------------------
# Hostile input


def test_hostile_attachment_names() -> None:
    """Path traversal, drive letters, device names, controls and long names are defused."""
    names = [a.filename for a in load("hostile/evil-filenames.eml").attachments]
    assert names == [
        "passwd",
        "evil.exe",
        "_con.txt",
        "invoice.pdf",
        "A" * 146 + ".pdf",
        "invoicefdp.exe",  # the right-to-left override is gone: the real extension shows
        "attachment-7.bin",
        "hidden _x__y_z_.png",
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Windows\\System32\\evil.exe", "evil.exe"),
        ("dir/", "dir"),
        ("CON", "_CON"),
        ("nul.tar.gz", "_nul.tar.gz"),
        ("com1.txt", "_com1.txt"),
        ("LPT9", "_LPT9"),
        ("console.txt", "console.txt"),
        ("a..b.txt", "a.b.txt"),
        ("...", "attachment-3.pdf"),
        ("", "attachment-3.pdf"),
        (None, "attachment-3.pdf"),
        ("  .bashrc", "bashrc"),
        ("trailing dot. ", "trailing dot"),
        ('re<po>rt:"1"|?*.doc', "re_po_rt__1____.doc"),
        ("tab\tand\nnewline.txt", "tabandnewline.txt"),
        ("Gro\u0308sse.txt", "Grösse.txt"),
        ("x" * 300, "x" * 150),
        ("ü" * 100 + ".docx", "ü" * 72 + ".docx"),
    ],
)
def test_safe_filename(name: str | None, expected: str) -> None:
    """safe_filename returns a bounded, portable, never empty name."""
    assert safe_filename(name, "application/pdf", 3) == expected


def test_safe_filename_generated_extension() -> None:
    """A missing name gets an extension from the content type, .bin when unknown."""
    assert safe_filename(None, "image/png", 2) == "attachment-2.png"
    assert safe_filename(None, "application/x-whatever", 5) == "attachment-5.bin"


def test_header_injection_is_neutralised() -> None:
    """Encoded CR/LF in headers becomes a space; it can neither split a header nor an address."""
    parsed = load("hostile/header-injection.eml")
    assert parsed.subject == "Hello Bcc: victim@example.org"
    assert parsed.from_ == Address("eve@example.test", "Eve Bcc: victim@example.org")
    assert parsed.header("X-Custom") == "line1 line2 Bcc: victim@example.org"
    assert parsed.reply_to == (Address("reply@example.test", "x y"),)
    assert parsed.header("Bcc") is None


def test_unicode_line_separators_removed_from_headers() -> None:
    """Unicode line and paragraph separators never survive in a header value."""
    parsed = parse(mail("From: a@example.com", "Subject: =?utf-8?q?a=E2=80=A8b=C2=85c?="))
    assert parsed.subject == "a b c"


def test_missing_message_id_is_synthesised() -> None:
    """Without Message-ID the id is derived from the content hash and flagged synthetic."""
    parsed = load("hostile/no-message-id.eml")
    assert parsed.message_id_synthetic
    assert parsed.message_id == f"{parsed.content_hash[:40]}@synthetic.helpdesk.invalid"
    assert "no-message-id" in parsed.defects
    assert load("hostile/no-message-id.eml").message_id == parsed.message_id


@pytest.mark.parametrize("value", ["", "   ", "<>", "this is not an id", "<\x01>"])
def test_garbage_message_id_is_synthesised(value: str) -> None:
    """An empty or garbage Message-ID is replaced by a synthetic one."""
    parsed = parse(mail("From: a@example.com", f"Message-ID: {value}"))
    assert parsed.message_id_synthetic
    assert parsed.message_id.endswith("@synthetic.helpdesk.invalid")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<abc@example.com>", "abc@example.com"),
        ("  < abc@example.com >  ", "abc@example.com"),
        ("abc@example.com", "abc@example.com"),
        ("<abc@example.com> (added by mx)", "abc@example.com"),
    ],
)
def test_message_id_forms(value: str, expected: str) -> None:
    """Message ids lose brackets and white space; missing brackets are tolerated."""
    parsed = parse(mail("From: a@example.com", f"Message-ID: {value}"))
    assert (parsed.message_id, parsed.message_id_synthetic) == (expected, False)


def test_duplicate_message_id_takes_first() -> None:
    """With two Message-ID headers the first wins and a defect is recorded."""
    parsed = load("hostile/duplicate-message-id.eml")
    assert parsed.message_id == "first-id@example.com"
    assert "duplicate-message-id" in parsed.defects


def test_references_tolerate_junk() -> None:
    """In-Reply-To and References yield ids despite missing brackets, commas and junk."""
    parsed = parse(
        mail(
            "From: a@example.com",
            'In-Reply-To: Your message of "Mon, 2 Sep" <irt@example.com>',
            "References: <a@example.com>,<b@example.com> junk <a@example.com>",
            " c@example.com",
        )
    )
    assert parsed.in_reply_to == ("irt@example.com",)
    assert parsed.references == ("a@example.com", "b@example.com")
    bare = parse(mail("From: a@example.com", "References: x@example.com, y@example.com garbage"))
    assert bare.references == ("x@example.com", "y@example.com")


def test_addresses_skip_garbage() -> None:
    """Empty and malformed mailboxes are skipped and named in defects; groups are read."""
    parsed = parse(
        mail(
            "From: Dana <Dana.Reyes@Example.COM>",
            "To: undisclosed-recipients:;",
            "Cc: ,, not an address, team: x@example.com, y@example.com;, <>, @bad, z@",
        )
    )
    assert parsed.from_ == Address("dana.reyes@example.com", "Dana")
    assert parsed.to == ()
    assert [a.address for a in parsed.cc] == ["x@example.com", "y@example.com"]
    assert "bad-address:cc" in parsed.defects


def test_missing_from_is_a_defect() -> None:
    """Without a usable From there is no sender and the defect says so."""
    parsed = parse(mail("To: support@example.com", "From: nobody"))
    assert parsed.from_ is None
    assert "no-from" in parsed.defects


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Tue, 3 Sep 2024 10:00:00 +0200", datetime(2024, 9, 3, 8, 0, tzinfo=UTC)),
        ("3 Sep 2024 10:00:00 -0000", datetime(2024, 9, 3, 10, 0, tzinfo=UTC)),
        ("Tue, 3 Sep 2024 10:00:00 GMT", datetime(2024, 9, 3, 10, 0, tzinfo=UTC)),
        ("Tue, 03 Sep 2024 10:00:00 EDT", datetime(2024, 9, 3, 14, 0, tzinfo=UTC)),
    ],
)
def test_dates_are_utc(value: str, expected: datetime) -> None:
    """Dates become timezone-aware UTC datetimes."""
    assert parse(mail("From: a@example.com", f"Date: {value}")).date == expected


@pytest.mark.parametrize("value", ["yesterday", "Tue, 99 Foo 2024", "", "99999999999"])
def test_bad_dates_are_none(value: str) -> None:
    """An unparseable or empty Date is None with a defect."""
    parsed = parse(mail("From: a@example.com", f"Date: {value}"))
    assert parsed.date is None
    assert {"bad-date", "no-date"} & set(parsed.defects)


def test_missing_date_is_a_defect() -> None:
    """A mail without Date has date None and the defect "no-date"."""
    parsed = parse(mail("From: a@example.com"))
    assert parsed.date is None
    assert "no-date" in parsed.defects


def test_truncated_base64_attachment() -> None:
    """A mail cut inside a base64 attachment keeps the decodable part and says "truncated"."""
    parsed = load("hostile/truncated-base64.eml")
    assert parsed.text == "Here is the log."
    (log,) = parsed.attachments
    assert log.filename == "app.log.gz"
    assert log.content == (bytes(range(256)) * 16)[: log.size]
    assert log.size > 1000
    assert "truncated" in parsed.defects
    assert "CloseBoundaryNotFoundDefect" in parsed.defects


def test_nested_multipart() -> None:
    """Four levels of nesting: the best alternative, a later inline text part and an image."""
    parsed = load("hostile/nested-deep.eml")
    assert parsed.text == "Deep plain text.\n\nSecond inline text part."
    assert parsed.html is not None
    assert parsed.html.strip() == "<p>Deep <b>HTML</b> text.</p>"
    (gif,) = parsed.attachments
    assert (gif.filename, gif.inline, gif.content_id) == ("attachment-1.gif", True, "dot@nested")


def test_absurd_nesting_never_raises() -> None:
    """Thousands of nested multiparts (a parser DoS) give a result with a defect."""
    depth = 3000
    head = "".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth)
    )
    raw = ("From: a@example.com\nSubject: deep\n" + head + "\nbottom\n").encode()
    parsed = parse(raw)
    assert parsed.subject == "deep"
    assert parsed.from_ == Address("a@example.com")
    assert any(d in parsed.defects for d in ("nesting-too-deep", "parse-error:RecursionError"))


def test_html_only_with_script() -> None:
    """HTML-only mail: script and style are dropped, lists and links readable."""
    parsed = load("hostile/html-only-script.eml")
    assert parsed.text == (
        "Weekly digest\n\nThree new articles:\n\n"
        "- Patch Tuesday (https://news.example.net/a1)\n- Password tips\n\n"
        "Unsubscribe at https://news.example.net/u"
    )
    assert parsed.html is not None
    assert "<script>" in parsed.html


def test_mail_without_body() -> None:
    """A mail with headers only has empty texts and no attachments."""
    parsed = load("hostile/no-body.eml")
    assert parsed.subject == "(no body)"
    assert (parsed.text, parsed.new_text, parsed.quoted_text, parsed.html) == ("", "", "", None)
    assert parsed.attachments == ()


def test_nul_bytes_are_removed() -> None:
    """NUL characters are removed from headers and text, with a defect."""
    parsed = load("hostile/nul-bytes.eml")
    assert parsed.subject == "NUL inside"
    assert parsed.text == "Hello world\nsecond line"
    assert "nul-removed" in parsed.defects


def test_garbage_is_not_a_mail() -> None:
    """Binary garbage parses to no sender, a synthetic id and defects saying why."""
    parsed = load("hostile/garbage.eml")
    assert parsed.from_ is None
    assert parsed.headers == ()
    assert parsed.message_id_synthetic
    assert {"no-headers", "no-from", "MissingHeaderBodySeparatorDefect"} <= set(parsed.defects)


def test_demo_malformed_mail_is_quarantine_material() -> None:
    """The demo's malformed mail has no headers and no From, and says so."""
    parsed = parse((DEMO / "06-malformed.eml").read_bytes())
    assert parsed.from_ is None
    assert parsed.headers == ()
    assert {"no-headers", "no-from"} <= set(parsed.defects)


@pytest.mark.parametrize("raw", [b"", b"\n", b"\r\n\r\n", b"From:", b":", b"\x00" * 10, b"--"])
def test_degenerate_inputs(raw: bytes) -> None:
    """Degenerate inputs give a ParsedMessage, never an exception."""
    parsed = parse(raw)
    assert parsed.message_id
    assert parsed.size == len(raw)


def test_not_bytes_never_raises() -> None:
    """Even a wrong argument type gives a ParsedMessage with a parse-error defect."""
    parsed = parse("not bytes")  # type: ignore[arg-type]
    assert parsed.message_id_synthetic
    assert parsed.defects[0].startswith("parse-error:")


def test_random_mutations_never_raise() -> None:
    """Randomly damaged fixtures and random bytes never make parse raise."""
    rng = random.Random(1234)
    sources = [path.read_bytes() for path in ALL_FIXTURES]
    for _ in range(300):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randrange(1, 20)):
            position = rng.randrange(len(data) + 1)
            action = rng.randrange(3)
            if action == 0:
                data[position:position] = rng.randbytes(rng.randrange(1, 8))
            elif action == 1:
                del data[position : position + rng.randrange(1, 200)]
            else:
                data[position:position] = rng.choice(
                    [b"=?", b"?=", b"\r\n", b"--", b";", b'"', b"*"]
                )
        parsed = parse(bytes(data))
        assert all("\n" not in value for _, value in parsed.headers)
    for _ in range(100):
        assert parse(rng.randbytes(rng.randrange(0, 2000))).message_id


# --------------------------------------------------------------------------
# Content hash


TRANSPORT_A = (
    "Return-Path: <dana.reyes@example.com>",
    "Delivered-To: support@example.com",
    "X-Original-To: support@example.com",
    "Received: from mx1.example.com by imap1.example.com; Mon, 7 Oct 2024 09:00:01 +0200",
    "Authentication-Results: mx1.example.com; dkim=pass",
)
TRANSPORT_B = (
    "Return-Path: <dana.reyes@example.com>",
    "Delivered-To: helpdesk@example.com",
    "X-Original-To: it@example.com",
    "Received: from mx2.example.com by imap2.example.com; Mon, 7 Oct 2024 09:00:09 +0200",
    "Received: from relay.example.com by mx2.example.com; Mon, 7 Oct 2024 09:00:05 +0200",
    "Authentication-Results: mx2.example.com; dkim=pass; spf=pass",
)
CONTENT = (
    "From: Dana Reyes <dana.reyes@example.com>",
    "To: support@example.com, it@example.com",
    "Subject: Printer",
    "Date: Mon, 7 Oct 2024 09:00:00 +0200",
)


def test_same_mail_via_two_mailboxes_has_same_hash() -> None:
    """Transport headers (Received, Delivered-To, ...) do not change the content hash."""
    first = parse(mail(*TRANSPORT_A, *CONTENT, body="It is broken.\n"))
    second = parse(mail(*TRANSPORT_B, *CONTENT, body="It is broken.\n"))
    assert first.content_hash == second.content_hash
    assert first.message_id == second.message_id  # both synthetic, from the hash
    assert first.message_id_synthetic


@pytest.mark.parametrize(
    "change",
    [
        ("Subject: Printer", "Subject: Printer!"),
        ("Date: Mon, 7 Oct 2024 09:00:00 +0200", "Date: Mon, 7 Oct 2024 09:00:01 +0200"),
        ("From: Dana Reyes <dana.reyes@example.com>", "From: Dana Reyes <dana@example.com>"),
        ("It is broken.", "It is broken!"),
    ],
)
def test_different_mail_has_different_hash(change: tuple[str, str]) -> None:
    """Changing sender, subject, date or text changes the content hash."""
    original = mail(*CONTENT, body="It is broken.\n")
    changed = original.replace(change[0].encode(), change[1].encode())
    assert parse(original).content_hash != parse(changed).content_hash


def test_hash_separates_fields() -> None:
    """Moving text between subject and body cannot produce the same hash."""
    one = parse(mail("From: a@example.com", "Subject: ab", body="c"))
    two = parse(mail("From: a@example.com", "Subject: a", body="bc"))
    assert one.content_hash != two.content_hash


def test_hash_covers_message_id_and_attachments() -> None:
    """The original Message-ID and attachment bytes are part of the hash."""
    base = (MESSAGES / "outlook/winmail-tnef.eml").read_bytes()
    other_id = base.replace(b"<0e1f2a3b4c5d4e6f", b"<0e1f2a3b4c5d4e6e", 1)
    other_attachment = base.replace(b"eJ8+IgEGkAgA", b"eJ8+IgEGkAgB", 1)
    assert base != other_id
    assert base != other_attachment
    hashes = {parse(raw).content_hash for raw in (base, other_id, other_attachment)}
    assert len(hashes) == 3


# --------------------------------------------------------------------------
# Size


def test_twenty_megabyte_attachment() -> None:
    """A 20 MB attachment parses intact, costing its decoded bytes and no copy of the mail."""
    payload = random.Random(20).randbytes(20 * 1024 * 1024)
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    raw = (
        b"From: Dana Reyes <dana.reyes@example.com>\r\nTo: support@example.com\r\n"
        b"Subject: Big dump\r\nMessage-ID: <big@example.com>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BIG\r\n\r\n"
        b"--BIG\r\nContent-Type: text/plain\r\n\r\nMemory dump attached.\r\n"
        b"--BIG\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="dump.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--BIG--\r\n"
    )
    tracemalloc.start()
    try:
        parsed = parse(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (dump,) = parsed.attachments
    assert dump.sha256 == hashlib.sha256(payload).hexdigest()
    assert parsed.text == "Memory dump attached."
    # The attachment is decoded straight from the raw bytes: its decoded copy
    # and little more (the standard library's parser held about 8x the mail).
    assert peak < len(payload) + len(raw) // 4, peak
