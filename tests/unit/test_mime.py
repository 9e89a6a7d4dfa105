"""parse()'s own MIME reader: structure, recovery of broken structure, payload decoding."""

from __future__ import annotations

import base64
import binascii

import pytest

from helpdesk.mail.parse import parse
from helpdesk.mail.parse.mime import parse_tree, split_params
from helpdesk.values import Address


def multipart(*parts: str, boundary: str = "b", close: bool = True, head: str = "") -> bytes:
    body = "".join(f"--{boundary}\n{part}\n" for part in parts)
    if close:
        body += f"--{boundary}--\n"
    return (
        f"From: a@example.com\n{head}Content-Type: multipart/mixed; boundary=\"{boundary}\"\n\n"
        f"preamble\n{body}"
    ).encode()


ATTACHMENT = "Content-Type: application/octet-stream\nContent-Disposition: attachment\n\n"


def test_parts_and_their_exact_bytes() -> None:
    """The line break before a boundary belongs to the boundary (RFC 2046 5.1.1)."""
    raw = multipart("Content-Type: text/plain\n\nhello", ATTACHMENT + "abc\n\ndef")
    parsed = parse(raw)
    assert parsed.text == "hello"
    (blob,) = parsed.attachments
    assert blob.content == b"abc\n\ndef"
    crlf = parse(raw.replace(b"\n", b"\r\n"))
    assert crlf.attachments[0].content == b"abc\r\n\r\ndef"


def test_missing_close_boundary_keeps_every_part() -> None:
    """A mail cut off before its close boundary keeps its parts, and says it was cut."""
    parsed = parse(multipart("Content-Type: text/plain\n\nhello", ATTACHMENT + "tail", close=False))
    assert parsed.text == "hello"
    assert parsed.attachments[0].content == b"tail\n"
    assert {"CloseBoundaryNotFoundDefect", "truncated"} <= set(parsed.defects)


def test_boundary_never_appears() -> None:
    """A multipart whose boundary never starts a line is one text body."""
    raw = b"From: a@example.com\nContent-Type: multipart/mixed; boundary=zz\n\njust text\n"
    parsed = parse(raw)
    assert parsed.text == "just text"
    assert "StartBoundaryNotFoundDefect" in parsed.defects


def test_multipart_without_boundary_parameter() -> None:
    """No boundary parameter: the body is text, and the defect names it."""
    parsed = parse(b"From: a@example.com\nContent-Type: multipart/mixed\n\nbody\n")
    assert parsed.text == "body"
    assert "NoBoundaryInMultipartDefect" in parsed.defects


def test_boundary_must_start_a_line_and_end_it() -> None:
    """"--b" inside a line, or "--bx", is text; "--b" with trailing blanks is a boundary."""
    raw = multipart("Content-Type: text/plain\n\nsee --b here\n--bx is not one", "x")
    raw = raw.replace(b"\n--b\nx", b"\n--b \t\nContent-Type: text/plain\n\nsecond")
    parsed = parse(raw)
    assert parsed.text == "see --b here\n--bx is not one\n\nsecond"


def test_consecutive_boundaries_make_no_empty_part() -> None:
    """Two boundary lines in a row do not make a part (as the standard library reads it)."""
    raw = multipart("Content-Type: text/plain\n\none").replace(b"--b\n", b"--b\n--b\n", 1)
    assert parse(raw).text == "one"
    assert len(parse_tree(raw).children or []) == 1


def test_nested_multipart_cut_by_its_parent() -> None:
    """An inner multipart without its close boundary ends at the outer boundary."""
    inner = (
        "Content-Type: multipart/alternative; boundary=in\n\n"
        "--in\nContent-Type: text/plain\n\ninner text"
    )
    raw = multipart(inner, ATTACHMENT + "after")
    parsed = parse(raw)
    assert parsed.text == "inner text"
    assert parsed.attachments[0].content == b"after"
    assert "CloseBoundaryNotFoundDefect" in parsed.defects


def test_quoted_boundary_with_semicolon() -> None:
    """A quoted parameter may hold ";" and "=", and the boundary is taken whole."""
    raw = multipart("Content-Type: text/plain\n\nok", boundary="a;b=c")
    assert parse(raw).text == "ok"


def test_header_block_without_separator() -> None:
    """A line that is no field ends the header block: it and what follows are the body."""
    parsed = parse(b"From: a@example.com\nSubject: s\nthis is body\nmore: body\n")
    assert parsed.subject == "s"
    assert parsed.text == "this is body\nmore: body"
    assert parsed.header("more") is None
    assert "MissingHeaderBodySeparatorDefect" in parsed.defects


def test_white_space_before_colon() -> None:
    """RFC 5322 4.5.3 (obs-optional): "Subject : x" is a field, not the start of the body."""
    parsed = parse(b"From : a@example.com\nSubject\t: old mailer\n\nbody\n")
    assert parsed.subject == "old mailer"
    assert parsed.from_ == Address("a@example.com")
    assert parsed.text == "body"


def test_folded_field_name() -> None:
    """Unfolding comes first (RFC 5322 2.2.3): "Subject\\n : x" is the Subject field."""
    parsed = parse(b"From: a@example.com\nSubject\n : folded\nTo: t@example.com\n\nbody\n")
    assert parsed.subject == "folded"
    assert parsed.to == (Address("t@example.com"),)
    assert parsed.text == "body"


def test_mbox_envelope_line_is_not_a_field() -> None:
    """An mbox "From " line at the top is skipped (and only read as the envelope)."""
    parsed = parse(b"From x@example.com Mon Sep  1 10:00:00 2025\nFrom: a@example.com\n\nhi\n")
    assert [name for name, _ in parsed.headers] == ["From"]
    assert parsed.from_ == Address("a@example.com")


def test_old_mac_line_ends() -> None:
    """A mail with lone CR line ends is read like any other."""
    raw = b"From: a@example.com\rSubject: mac\r\rline one\rline two\r"
    parsed = parse(raw)
    assert (parsed.subject, parsed.text) == ("mac", "line one\nline two")


def test_digest_parts_default_to_messages() -> None:
    """In multipart/digest a part without Content-Type is a message/rfc822 (RFC 2046 5.1.5)."""
    inner = "\nFrom: b@example.com\nSubject: Digest item\n\nitem body"  # no part headers
    raw = multipart(inner).replace(b"multipart/mixed", b"multipart/digest")
    (item,) = parse(raw).attachments
    assert (item.content_type, item.filename) == ("message/rfc822", "Digest item.eml")
    assert item.content == b"From: b@example.com\r\nSubject: Digest item\r\n\r\nitem body"


def test_encoded_message_part_is_decoded() -> None:
    """A base64 message/rfc822 part (RFC 2046 forbids it, mailers do it) is kept decoded."""
    inner = b"From: b@example.com\r\nSubject: Inner\r\n\r\ninner body"
    part = (
        "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(inner).decode()
    )
    (eml,) = parse(multipart(part)).attachments
    assert eml.content == inner
    assert eml.filename == "Inner.eml"


def test_lf_and_crlf_forwarded_mail_hash_alike() -> None:
    """A forwarded mail's bytes are kept with CRLF line ends, so LF and CRLF copies match."""
    raw = multipart("Content-Type: message/rfc822\n\nFrom: b@example.com\nSubject: s\n\nhi")
    lf, crlf = parse(raw), parse(raw.replace(b"\n", b"\r\n"))
    assert lf.attachments[0].content == crlf.attachments[0].content
    assert lf.content_hash == crlf.content_hash


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('attachment; filename="plain.pdf"', "plain.pdf"),
        ("attachment; filename*=UTF-8''%C3%9Cbersicht.pdf", "Übersicht.pdf"),
        (
            "attachment; filename*0*=UTF-8''%C3%9Cber; filename*1=\"sicht\"; filename*2*=.pdf",
            "Übersicht.pdf",
        ),
        (
            "attachment; filename=\"fallback.pdf\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe.pdf",
            "Grüße.pdf",
        ),
        ('attachment; filename="=?utf-8?q?R=C3=A9sum=C3=A9.pdf?="', "Résumé.pdf"),
        ('attachment; filename="a;b.txt"', "a;b.txt"),
        ("attachment; filename*=iso-8859-1'de'Gr%FC%DFe.txt", "Grüße.txt"),
    ],
)
def test_file_name_parameters(header: str, expected: str) -> None:
    """RFC 2231 (continuations, charsets) and RFC 2047 names; an extended name wins."""
    part = f"Content-Type: application/pdf\nContent-Disposition: {header}\n\n%PDF"
    (attachment,) = parse(multipart(part)).attachments
    assert attachment.filename == expected


def test_raw_utf8_file_name() -> None:
    """An unencoded UTF-8 name (8-bit header bytes) is read as UTF-8."""
    part = "Content-Type: text/plain\nContent-Disposition: attachment; filename=\"Grüße.txt\"\n\nx"
    (attachment,) = parse(multipart(part)).attachments
    assert attachment.filename == "Grüße.txt"


def test_split_params() -> None:
    """The first token lower-cased; parameter names lower-cased; quotes and escapes read."""
    assert split_params('Text/Plain; Charset="UTF-8"; format=flowed; x="a \\"q\\" b"') == (
        "text/plain",
        {"charset": "UTF-8", "format": "flowed", "x": 'a "q" b'},
    )


def test_uuencoded_attachment() -> None:
    """A uuencoded part (old mailers) is decoded."""
    data = b"uuencoded bytes\x00\x01"
    line = binascii.b2a_uu(data).decode()
    part = (
        "Content-Type: application/octet-stream\nContent-Transfer-Encoding: x-uuencode\n"
        f"Content-Disposition: attachment; filename=u.bin\n\nbegin 644 u.bin\n{line}`\nend"
    )
    (attachment,) = parse(multipart(part)).attachments
    assert attachment.content == data


def test_quoted_printable_body() -> None:
    """Quoted-printable text with soft line breaks decodes to the text."""
    raw = (
        b"From: a@example.com\nContent-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: quoted-printable\n\nGr=C3=BC=C3=9Fe, lang=\nes Wort\n"
    )
    assert parse(raw).text == "Grüße, langes Wort"


@pytest.mark.parametrize("boundary", [b"b\xc3\xa9", b"b\xe9", b"b\xff\xfe"])
def test_eight_bit_boundary(boundary: bytes) -> None:
    """A boundary with 8-bit bytes (UTF-8 or not) is matched byte for byte."""
    raw = (
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=\"" + boundary + b"\"\n\n"
        b"--" + boundary + b"\nContent-Type: text/plain\n\nfirst\n--" + boundary + b"--\n"
    )
    parsed = parse(raw)
    assert parsed.text == "first"
    assert "StartBoundaryNotFoundDefect" not in parsed.defects


def test_eight_bit_rfc2231_parameter() -> None:
    """Raw 8-bit bytes inside an RFC 2231 value neither crash nor lose the part."""
    raw = (
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b; x*=utf-8''\xdd%41\n\n"
        b"--b\nContent-Type: text/plain\n\nbody\n--b--\n"
    )
    parsed = parse(raw)
    assert parsed.text == "body"
    assert not any(d.startswith("parse-error") for d in parsed.defects)
