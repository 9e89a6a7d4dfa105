"""Turn an `OutgoingMail` into the RFC 5322 bytes we hand to SMTP, and sign our Message-IDs.

Promises of `compose(mail, *, message_id, date, loop_id)`:

* it is pure: the Message-ID, the date and the loop id are parameters; no
  clock, no randomness, no I/O. The same arguments give the same bytes.
* the bytes are 7-bit ASCII with CRLF line ends, no line longer than 998
  octets (RFC 5322 section 2.1.1), and they parse with no defect under
  `email.policy.strict`. Non-ASCII display names, subjects and file names are
  encoded by the standard library (RFC 2047 words, RFC 2231 parameters).
* a header value with CR, LF or another control character raises
  `ValueError`: templates and mail data must never be able to add headers.
* every mail carries `X-Loop: <loop_id>` so that our own mail is recognised
  when it comes back; automated mail also carries `Auto-Submitted:
  auto-replied` (RFC 3834 section 5) and `X-Auto-Response-Suppress: All`
  (Exchange). `Precedence` is left out: RFC 3834 section 3.1.8 discourages it.
* `References` is `mail.references` without duplicates, ending with
  `in_reply_to` (RFC 5322 section 3.6.4), folded between ids and never
  inside one. Ids that cannot be written as a msg-id (white space, angle
  brackets, non-ASCII) are left out: they came from other people's mail, and
  the subject tag threads the reply anyway.

Outlook threading (MS-OXOMSG 2.2.1.3, PidTagConversationIndex): `Thread-Topic`
is the subject without tags and reply prefixes, `Thread-Index` the base64 of a
22-byte conversation index header:

    0x01 | FILETIME, the 5 most significant bytes, big-endian | GUID (16 bytes)

The GUID is a name-based UUID (RFC 4122 version 5, bytes in network order, as
MS-OXOMSG stores Data1-3 big-endian) of a thread key: `ticket:<loop_id>:<id>`
for mail on a ticket, else the first id of the thread (first reference,
In-Reply-To, or the mail's own Message-ID). The time is `thread_started` (the
ticket's creation time) when given, else zero: the fixed prefix MS-OXOCFG
2.2.8.8 uses. Either way every mail of a ticket carries the same index, and
Exchange derives the ConversationId from the GUID, so Outlook groups them.

Signed Message-IDs: `hd.<ticket>.<nonce>.<sig>@<domain>`, where `<ticket>` is
the ticket id (0 for mail on no ticket) and `<sig>` the first 80 bits of
HMAC-SHA256(secret, "helpdesk-message-id:<ticket>.<nonce>"), base32, lower
case. A reply that quotes one of our ids names its ticket in a way nobody
can forge without the secret, which a subject tag cannot do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Collection, Iterable
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime

from helpdesk.values import Address, AttachmentPart, OutgoingMail

__all__ = [
    "compose",
    "make_message_id",
    "thread_index",
    "thread_topic",
    "ticket_from_message_id",
]

# RFC 5322 section 2.1.1: at most 998 octets per line, excluding CRLF.
_MAX_LINE = 998
# Headers we fold ourselves, between msg-ids: the standard library treats
# them as unstructured text and would RFC 2047-encode a long id.
_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})
_FOLD_AT = 78  # RFC 5322 section 2.1.1: lines SHOULD be no longer than 78
# A thread of hundreds of mails makes a header some servers refuse; the
# root and the latest ids are what clients thread by (RFC 5322 3.6.4).
_MAX_REFERENCES = 50

_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # all C0 controls but TAB, and DEL
_FIELD_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 section 3.6.8 ftext
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM_RE = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
# What we can write between angle brackets without producing a defect.
_WRITABLE_ID_RE = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+")
_CONTENT_TYPE_RE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]*)/([a-z0-9][a-z0-9!#$&^_.+-]*)")

# Outlook's subject normalisation, for Thread-Topic. Kept here rather than
# imported from helpdesk.thread: mail and thread are independent layers.
_TAG_RE = re.compile(r"[\[［]\s*[^\[\]［］\s\d]{1,10}\s*\d{1,12}\s*[\]］]")
_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|antwort|ref|réf|rép|rif|fwd?|wg|tr|enc|odp|r)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)

_THREAD_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "thread-index.helpdesk.invalid")
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)  # FILETIME counts 100 ns from here


class _Policy(EmailPolicy):
    """SMTP policy (CRLF) that folds id headers between ids, never encoding them."""

    def fold(self, name: str, value: str) -> str:
        if name.lower() in _ID_HEADERS:
            return _fold_ids(name, str(value), self.linesep)
        folded: str = super().fold(name, value)
        return folded

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _ID_HEADERS:
            return _fold_ids(name, str(value), self.linesep).encode("ascii")
        return super().fold_binary(name, value)


_POLICY = _Policy(linesep="\r\n")


def _fold_ids(name: str, value: str, linesep: str) -> str:
    lines = [f"{name}:"]
    for token in value.split():
        if len(lines[-1]) + 1 + len(token) > _FOLD_AT and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += f" {token}"
    return linesep.join(lines) + linesep


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
    must be timezone-aware; `thread_started` is the ticket's creation time,
    for the Thread-Index header. Raises `ValueError` for header injection,
    a naive date, an invalid Message-ID or address, or no recipient.
    """
    if date.tzinfo is None:
        raise ValueError("date must be timezone-aware (RFC 5322 section 3.3 needs a zone)")
    if not mail.to and not mail.cc:
        raise ValueError("the mail has no recipient in To or Cc")
    _check_id(message_id, "message_id")
    _check_header("X-Loop", loop_id)

    msg = EmailMessage(policy=_POLICY)
    msg["Message-ID"] = f"<{message_id}>"
    msg["Date"] = format_datetime(date)
    _add_address_headers(msg, mail)
    # Runs of white space become one space: folding (RFC 5322 section 2.2.3)
    # breaks at white space, and a tab or trailing blank only confuses readers.
    msg["Subject"] = " ".join(_check_header("Subject", mail.subject).split())
    _add_thread_headers(msg, mail)
    _add_outlook_headers(msg, mail, _thread_key(mail, message_id, loop_id), thread_started)
    if mail.automated:
        msg["Auto-Submitted"] = "auto-replied"  # RFC 3834 section 5.1
        msg["X-Auto-Response-Suppress"] = "All"  # Exchange: no OOF or receipts back to us
    msg["X-Loop"] = loop_id
    _set_body(msg, mail.body, mail.attachments, message_id)
    _add_extra_headers(msg, mail.extra_headers)
    return msg.as_bytes()


def _add_address_headers(msg: EmailMessage, mail: OutgoingMail) -> None:
    msg["From"] = _header_address(mail.from_, "From")
    if mail.reply_to is not None:
        msg["Reply-To"] = _header_address(mail.reply_to, "Reply-To")
    if mail.to:
        msg["To"] = [_header_address(a, "To") for a in mail.to]
    if mail.cc:
        msg["Cc"] = [_header_address(a, "Cc") for a in mail.cc]


def _add_outlook_headers(
    msg: EmailMessage, mail: OutgoingMail, thread_key: str, started: datetime | None
) -> None:
    topic = _check_header("Thread-Topic", mail.thread_topic or "") or thread_topic(mail.subject)
    if topic:
        msg["Thread-Topic"] = topic
    msg["Thread-Index"] = thread_index(thread_key, started)


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


def _header_address(address: Address, header: str) -> HeaderAddress:
    """A stdlib Address; the display name is quoted or RFC 2047-encoded by the policy."""
    _check_header(header, address.name)
    _check_header(header, address.address)
    local, at, domain = address.address.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{header}: not an e-mail address: {address.address!r}")
    if not local.isascii():
        # RFC 6531 (SMTPUTF8) would be needed; RFC 2047 cannot encode an addr-spec.
        raise ValueError(f"{header}: non-ASCII local part needs SMTPUTF8: {address.address!r}")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")  # RFC 5890 A-labels
    except UnicodeError as exc:
        raise ValueError(f"{header}: invalid domain in {address.address!r}") from exc
    return HeaderAddress(display_name=address.name, username=local, domain=ascii_domain)


def _usable_ids(header: str, ids: Iterable[str]) -> list[str]:
    """Distinct ids in order, without those we cannot write; CR/LF is an injection."""
    found: dict[str, None] = {}
    for mid in ids:
        _check_header(header, mid)
        cleaned = mid.strip().removeprefix("<").removesuffix(">")
        if len(cleaned) < _MAX_LINE - 20 and _WRITABLE_ID_RE.fullmatch(cleaned):
            found.setdefault(cleaned, None)
    return list(found)


def _add_thread_headers(msg: EmailMessage, mail: OutgoingMail) -> None:
    """In-Reply-To and References (RFC 5322 section 3.6.4)."""
    parent = _usable_ids("In-Reply-To", [mail.in_reply_to] if mail.in_reply_to else [])
    references = _usable_ids("References", mail.references)
    if parent:
        msg["In-Reply-To"] = f"<{parent[0]}>"
        if parent[0] in references:
            references.remove(parent[0])
        references.append(parent[0])  # the parent is always the last reference
    if len(references) > _MAX_REFERENCES:
        # Keep the root, which threads the whole conversation, and the latest.
        references = [references[0], *references[-(_MAX_REFERENCES - 1) :]]
    if references:
        msg["References"] = " ".join(f"<{mid}>" for mid in references)


def _thread_key(mail: OutgoingMail, message_id: str, loop_id: str) -> str:
    if mail.ticket_id is not None:
        return f"ticket:{loop_id}:{mail.ticket_id}"
    root = (*mail.references, mail.in_reply_to or "", message_id)
    return "message:" + next(mid for mid in root if mid)


def _set_body(
    msg: EmailMessage, body: str, attachments: tuple[AttachmentPart, ...], message_id: str
) -> None:
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    msg.set_content(text, subtype="plain", charset="utf-8", cte=_body_encoding(text))
    if attachments:
        msg.make_mixed()
        for attachment in attachments:
            msg.attach(_attachment_part(attachment))
        msg.set_boundary(_boundary(message_id, text))


def _boundary(message_id: str, text: str) -> str:
    """A boundary derived from the Message-ID, so that compose stays deterministic.

    "=_" never occurs in quoted-printable or base64 (RFC 2045 section 6.7,
    note 8), so only a 7bit body could contain it; then another is derived.
    """
    for attempt in range(100):
        digest = hashlib.sha256(f"{attempt}:{message_id}".encode()).hexdigest()[:32]
        boundary = f"=_hd{digest}"
        if boundary not in text:
            return boundary
    raise ValueError("no multipart boundary avoids the body text")  # pragma: no cover


def _body_encoding(text: str) -> str:
    """7bit when every line is short printable ASCII, else quoted-printable.

    Quoted-printable keeps mostly-Latin text readable in the raw source and
    needs neither 8BITMIME (RFC 6152) from the relay nor lines under 998 octets.
    """
    lines = text.split("\n")
    plain = all(
        line.isascii() and line.isprintable() and len(line) <= _MAX_LINE
        for line in (line.replace("\t", " ") for line in lines)
    )
    return "7bit" if plain else "quoted-printable"


def _attachment_part(attachment: AttachmentPart) -> EmailMessage:
    """A base64 part. message/* and multipart/* go as octet-stream: RFC 2046
    section 5.2.1 forbids base64 for message/rfc822, and its bytes may be 8-bit."""
    _check_header("attachment filename", attachment.filename)
    match = _CONTENT_TYPE_RE.fullmatch(attachment.content_type.strip().lower())
    maintype, subtype = match.groups() if match else ("application", "octet-stream")
    if maintype in ("message", "multipart"):
        maintype, subtype = "application", "octet-stream"
    part = EmailMessage(policy=_POLICY)
    part.set_content(
        attachment.content,
        maintype=maintype,
        subtype=subtype,
        # No Content-ID: a text/plain body has no HTML that could refer to it.
        disposition="inline" if attachment.inline else "attachment",
        filename=attachment.filename,
    )
    del part["MIME-Version"]  # RFC 2045 section 4: needed at the top level only
    return part


def _add_extra_headers(msg: EmailMessage, extra: tuple[tuple[str, str], ...]) -> None:
    """Extra headers go last; they may not replace or duplicate one compose wrote."""
    ours = {name.lower() for name in msg}
    for name, value in extra:
        if not _FIELD_NAME_RE.fullmatch(name):
            raise ValueError(f"not a header field name (RFC 5322 section 3.6.8): {name!r}")
        if name.lower() in ours:
            raise ValueError(f"{name}: set by compose, cannot be given as an extra header")
        msg[name] = _check_header(name, value)


# --------------------------------------------------------------------------
# Outlook threading


def thread_topic(subject: str) -> str:
    """The subject without `[#N]`-style tags and reply/forward prefixes (Thread-Topic)."""
    text = " ".join(_TAG_RE.sub(" ", subject).split())
    previous = None
    while previous != text:
        previous = text
        text = _PREFIX_RE.sub("", text).strip()
    return text


def thread_index(thread_key: str, started: datetime | None = None) -> str:
    """The base64 of a 22-byte conversation index header for `thread_key` (module docstring)."""
    filetime = 0
    if started is not None:
        if started.tzinfo is None:
            raise ValueError("started must be timezone-aware")
        since_1601 = started - _FILETIME_EPOCH
        filetime = since_1601 // timedelta(microseconds=1) * 10  # 100 ns intervals
    header = b"\x01" + (filetime >> 24).to_bytes(5, "big")
    guid = uuid.uuid5(_THREAD_NAMESPACE, thread_key).bytes
    return base64.b64encode(header + guid).decode("ascii")


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
