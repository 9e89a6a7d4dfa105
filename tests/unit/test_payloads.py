"""Attachments sent back from a worker without their bytes, decoded again from the raw mail.

Issue 12 item 10: a worker process returns large attachments `detach`ed, and
the store `attach`es them from the raw mail it holds. Whatever the transfer
encoding, the part type or the mail's line ends, the bytes that come back
must be exactly the ones parse() decoded, or the store refuses them.
"""

from __future__ import annotations

import base64
import binascii
import quopri

import pytest

from helpdesk.mail.parse import attach, detach, parse
from helpdesk.mail.prepare import PrepareConfig, detach_payloads, prepare
from helpdesk.values import AttachmentPart
from tests.mailfactory import make_mail

CONFIG = PrepareConfig(own_addresses=frozenset({"support@example.com"}),
                       loop_id="support@example.com")
DATA = bytes(range(256)) * 40 + b"line one\nline two\r\nline three\rend"


def mail(*parts: str, line_end: str = "\n") -> bytes:
    body = "".join(f"--b\n{part}\n" for part in parts) + "--b--\n"
    raw = (
        "From: a@example.com\nMessage-ID: <p@example.com>\n"
        'Content-Type: multipart/mixed; boundary="b"\n\npreamble\n' + body
    )
    return raw.replace("\n", line_end).encode("latin-1")


def part(encoding: str, payload: str, ctype: str = "application/octet-stream") -> str:
    return (f"Content-Type: {ctype}\nContent-Transfer-Encoding: {encoding}\n"
            f"Content-Disposition: attachment; filename=x.bin\n\n{payload}")


def uuencoded(data: bytes) -> str:
    lines = [binascii.b2a_uu(data[i : i + 45]).decode() for i in range(0, len(data), 45)]
    return "begin 644 x.bin\n" + "".join(lines) + "`\nend"


RFC822 = "Subject: inner\nMessage-ID: <inner@example.com>\n\nthe returned mail\n.\n"
SHAPES = {
    "base64": part("base64", base64.encodebytes(DATA).decode()),
    "base64 broken": part("base64", base64.b64encode(DATA).decode()[:-3] + "!!"),
    "quoted-printable": part("quoted-printable",
                             quopri.encodestring(DATA).decode("latin-1")),
    "uuencode": part("x-uuencode", uuencoded(DATA)),
    "8bit": part("8bit", DATA.replace(b"\r", b"").decode("latin-1")),
    "message/rfc822": part("7bit", RFC822, "message/rfc822"),
    "message/rfc822 in base64": part("base64", base64.encodebytes(RFC822.encode()).decode(),
                                     "message/rfc822"),
    "delivery-status": part("7bit", "Final-Recipient: rfc822; a@b.example\nStatus: 5.1.1\n",
                            "message/delivery-status"),
}


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_attach_gives_back_exactly_what_parse_decoded(shape: str, line_end: str) -> None:
    """Each encoding and part type, with LF, CRLF and old Mac CR line ends."""
    raw = mail(SHAPES[shape], "Content-Type: text/plain\n\nbody", line_end=line_end)
    (original,) = parse(raw).attachments
    assert original.span is not None
    detached = detach(original)
    assert (detached.content, detached.detached, detached.size) == (b"", True, original.size)
    again = attach(detached, raw)
    assert again == original
    assert again.content == original.content
    assert not again.detached


def test_attach_refuses_a_mail_that_is_not_the_one_parsed() -> None:
    """Bytes that do not decode to the size parse found are an error, never stored."""
    raw = mail(SHAPES["base64"])
    detached = detach(parse(raw).attachments[0])
    with pytest.raises(ValueError, match="decoded to"):
        attach(detached, raw.replace(b"--b\n", b"--b\nX: y\n", 1)[:-200])


def test_a_part_without_a_span_keeps_its_bytes() -> None:
    """A part made elsewhere (no span) is never detached; a whole part is left alone."""
    made = AttachmentPart("a.bin", "application/octet-stream", b"abc", "0" * 64)
    assert detach(made) is made
    assert attach(made, b"anything") is made


def test_prepared_detaches_large_attachments_only() -> None:
    """`detach_payloads` thins what a worker sends back: large parts only; the message
    otherwise unchanged, and equal again once attached."""
    big = bytes(range(256)) * 400
    raw = make_mail(attachment=("big.bin", big))
    prepared = prepare(raw, CONFIG)
    thin = detach_payloads(prepared, min_size=len(big))
    assert thin.msg is not None
    assert prepared.msg is not None
    (part,) = thin.msg.attachments
    assert part.detached
    assert part.content == b""
    assert part.size == len(big)
    assert attach(part, raw) == prepared.msg.attachments[0]
    assert thin.msg.text == prepared.msg.text
    assert thin.verdict == prepared.verdict
    untouched = detach_payloads(prepared, min_size=len(big) + 1)
    assert untouched is prepared


def test_attached_forward_keeps_the_inner_mails_attachments() -> None:
    """An agent's forward of a mail as .eml: the .eml is detached (it lies in the raw mail);
    the attachments of the mail inside it were parsed from the .eml, so they keep their
    bytes; a forward's copy of the outer parts is detached with them."""
    inner_blob = bytes(range(256)) * 300
    inner = make_mail(sender="Dana Reyes <dana@example.com>", message_id="<inner@example.com>",
                      attachment=("log.bin", inner_blob))
    raw = make_mail(subject="Fwd: printer", sender="Alice Admin <alice@it.example.com>",
                    body="FYI\n", attachment=("original.eml", inner))
    raw = raw.replace(b"Content-Type: application/octet-stream",
                      b"Content-Type: message/rfc822", 1)
    prepared = prepare(raw, CONFIG)
    assert prepared.forwarded is not None
    assert prepared.msg is not None
    thin = detach_payloads(prepared, min_size=1024)
    assert thin.msg is not None
    assert thin.forwarded is not None
    (eml,) = thin.msg.attachments
    assert eml.detached
    assert attach(eml, raw) == prepared.msg.attachments[0]
    (log,) = thin.forwarded.attachments
    assert not log.detached
    assert log.content == inner_blob
