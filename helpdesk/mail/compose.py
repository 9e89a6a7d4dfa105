"""Turn an `OutgoingMail` into the RFC 5322 bytes we hand to SMTP, and sign our Message-IDs.

Promises of `compose(mail, *, message_id, date, loop_id)`:

* it is pure: the Message-ID, the date and the loop id are parameters; no
  clock, no randomness, no I/O. The same arguments give the same bytes.
* the bytes are 7-bit ASCII with CRLF line ends, no line longer than 998
  octets (RFC 5322 section 2.1.1) and none longer than 76 where a fold is
  possible, and they parse with no defect under `email.policy.strict`.
  Headers are written as text by `helpdesk.mail.fold` (our own folding and
  RFC 2047 encoding, linear in the input: the standard library's header
  registry lost characters, was quadratic and cost 3 ms a mail); the
  Subject, Thread-Topic and display names decode back to exactly the input.
  Attachments (rare, not on the hot path) are MIME parts made by the
  standard library (RFC 2231 file names, base64).
* a header value with CR, LF or another control character raises
  `ValueError`: templates and mail data must never be able to add headers.
* every mail carries `X-Loop: <loop_id>` so that our own mail is recognised
  when it comes back; automated mail also carries `Auto-Submitted` with the
  mail's keyword (RFC 3834 section 5: `auto-replied` for an answer to a
  message, `auto-generated` for mail caused by time or state) and
  `X-Auto-Response-Suppress: All` (Exchange), and `Precedence` when the mail
  asks for it (RFC 3834 section 3.1.8 discourages it, but many vacation
  programs and list servers look only at it; RT and Zammad send it too).
* `References` is `mail.references` without duplicates, ending with
  `in_reply_to` (RFC 5322 section 3.6.4); past `MAX_REFERENCES_OCTETS` the
  middle ids go, the first and the latest stay. In-Reply-To and References
  fold between ids, and after the colon when the first id does not fit (as
  Outlook does), never inside one. Ids that cannot be written as a msg-id
  (white space, angle brackets, non-ASCII) are left out: they came from other
  people's mail, and the subject tag threads the reply anyway.

Outlook threading: `Thread-Topic` is the subject without tags and reply
prefixes; `Thread-Index` continues `mail.parent_thread_index` with a child
block dated `date` (see `helpdesk.mail.conversation`). Without a parent
index the mail starts a conversation: the header block of a name-based GUID
(RFC 4122 version 5) of a thread key, `ticket:<loop_id>:<id>` for mail on a
ticket, else the first id of the thread, and the time `thread_started` (zero
when not given, the fixed prefix MS-OXOCFG 2.2.8.8 uses); a reply (a mail
with In-Reply-To or References) gets a child block only when that time is known.

Signed Message-IDs: `hd.<ticket>.<nonce>.<sig>@<domain>`, where `<ticket>` is
the ticket id (0 for mail on no ticket) and `<sig>` the first 80 bits of
HMAC-SHA256(secret, "helpdesk-message-id:<ticket>.<nonce>"), base32, lower
case. A reply that quotes one of our ids names its ticket in a way nobody
can forge without the secret, which a subject tag cannot do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Collection, Iterable
from datetime import datetime
from email.utils import format_datetime

from helpdesk.mail.conversation import (
    encode_index,
    reply_index,
    root_index,
    thread_guid,
    thread_topic,
    trim_references,
)
from helpdesk.mail.fold import (
    MAX_LINE,
    WIDTH,
    fold_addresses,
    fold_ids,
    fold_parameters,
    fold_unstructured,
)
from helpdesk.values import Address, AttachmentPart, OutgoingMail

__all__ = [
    "MAX_REFERENCES_OCTETS",
    "compose",
    "make_message_id",
    "thread_index",
    "thread_topic",
    "ticket_from_message_id",
]

# A thread of hundreds of mails makes a header some servers refuse; the root
# and the latest ids are what clients thread by (RFC 5322 section 3.6.4).
MAX_REFERENCES_OCTETS = 3000

_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # all C0 controls but TAB, and DEL
_FIELD_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 section 3.6.8 ftext
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM_RE = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
# What we can write between angle brackets without producing a defect.
_WRITABLE_ID_RE = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+")
_CONTENT_TYPE_RE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]*)/([a-z0-9][a-z0-9!#$&^_.+-]*)")
_KEYWORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")  # Auto-Submitted, Precedence values
# Text that goes as 7bit: printable ASCII, tabs and line ends, nothing else.
_NOT_7BIT_RE = re.compile(r"[^\t\n\x20-\x7e]")

# Headers compose writes; extra headers may not repeat them.
_OURS = frozenset({
    "message-id", "date", "from", "reply-to", "to", "cc", "subject", "in-reply-to",
    "references", "thread-topic", "thread-index", "auto-submitted",
    "x-auto-response-suppress", "precedence", "x-loop", "mime-version", "content-type",
    "content-transfer-encoding",
})


# --------------------------------------------------------------------------
# compose


def compose(
    mail: OutgoingMail,
    *,
    message_id: str,
    date: datetime,
    loop_id: str,
    thread_started: datetime | None = None,
) -> bytes:
    """The RFC 5322 bytes of `mail` (see the module docstring for the promises).

    `message_id` is without angle brackets (see `make_message_id`); `date`
    must be timezone-aware; `thread_started` is the conversation's start, for
    a Thread-Index of our own when `mail.parent_thread_index` is None. Raises
    `ValueError` for header injection, a naive date, an invalid Message-ID,
    address or keyword, or no recipient.
    """
    if date.tzinfo is None:
        raise ValueError("date must be timezone-aware (RFC 5322 section 3.3 needs a zone)")
    if not mail.to and not mail.cc:
        raise ValueError("the mail has no recipient in To or Cc")
    _check_id(message_id, "message_id")
    _check_header("X-Loop", loop_id)
    head = [
        f"Message-ID: <{message_id}>\r\n",
        f"Date: {format_datetime(date)}\r\n",
        *_address_headers(mail),
        fold_unstructured("Subject", _check_header("Subject", mail.subject)),
        *_thread_headers(mail),
        *_outlook_headers(mail, message_id, loop_id, date, thread_started),
        *_automation_headers(mail),
        fold_unstructured("X-Loop", loop_id),
        "MIME-Version: 1.0\r\n",
    ]
    content_headers, body = _content(mail, message_id)
    head += content_headers
    head += _extra_headers(mail.extra_headers)
    head.append("\r\n")
    return "".join(head).encode("ascii") + body


def _address_headers(mail: OutgoingMail) -> list[str]:
    headers = [fold_addresses("From", [_mailbox(mail.from_, "From")])]
    if mail.reply_to is not None:
        headers.append(fold_addresses("Reply-To", [_mailbox(mail.reply_to, "Reply-To")]))
    if mail.to:
        headers.append(fold_addresses("To", [_mailbox(a, "To") for a in mail.to]))
    if mail.cc:
        headers.append(fold_addresses("Cc", [_mailbox(a, "Cc") for a in mail.cc]))
    return headers


def _outlook_headers(
    mail: OutgoingMail, message_id: str, loop_id: str, date: datetime, started: datetime | None
) -> list[str]:
    headers = []
    topic = _check_header("Thread-Topic", mail.thread_topic or "") or thread_topic(mail.subject)
    if topic:
        headers.append(fold_unstructured("Thread-Topic", topic))
    parent = mail.parent_thread_index
    # The random byte of the child block, derived so that compose stays pure.
    random = hashlib.sha256(message_id.encode("ascii")).digest()[0]
    if parent is not None:
        index = reply_index(parent, date, random)
    else:
        index = root_index(started, thread_guid(_thread_key(mail, message_id, loop_id)))
        if started is not None and (mail.in_reply_to or mail.references):
            index = reply_index(index, date, random)
    headers.append(f"Thread-Index: {encode_index(index)}\r\n")
    return headers


def _automation_headers(mail: OutgoingMail) -> list[str]:
    headers = []
    if mail.automated:
        keyword = _keyword("Auto-Submitted", mail.auto_submitted)
        headers.append(f"Auto-Submitted: {keyword}\r\n")  # RFC 3834 section 5
        # Exchange: no out-of-office replies or read receipts back to us.
        headers.append("X-Auto-Response-Suppress: All\r\n")
    if mail.precedence:
        headers.append(f"Precedence: {_keyword('Precedence', mail.precedence)}\r\n")
    return headers


def _keyword(header: str, value: str) -> str:
    if not _KEYWORD_RE.fullmatch(value):
        raise ValueError(f"{header}: not a keyword: {value!r}")
    return value


def _check_header(name: str, value: str) -> str:
    """`value`, unless it contains a line break or control character (header injection)."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"{name}: header value contains CR or LF: {value!r}")
    if _CONTROL_RE.search(value):
        raise ValueError(f"{name}: header value contains a control character: {value!r}")
    return value


def _check_id(mid: str, what: str) -> None:
    _check_header(what, mid)
    left, at, right = mid.rpartition("@")
    if not at or not _DOT_ATOM_RE.fullmatch(left) or not _DOT_ATOM_RE.fullmatch(right):
        raise ValueError(f"{what} is not an RFC 5322 msg-id (dot-atom@dot-atom): {mid!r}")


def _mailbox(address: Address, header: str) -> tuple[str, str]:
    """(display name, ASCII addr-spec) of `address`; the name is encoded by the folder."""
    _check_header(header, address.name)
    _check_header(header, address.address)
    local, at, domain = address.address.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{header}: not an e-mail address: {address.address!r}")
    if not local.isascii():
        # RFC 6531 (SMTPUTF8) would be needed; RFC 2047 cannot encode an addr-spec.
        raise ValueError(f"{header}: non-ASCII local part needs SMTPUTF8: {address.address!r}")
    if not _DOT_ATOM_RE.fullmatch(local):
        # RFC 5322 section 3.4.1: a local part that is no dot-atom is a quoted-string.
        escaped = local.replace("\\", "\\\\").replace('"', '\\"')
        local = f'"{escaped}"'
    if not (domain.isascii() and _DOMAIN_RE.fullmatch(domain)):
        try:
            domain = domain.encode("idna").decode("ascii")  # RFC 5890 A-labels
        except UnicodeError as exc:
            raise ValueError(f"{header}: invalid domain in {address.address!r}") from exc
    return address.name, f"{local}@{domain}"


def _usable_ids(header: str, ids: Iterable[str]) -> list[str]:
    """Distinct ids in order, without those we cannot write; CR/LF is an injection."""
    found: dict[str, None] = {}
    for mid in ids:
        _check_header(header, mid)
        cleaned = mid.strip().removeprefix("<").removesuffix(">")
        if len(cleaned) < MAX_LINE - 20 and _WRITABLE_ID_RE.fullmatch(cleaned):
            found.setdefault(cleaned, None)
    return list(found)


def _thread_headers(mail: OutgoingMail) -> list[str]:
    """In-Reply-To and References (RFC 5322 section 3.6.4)."""
    headers = []
    parent = _usable_ids("In-Reply-To", [mail.in_reply_to] if mail.in_reply_to else [])
    references = _usable_ids("References", mail.references)
    if parent:
        headers.append(fold_ids("In-Reply-To", parent[:1]))
        if parent[0] in references:
            references.remove(parent[0])
        references.append(parent[0])  # the parent is always the last reference
    if references:
        headers.append(fold_ids("References", trim_references(references,
                                                               MAX_REFERENCES_OCTETS)))
    return headers


def _thread_key(mail: OutgoingMail, message_id: str, loop_id: str) -> str:
    if mail.ticket_id is not None:
        return f"ticket:{loop_id}:{mail.ticket_id}"
    root = (*mail.references, mail.in_reply_to or "", message_id)
    return "message:" + next(mid for mid in root if mid)


def _extra_headers(extra: tuple[tuple[str, str], ...]) -> list[str]:
    """Extra headers go last; they may not replace or duplicate one compose wrote."""
    headers = []
    for name, value in extra:
        if not _FIELD_NAME_RE.fullmatch(name):
            raise ValueError(f"not a header field name (RFC 5322 section 3.6.8): {name!r}")
        if name.lower() in _OURS:
            raise ValueError(f"{name}: set by compose, cannot be given as an extra header")
        headers.append(fold_unstructured(name, _check_header(name, value)))
    return headers


# --------------------------------------------------------------------------
# Body


def _content(mail: OutgoingMail, message_id: str) -> tuple[list[str], bytes]:
    """The content headers and the body bytes: text/plain, or multipart/mixed with attachments."""
    text = mail.body.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    text_headers, text_body = _text_part(text)
    if not mail.attachments:
        return text_headers, text_body
    parts = [_attachment_part(a) for a in mail.attachments]
    boundary = _boundary(message_id, [text_body, *parts])
    delimiter = f"--{boundary}\r\n".encode("ascii")
    body = [delimiter, "".join(text_headers).encode("ascii"), b"\r\n", text_body]
    for part in parts:
        body += [delimiter, part]
    body.append(f"--{boundary}--\r\n".encode("ascii"))
    return [f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'], b"".join(body)


def _text_part(text: str) -> tuple[list[str], bytes]:
    """7bit when every line is printable ASCII of at most 78 characters, else quoted-printable.

    Quoted-printable keeps mostly-Latin text readable in the raw source, needs
    neither 8BITMIME (RFC 6152) from the relay nor long lines, and folds
    every line to 76 characters (RFC 2045 section 6.7).
    """
    if _NOT_7BIT_RE.search(text) is None and max(map(len, text.split("\n"))) <= WIDTH + 2:
        encoding, body = "7bit", text.replace("\n", "\r\n").encode("ascii")
    else:
        encoding = "quoted-printable"
        body = binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
    return [
        'Content-Type: text/plain; charset="utf-8"\r\n',
        f"Content-Transfer-Encoding: {encoding}\r\n",
    ], body


def _boundary(message_id: str, parts: list[bytes]) -> str:
    """A boundary derived from the Message-ID, so that compose stays deterministic.

    "=_" never occurs in quoted-printable or base64 (RFC 2045 section 6.7,
    note 8), so only a 7bit body could contain it; then another is derived.
    """
    for attempt in range(100):
        digest = hashlib.sha256(f"{attempt}:{message_id}".encode()).hexdigest()[:32]
        boundary = f"=_hd{digest}"
        marker = boundary.encode("ascii")
        if not any(marker in part for part in parts):
            return boundary
    raise ValueError("no multipart boundary avoids the body text")  # pragma: no cover


def _attachment_part(attachment: AttachmentPart) -> bytes:
    """A base64 part. message/* and multipart/* go as octet-stream: RFC 2046
    section 5.2.1 forbids base64 for message/rfc822, and its bytes may be 8-bit.

    Written directly, not through `EmailMessage.set_content`: its header registry
    cost a quarter of a millisecond an attachment, and its base64 a Python loop
    a line (a team's copy of a customer's reply carries every attachment again).
    """
    _check_header("attachment filename", attachment.filename)
    match = _CONTENT_TYPE_RE.fullmatch(attachment.content_type.strip().lower())
    maintype, subtype = match.groups() if match else ("application", "octet-stream")
    if maintype in ("message", "multipart"):
        maintype, subtype = "application", "octet-stream"
    # No Content-ID: a text/plain body has no HTML that could refer to it. No
    # MIME-Version: RFC 2045 section 4 asks for it at the top level only.
    disposition = fold_parameters(
        "Content-Disposition", "inline" if attachment.inline else "attachment",
        [("filename", attachment.filename)] if attachment.filename else [])
    head = (f"Content-Type: {maintype}/{subtype}\r\n"
            f"Content-Transfer-Encoding: base64\r\n{disposition}\r\n")
    return head.encode("ascii") + base64.encodebytes(attachment.content).replace(b"\n", b"\r\n")


# --------------------------------------------------------------------------
# Outlook threading


def thread_index(thread_key: str, started: datetime | None = None) -> str:
    """The base64 of the 22-byte conversation header block for `thread_key`."""
    return encode_index(root_index(started, thread_guid(thread_key)))


# --------------------------------------------------------------------------
# Signed Message-IDs

_SIG_BYTES = 10  # 80 bits: forging needs ~2**80 tries against a server that only answers mail
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SIGNED_ID_RE = re.compile(
    r"hd\.(0|[1-9][0-9]{0,17})\.([A-Za-z0-9_-]{1,64})\.([a-z2-7]{16})@([^@\s]+)"
)


def _signature(secret: bytes, ticket: str, nonce: str) -> str:
    if not secret:
        raise ValueError("the Message-ID secret must not be empty")
    # A purpose label, so that the key can never sign something else by accident.
    message = f"helpdesk-message-id:{ticket}.{nonce}".encode("ascii")
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.b32encode(digest[:_SIG_BYTES]).decode("ascii").lower()


def make_message_id(ticket_id: int | None, *, domain: str, secret: bytes, nonce: str) -> str:
    """`hd.<ticket>.<nonce>.<sig>@<domain>`, without angle brackets; ticket 0 means none.

    `nonce` comes from the caller (e.g. `secrets.token_hex(8)`), so this is pure.
    """
    if ticket_id is not None and (isinstance(ticket_id, bool) or not 0 < ticket_id < 10**18):
        raise ValueError(f"ticket id out of range: {ticket_id!r}")
    if not _NONCE_RE.fullmatch(nonce):
        raise ValueError(f"nonce must be 1-64 characters of [A-Za-z0-9_-]: {nonce!r}")
    if not _DOT_ATOM_RE.fullmatch(domain):
        raise ValueError(f"not a domain for a Message-ID: {domain!r}")
    ticket = str(ticket_id or 0)
    return f"hd.{ticket}.{nonce}.{_signature(secret, ticket, nonce)}@{domain.lower()}"


def ticket_from_message_id(
    message_id: str, *, secret: bytes, domains: Collection[str]
) -> int | None:
    """The ticket id in one of our signed Message-IDs, or None.

    None unless the format is exact, the domain is one of `domains` (domain
    names compare case-insensitively) and the signature verifies; None too
    for our ids of mail on no ticket. Angle brackets around the id are allowed.
    """
    text = message_id.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    match = _SIGNED_ID_RE.fullmatch(text)
    if match is None:
        return None
    ticket, nonce, signature, domain = match.groups()
    if domain.lower() not in {d.lower() for d in domains}:
        return None
    if not hmac.compare_digest(signature, _signature(secret, ticket, nonce)):
        return None
    return int(ticket) or None
