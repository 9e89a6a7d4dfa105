"""The body walk: which parts are the text, which the HTML, which attachments.

RFC 2046 section 5.1.4: of a multipart/alternative the last alternative is
the richest; text parts that are not attachments are the body, in order;
everything else (and any part with a file name) is an attachment, hashed
once and kept as the bytes decoded from the raw mail, without further copies.
"""

from __future__ import annotations

import hashlib
import quopri
import re
from dataclasses import dataclass, field

from helpdesk.mail.parse.charsets import (
    SURROGATE_RE,
    Defects,
    b64_lenient,
    decode_bytes,
    from_8bit,
)
from helpdesk.mail.parse.filenames import SEPARATORS_RE, safe_filename
from helpdesk.mail.parse.headers import clean_line, decode_header, decode_words
from helpdesk.mail.parse.mime import (
    Part,
    decode_payload,
    decode_region,
    read_headers,
    split_params,
    transfer_encoding,
)
from helpdesk.values import AttachmentPart, PayloadSpan

__all__ = ["Content", "Walker", "decode_message", "decode_span"]

_META_CHARSET_RE = re.compile(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)
_NEWLINES_RE = re.compile(r"\r\n?")
_MAX_SUBJECT_IN_NAME = 200


@dataclass
class Content:
    """What a walk of (part of) the MIME tree found."""

    segments: list[tuple[str, str]] = field(default_factory=list)  # ("plain"|"html", text)
    htmls: list[str] = field(default_factory=list)
    attachments: list[AttachmentPart] = field(default_factory=list)


def clean_text(text: str, defects: Defects) -> str:
    """Body text with \\n line ends, no NUL (PostgreSQL cannot store it), no lone surrogates."""
    if "\r" in text:
        text = _NEWLINES_RE.sub("\n", text)
    if "\x00" in text:
        defects.add("nul-removed")
        text = text.replace("\x00", "")
    if "\ufeff" in text:
        # A byte order mark inside text is noise (iOS puts one in quotes).
        text = text.replace("\ufeff", "")
    if not text.isascii() and SURROGATE_RE.search(text):
        text = SURROGATE_RE.sub("\ufffd", text)
    return text


def unflow(text: str, delsp: bool) -> str:
    """Undo RFC 3676 format=flowed: join soft-broken lines of equal quote depth."""
    out: list[str] = []
    paragraph: list[str] = []
    paragraph_depth = 0

    def emit() -> None:
        content = "".join(paragraph)
        out.append(f"{'>' * paragraph_depth} {content}".rstrip() if paragraph_depth else content)
        paragraph.clear()

    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):  # section 4.4 space-stuffing
            content = content[1:]
        if paragraph and depth != paragraph_depth:
            emit()
        # Section 4.3: the signature separator "-- " is never flowed.
        flowed = content.endswith(" ") and content.rstrip() != "--"
        if flowed and delsp:
            content = content[:-1]
        paragraph.append(content)
        paragraph_depth = depth
        if not flowed:
            emit()
    if paragraph:
        emit()
    return "\n".join(out)


def decode_message(buf: bytes, start: int, end: int, encoding: str, defects: Defects) -> bytes:
    """The bytes of a message/* part at buf[start:end], with CRLF line ends."""
    raw = buf[start:end]
    # RFC 2046 section 5.2.1 forbids encoding a message/rfc822 part, but
    # mailers (Python's own add_attachment among them) do it.
    if encoding == "base64":
        raw = b64_lenient(raw, defects)
    elif encoding == "quoted-printable":
        raw = quopri.decodestring(raw)
    return _crlf(raw)


def decode_span(buf: bytes, span: PayloadSpan) -> bytes:
    """An attachment's bytes decoded again from the mail it was parsed from (see
    `AttachmentPart.detached`); `buf` with its line ends as parse read them."""
    if span.message:
        return decode_message(buf, span.start, span.end, span.encoding, Defects())
    return decode_region(buf, span.start, span.end, span.encoding, Defects())


def _crlf(data: bytes) -> bytes:
    """Line ends as CRLF, so that a mail's hash does not depend on how it was stored."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    # Two passes of bytes.replace, not a regex: re.sub keeps a piece per line
    # until it joins them (a part of a million short lines cost ~70x its size).
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class Walker:
    """Walks a MIME tree collecting body text, HTML and attachments."""

    def __init__(self, buf: bytes, defects: Defects) -> None:
        self.buf = buf
        self.defects = defects
        self.attachment_count = 0

    def walk(self, part: Part, out: Content) -> None:
        """Collect `part` and everything below it into `out`."""
        for name in part.defects:
            self.defects.add(name)
        if part.too_deep:
            self.defects.add("nesting-too-deep")
            return
        try:
            self._walk_part(part, out)
        except Exception as exc:  # noqa: BLE001 - one unreadable part must not lose the rest
            self.defects.add(f"unreadable-part:{type(exc).__name__}")

    def _walk_part(self, part: Part, out: Content) -> None:
        ctype = part.content_type
        if ctype == "message/rfc822":
            self._forwarded(part, out)
        elif ctype.startswith("message/"):
            self._message_part(part, ctype, out)
        elif part.children is not None:
            if ctype == "multipart/alternative":
                self._alternative(part.children, out)
            else:
                for child in part.children:
                    self.walk(child, out)
        else:
            self._leaf(part, ctype, out)

    def _alternative(self, children: list[Part], out: Content) -> None:
        """RFC 2046 section 5.1.4: the last alternative is the richest; take the
        last one with plain text for `text` and the last one with HTML for `html`."""
        text_choice: Content | None = None
        html_choice: Content | None = None
        for child in children:
            found = Content(attachments=out.attachments)
            self.walk(child, found)
            if found.segments and (_has_plain(found) or not _has_plain(text_choice)):
                text_choice = found
            if found.htmls:
                html_choice = found
        if text_choice is not None:
            out.segments.extend(text_choice.segments)
        if html_choice is not None:
            out.htmls.extend(html_choice.htmls)

    def _leaf(self, part: Part, ctype: str, out: Content) -> None:
        disposition, disposition_params = _disposition(part)
        filename = self._filename(part, disposition_params)
        body_type = ctype in ("text/plain", "text/html")
        if ctype.startswith("multipart/"):
            body_type, ctype = True, "text/plain"  # no boundary: the body is all there is
        if body_type and disposition != "attachment" and not filename:
            text = self._text(part, ctype)
            if ctype == "text/html":
                out.segments.append(("html", text))
                out.htmls.append(text)
            else:
                out.segments.append(("plain", text))
            return
        data = decode_payload(self.buf, part, self.defects)
        self._attach(out, part, data, ctype, filename, disposition)

    def _text(self, part: Part, ctype: str) -> str:
        data = decode_payload(self.buf, part, self.defects)
        charset = _charset(part)
        if charset is None and ctype == "text/html":
            sniffed = _META_CHARSET_RE.search(data[:4096])
            charset = sniffed.group(1).decode("ascii") if sniffed else None
        text = clean_text(decode_bytes(data, charset, self.defects), self.defects)
        if ctype == "text/plain" and part.params.get("format", "").strip().lower() == "flowed":
            text = unflow(text, delsp=part.params.get("delsp", "").strip().lower() == "yes")
        return text

    def _forwarded(self, part: Part, out: Content) -> None:
        """A message/rfc822 part is kept whole as "<subject>.eml"."""
        data = self._message_bytes(part)
        fields, _ = read_headers(data, 0, len(data), [])
        subject_raw = next((value for key, value in fields if key.lower() == "subject"), None)
        subject = ""
        if subject_raw is not None:
            subject = " ".join(decode_header(from_8bit(subject_raw), self.defects).split())
            subject = subject[:_MAX_SUBJECT_IN_NAME]
        # The subject is a title, not a path: "Invoice 2024/09" keeps both parts.
        name = f"{SEPARATORS_RE.sub('_', subject) or 'forwarded'}.eml"
        disposition, _ = _disposition(part)
        self._attach(out, part, data, "message/rfc822", name, disposition)

    def _message_part(self, part: Part, ctype: str, out: Content) -> None:
        """message/delivery-status and friends: their body, as a text attachment."""
        disposition, disposition_params = _disposition(part)
        name = self._filename(part, disposition_params) or f"{ctype.split('/', 1)[1]}.txt"
        self._attach(out, part, self._message_bytes(part), ctype, name, disposition)

    def _message_bytes(self, part: Part) -> bytes:
        return decode_message(self.buf, part.start, part.end, transfer_encoding(part),
                              self.defects)

    def _attach(
        self,
        out: Content,
        part: Part,
        data: bytes,
        ctype: str,
        filename: str | None,
        disposition: str | None,
    ) -> None:
        self.attachment_count += 1
        content_id = _content_id(part, self.defects)
        inline = disposition == "inline" or (disposition is None and content_id is not None)
        span = PayloadSpan(part.start, part.end, transfer_encoding(part),
                           ctype.startswith("message/"), len(data))
        out.attachments.append(
            AttachmentPart(
                filename=safe_filename(filename, ctype, self.attachment_count),
                content_type=ctype,
                content=data,
                sha256=hashlib.sha256(data).hexdigest(),
                inline=inline,
                content_id=content_id,
                span=span,
            )
        )

    def _filename(self, part: Part, disposition_params: dict[str, str]) -> str | None:
        """The decoded file name (RFC 2231 or RFC 2047), or None."""
        for value in (disposition_params.get("filename"), part.params.get("name")):
            if value is None:
                continue
            text = decode_words(value, self.defects).strip()
            if text:
                return text
        return None


def _has_plain(content: Content | None) -> bool:
    return content is not None and any(
        kind == "plain" and text.strip() for kind, text in content.segments
    )


def _charset(part: Part) -> str | None:
    charset = part.params.get("charset")
    if not charset or not charset.isascii():
        return None
    return charset.lower()


def _disposition(part: Part) -> tuple[str | None, dict[str, str]]:
    raw = part.first("content-disposition")
    if raw is None:
        return None, {}
    value, params = split_params(raw)
    if value.startswith("attach"):
        return "attachment", params
    if value == "inline":
        return "inline", params
    return None, params


def _content_id(part: Part, defects: Defects) -> str | None:
    raw = part.first("content-id")
    if raw is None:
        return None
    value = clean_line(from_8bit(raw), defects).strip().strip("<>").strip()
    return value or None
