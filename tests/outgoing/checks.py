"""What every mail we send must be, checked as a receiving mail system would."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.header import decode_header, make_header
from email.message import EmailMessage

from helpdesk.mail.conversation import index_started
from tests.outgoing.conftest import Delivered

EW_RE = re.compile(r"=\?utf-8\?([qb])\?([^?\s]+)\?=")
ANY_EW_RE = re.compile(r"=\?[^?\s]*\?[^?\s]*\?[^?\s]*\?=")


@dataclass(frozen=True)
class Expect:
    """What one mail must carry."""

    kind: str
    to: tuple[tuple[str, str], ...]  # (display name, address)
    subject: str
    from_name: str
    envelope_sender: str  # as on the wire: "<>" or "<address>"
    auto_submitted: str | None  # None: a person's mail, no RFC 3834 headers
    in_reply_to: str | None
    references: tuple[str, ...]
    parent_index: bytes  # the conversation index ours must extend by one child block
    cc: tuple[tuple[str, str], ...] = ()
    precedence: str | None = "bulk"


def check(delivered: Delivered, expect: Expect, sent_at: datetime) -> EmailMessage:
    """Every promise of issue 10 for one delivered mail; returns it parsed."""
    data = delivered.data
    assert delivered.envelope_sender == expect.envelope_sender, expect.kind
    assert sorted(delivered.recipients) == sorted(a for _, a in (*expect.to, *expect.cc))
    check_bytes(data, expect.kind)
    msg = strict(data)
    check_headers(msg, data, expect, sent_at)
    return msg


def check_bytes(data: bytes, kind: str) -> None:
    """7-bit, CRLF only, no line over 998, none over 78 that could have been folded."""
    assert data.isascii(), kind
    assert data.count(b"\n") == data.count(b"\r\n"), kind
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    for line in data.split(b"\r\n"):
        assert len(line) <= 998, kind
        if len(line) > 78:
            text = line.decode("ascii")
            token = text.split(":", 1)[1] if not text[0].isspace() else text
            assert len(token.split()) == 1, f"{kind}: a foldable line of {len(line)}: {text}"
    check_encoded_words(head, kind)


def check_encoded_words(head: str, kind: str) -> None:
    """Encoded-words are ours: utf-8, non-empty, at most 75 long, whole characters each."""
    assert len(ANY_EW_RE.findall(head)) == len(EW_RE.findall(head)), kind
    for match in EW_RE.finditer(head):
        assert len(match.group(0)) <= 75, kind
        encoding, payload = match.groups()
        if encoding == "b":
            raw = base64.b64decode(payload, validate=True)
        else:
            raw = re.sub(r"=([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)),
                         payload.replace("_", " ")).encode("latin-1")
        assert raw, f"{kind}: empty encoded-word"
        raw.decode("utf-8")


def strict(data: bytes) -> EmailMessage:
    """policy.strict parses it with zero defects in every part and header."""
    msg = email.message_from_bytes(data, policy=email.policy.strict)
    assert isinstance(msg, EmailMessage)
    problems: list[str] = []
    for part in msg.walk():
        problems += [repr(defect) for defect in part.defects]
        for name, value in part.items():
            problems += [f"{name}: {defect!r}" for defect in value.defects]
        if not part.is_multipart():
            part.get_content()
    assert problems == []
    return msg


def check_headers(msg: EmailMessage, data: bytes, expect: Expect, sent_at: datetime) -> None:
    kind = expect.kind
    assert str(msg["Subject"]) == expect.subject, kind
    assert mailboxes(data, "To") == list(expect.to), kind
    assert mailboxes(data, "Cc") == list(expect.cc), kind
    assert mailboxes(data, "From")[0][0] == expect.from_name, kind
    assert ids(msg, "In-Reply-To") == ([expect.in_reply_to] if expect.in_reply_to else []), kind
    assert ids(msg, "References") == list(expect.references), kind
    assert msg["X-Loop"] == "support@example.com", kind
    if expect.auto_submitted is None:
        assert msg["Auto-Submitted"] is None, kind
        assert msg["X-Auto-Response-Suppress"] is None, kind
        assert msg["Precedence"] is None, kind
    else:
        assert msg["Auto-Submitted"] == expect.auto_submitted, kind
        assert msg["X-Auto-Response-Suppress"] == "All", kind
        assert msg["Precedence"] == expect.precedence, kind
    check_thread_index(msg, expect.parent_index, sent_at, kind)


def check_thread_index(msg: EmailMessage, parent: bytes, sent_at: datetime, kind: str) -> None:
    """The parent's index and one child block dated when the mail was written."""
    index = base64.b64decode(str(msg["Thread-Index"]), validate=True)
    assert index[:-5] == parent, kind
    child = int.from_bytes(index[-5:], "big")
    assert child >> 39 == 0, kind  # DC 0: under 1.7 years after the conversation began
    delta = ((child >> 8) & 0x7FFFFFFF) << 18
    expected = (sent_at - index_started(parent)) // timedelta(microseconds=1) * 10
    assert 0 <= expected - delta < 2**18 + 2**16, kind


def ids(msg: EmailMessage, name: str) -> list[str]:
    value = msg[name]
    return re.findall(r"<([^>]+)>", str(value)) if value is not None else []


def mailboxes(data: bytes, name: str) -> list[tuple[str, str]]:
    """(display name, address) of an address header, names decoded as RFC 2047 says.

    Encoded names are read with email.header.decode_header: email.policy.default
    keeps white space between adjacent encoded-words of a display name, which
    RFC 2047 section 6.2 (and every mail client) drops.
    """
    msg = email.message_from_bytes(data, policy=email.policy.default)
    value = msg[name]
    if value is None:
        return []
    text = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    found = re.search(rf"^{name}:(.*?)\r\n(?! )", text + "\r\n", re.MULTILINE | re.DOTALL)
    assert found is not None
    pieces = split_mailboxes(found.group(1).replace("\r\n", ""))
    result = []
    for address, piece in zip(value.addresses, pieces, strict=True):
        if EW_RE.search(piece):
            phrase = piece.rsplit("<", 1)[0].strip(" \t")
            result.append((str(make_header(decode_header(phrase))), address.addr_spec))
        else:
            result.append((address.display_name, address.addr_spec))
    return result


def split_mailboxes(text: str) -> list[str]:
    """An address list split at the commas outside quoted-strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts
