"""Turn the raw bytes of one mail into a `ParsedMessage`.

Promises of `parse(raw, envelope_sender=None)`:

* it is pure: no I/O, no clock, no logging, no environment;
* it never raises, whatever the bytes: a part that cannot be read is skipped
  and named in `defects`; if even the MIME structure cannot be read, the
  headers alone are parsed; if not even that works, a message with a
  synthetic id, the size and a defect naming the failure comes back;
* every decoded header value is free of CR, LF and other control characters
  (RFC 5322 section 2.2: a field body is one logical line), every text is
  free of NUL, and attachment names are safe to use as file names anywhere;
* what a mail can make big stays bounded: subjects and display names 998
  characters, other header values 8,192, 1,000 header fields, 1,000
  mailboxes per address header, References the first and the last 99 ids,
  10,000 MIME parts, 40 levels of nesting (the raw mail keeps the rest);
* it finds the sender if the mail names one anywhere (see `from_`), and
  leaves deciding what to do without one to ingest;
* it is linear in the size of the mail and holds about two copies of it at
  most (the raw bytes and the decoded attachments).

Layout: `mime` reads the MIME structure from the raw bytes (our own reader,
see its docstring for why not the standard library's), `headers` decodes
header values, ids and dates, `addresses` reads address lists and finds the
sender, `body` walks the tree for text, HTML and attachments, `charsets`
turns bytes into text, `filenames` makes attachment names safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from helpdesk.mail.html import html_to_text
from helpdesk.mail.parse.addresses import addresses, find_sender
from helpdesk.mail.parse.body import Content, Walker, decode_span
from helpdesk.mail.parse.charsets import Defects
from helpdesk.mail.parse.filenames import safe_filename
from helpdesk.mail.parse.headers import (
    MAX_HEADER_VALUE,
    Fields,
    bound_ids,
    clean_line,
    decode_words,
    display,
    ids,
    message_id,
    parse_date,
    read_fields,
)
from helpdesk.mail.parse.mime import envelope_line, line_ends, lone_cr, parse_tree, read_headers
from helpdesk.mail.quoting import split_reply
from helpdesk.values import AttachmentPart, ParsedMessage

__all__ = ["SYNTHETIC_ID_DOMAIN", "attach", "detach", "parse", "safe_filename"]

SYNTHETIC_ID_DOMAIN = "synthetic.helpdesk.invalid"

# Defects of the structure that mean the mail was cut off in transit.
_TRUNCATION_DEFECTS = ("CloseBoundaryNotFoundDefect",)
# Postfix and Exim write the envelope sender into their Received field.
_ENVELOPE_FROM_RE = re.compile(r"\benvelope-from[\s=]*<?([^\s<>;()]+@[^\s<>;()]+)", re.I)


def parse(raw: bytes, *, envelope_sender: str | None = None) -> ParsedMessage:
    """Parse one raw mail; never raises (see the module docstring).

    `envelope_sender` is the SMTP MAIL FROM where the source knows it (LMTP,
    an MTA pipe): the last resort for a mail that names no sender itself.
    """
    try:
        data = bytes(raw)
    except Exception as exc:  # noqa: BLE001 - the contract is to never raise
        return _hopeless(b"", exc)
    try:
        defects = Defects()
        buf = line_ends(data)
        root = parse_tree(buf)
        fields = read_fields(root.fields, defects)
        content = Content()
        Walker(buf, defects).walk(root, content)
        return _assemble(data, fields, content, defects, _envelope(buf, fields, envelope_sender))
    except Exception as exc:  # noqa: BLE001 - e.g. MemoryError on absurd input
        return _headers_only(data, exc, envelope_sender)


def detach(part: AttachmentPart) -> AttachmentPart:
    """`part` without its bytes, which `attach` decodes again from the raw mail.

    For a worker process: the result it sends back then carries no copy of a
    large attachment (issue 12 item 10). A part that does not know where it
    lies in the raw mail (one of a mail found inside another) keeps its bytes.
    """
    if part.span is None or part.detached:
        return part
    return dataclasses.replace(part, content=b"", detached=True)


def attach(part: AttachmentPart, raw: bytes) -> AttachmentPart:
    """A `detach`ed part with its bytes again, decoded from `raw`, the mail it was parsed from.

    Raises ValueError when they do not come out as long as parse found them
    (`raw` is not that mail).
    """
    span = part.span
    if not part.detached or span is None:
        return part
    if lone_cr(raw):  # as parse read it (line_ends), for this part's bytes only
        region = raw[span.start : span.end].replace(b"\r", b"\n")
        data = decode_span(region, dataclasses.replace(span, start=0, end=len(region)))
    else:
        data = decode_span(raw, span)
    if len(data) != span.size:
        raise ValueError(f"attachment {part.filename!r} decoded to {len(data)} bytes from the "
                         f"raw mail, {span.size} when it was parsed")
    return dataclasses.replace(part, content=data, detached=False)


def _envelope(buf: bytes, fields: Fields, given: str | None) -> tuple[str | None, ...]:
    """Envelope senders by trust: the source's, the mbox line's, our MTA's Received."""
    line = envelope_line(buf)
    mbox = line.split(None, 1)[0] if line else None
    received = None
    for value in fields.decoded.get("received", ()):
        match = _ENVELOPE_FROM_RE.search(value)
        if match:
            received = match.group(1)
            break
    return given, mbox, received


def _join_text(segments: list[tuple[str, str]]) -> str:
    texts: list[str] = []
    for kind, text in segments:
        rendered = html_to_text(text) if kind == "html" else text
        rendered = rendered.strip("\n")
        if rendered.strip():
            texts.append(rendered)
    return "\n\n".join(texts)


def _content_hash(fields: list[tuple[str, str]], attachments: list[AttachmentPart]) -> str:
    """sha256 over the content fields, each length-prefixed so none can run into the next."""
    digest = hashlib.sha256()
    for label, value in fields:
        data = value.encode("utf-8", "surrogatepass")
        digest.update(f"{label}:{len(data)}:".encode("ascii"))
        digest.update(data)
        digest.update(b"\n")
    for attachment in attachments:
        digest.update(f"attachment:{attachment.sha256}\n".encode("ascii"))
    return digest.hexdigest()


def _assemble(
    raw: bytes,
    fields: Fields,
    content: Content,
    defects: Defects,
    envelope: tuple[str | None, ...],
) -> ParsedMessage:
    if not fields.items:
        defects.add("no-headers")
    if len(fields.prepared.get("from", ())) > 1:
        defects.add("duplicate-from")  # the first counts; clients may show another
    others = {name: fields.prepared.get(name, []) for name in ("sender", "reply-to", "return-path")}
    sender = find_sender(fields.prepared.get("from", []), others, envelope, defects)
    from_value, subject_value = fields.first("from"), fields.first("subject")
    from_header = display(from_value, defects, "from") if from_value is not None else ""
    subject = display(subject_value, defects, "subject") if subject_value is not None else ""
    text = _join_text(content.segments)
    html = "\n".join(content.htmls) if content.htmls else None
    new_text, quoted_text = split_reply(text)
    if any(name in defects for name in _TRUNCATION_DEFECTS):
        defects.add("truncated")
    # Only the From field counts: the same mail fetched from two sources, one
    # of which knows the envelope, must hash the same.
    hashed_from = sender.address.address if sender.address and sender.source == "from" else ""
    date_value = fields.first("date") or ""
    content_fields = [("from", hashed_from), ("subject", subject), ("date", date_value)]
    content_fields += [("text", text), ("html", html if html is not None else "")]
    mid, synthetic, content_hash = _identity(fields, content_fields, content.attachments, defects)
    return ParsedMessage(
        message_id=mid,
        message_id_synthetic=synthetic,
        subject=subject,
        from_=sender.address,
        to=addresses(fields.prepared.get("to", []), "to", defects),
        cc=addresses(fields.prepared.get("cc", []), "cc", defects),
        reply_to=addresses(fields.prepared.get("reply-to", []), "reply-to", defects),
        date=parse_date(fields.first("date"), defects),
        in_reply_to=_id_list(fields, "in-reply-to", defects),
        references=_id_list(fields, "references", defects),
        headers=tuple(fields.items),
        text=text,
        new_text=new_text,
        quoted_text=quoted_text,
        html=html,
        attachments=tuple(content.attachments),
        defects=defects.names(),  # last: every argument above may add one
        content_hash=content_hash,
        size=len(raw),
        sender_source=sender.source,
        from_header=from_header,
    )


def _identity(
    fields: Fields,
    content_fields: list[tuple[str, str]],
    attachments: list[AttachmentPart],
    defects: Defects,
) -> tuple[str, bool, str]:
    """(message id, whether it is synthetic, content hash).

    Without a usable Message-ID the id is derived from the content hash, so
    that a redelivery of the same mail is still recognised.
    """
    id_values = fields.decoded.get("message-id", [])
    if len(id_values) > 1:
        defects.add("duplicate-message-id")
    original_id = id_values[0] if id_values else ""
    # The hash's fields keep their historical order: stored hashes stay valid.
    ordered = [*content_fields[:3], ("message-id", original_id), *content_fields[3:]]
    content_hash = _content_hash(ordered, attachments)
    mid = message_id(original_id)
    if mid is not None:
        return mid, False, content_hash
    defects.add("no-message-id" if not original_id else "bad-message-id")
    return f"{content_hash[:40]}@{SYNTHETIC_ID_DOMAIN}", True, content_hash


def _id_list(fields: Fields, name: str, defects: Defects) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for prepared, value in zip(
        fields.prepared.get(name, ()), fields.decoded.get(name, ()), strict=True
    ):
        if len(value) >= MAX_HEADER_VALUE:  # cut for display: read the whole field
            value = clean_line(decode_words(prepared, defects), defects)
        found.update(dict.fromkeys(ids(value)))
    return bound_ids(tuple(found), defects, name)


def _headers_only(data: bytes, exc: BaseException, envelope_sender: str | None) -> ParsedMessage:
    """When the MIME structure cannot be read: the headers, and no body."""
    try:
        defects = Defects()
        defects.add(f"parse-error:{type(exc).__name__}")
        read_defects: list[str] = []
        fields, _ = read_headers(data, 0, len(data), read_defects)
        for name in read_defects:
            defects.add(name)
        decoded = read_fields(fields, defects)
        envelope = _envelope(data, decoded, envelope_sender)
        return _assemble(data, decoded, Content(), defects, envelope)
    except Exception as again:  # noqa: BLE001 - the contract is to never raise
        return _hopeless(data, again)


def _hopeless(data: bytes, exc: BaseException) -> ParsedMessage:
    content_hash = hashlib.sha256(data).hexdigest()
    return ParsedMessage(
        message_id=f"{content_hash[:40]}@{SYNTHETIC_ID_DOMAIN}",
        message_id_synthetic=True,
        subject="",
        from_=None,
        defects=(f"parse-error:{type(exc).__name__}", "no-headers", "no-from"),
        content_hash=content_hash,
        size=len(data),
    )
