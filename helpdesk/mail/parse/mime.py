"""The MIME structure of a mail, read straight from its bytes.

Why not the standard library's parser: `email.message_from_bytes` (compat32)
was two thirds of `parse()`'s time. It splits the whole mail into lines,
pushes every line through a chain of predicates, compiles a new regular
expression for every boundary (each mail has its own), and holds the mail
about eight times over as Python strings. Here a part is a pair of offsets
into the raw bytes: headers are read line by line (they are small), a
multipart body is cut at its boundaries with `bytes.find`, and a leaf's
payload is decoded from a memoryview of the raw mail, so a 25 MB attachment
is never copied before it is decoded.

The recovery of broken structure follows the standard library's feedparser,
whose defect names are kept (they are stored with each message): a header
block that ends without a blank line (MissingHeaderBodySeparatorDefect), a
multipart without a boundary parameter (NoBoundaryInMultipartDefect) or
whose boundary never appears (StartBoundaryNotFoundDefect) is one text part,
a multipart cut off before its close boundary keeps every part it has
(CloseBoundaryNotFoundDefect), RFC 2046 section 5.1.1: the line break before
a boundary belongs to the boundary. Every step is linear in the input.
"""

from __future__ import annotations

import binascii
import re
import urllib.parse
from dataclasses import dataclass, field

from helpdesk.mail.parse.charsets import Defects, b64_lenient, decode_bytes, from_8bit

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "Part",
    "decode_payload",
    "decode_region",
    "line_ends",
    "lone_cr",
    "parse_tree",
    "read_headers",
]

# Deeper MIME nesting than this is an attack, not a mail.
MAX_DEPTH = 40
# No mail a person sends has this many parts; the raw mail keeps the rest.
MAX_PARTS = 10_000
# Header fields kept per part; the raw mail keeps the rest.
MAX_FIELDS = 1_000

# A field name (printable, no colon, no space) and its colon; RFC 5322
# section 4.5.3 (obs-optional) allows white space before the colon.
_FIELD_RE = re.compile(r"([\x21-\x39\x3b-\x7e]*)[ \t]*:")
_OBS_FROM_RE = re.compile(r"From[ \t]+:")
# One whole field: name, colon, first line, continuation lines. The repeats
# are possessive (nothing after them could match if they gave a line back):
# for a plain repeated group the regex engine keeps a backtracking frame per
# repetition, and a field folded over a million lines cost 190 MB.
_WHOLE_FIELD_RE = re.compile(
    r"([\x21-\x39\x3b-\x7e]+)[ \t]*:[ \t]*([^\n]*+(?:\n[ \t][^\n]*+)*+)(?:\n|\Z)"
)
_BLANK_LINE_RE = re.compile(rb"\n\r?\n")
_CTYPE_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
# One parameter: up to the next ";" that is not inside a quoted string.
# Possessive, for the reason given at _WHOLE_FIELD_RE (a 1 MB parameter cost 117 MB).
_SEGMENT_RE = re.compile(r'(?:[^;"\\]++|\\.?|"(?:[^"\\]++|\\.?)*+"?)*+', re.S)
_CONTINUATION_RE = re.compile(r"^(.*?)\*(\d{1,3})$")


@dataclass(slots=True)
class Part:
    """One MIME entity: its header fields and where its body lies in the raw mail."""

    fields: list[tuple[str, str]]  # (name, value unfolded; 8-bit bytes as surrogates)
    start: int
    end: int
    content_type: str = "text/plain"
    params: dict[str, str] = field(default_factory=dict)
    children: list[Part] | None = None  # a multipart whose boundary was found
    defects: list[str] = field(default_factory=list)
    too_deep: bool = False

    def first(self, name: str) -> str | None:
        """The first value of field `name` (lower-case), or None."""
        for key, value in self.fields:
            if key.lower() == name:
                return value
        return None


@dataclass(slots=True)
class _Budget:
    parts: int = 0


def read_headers(
    buf: bytes, start: int, end: int, defects: list[str]
) -> tuple[list[tuple[str, str]], int]:
    """The header fields of the entity at buf[start:end] and the offset of its body."""
    if buf.startswith(b"\n", start, end):
        return [], start + 1
    if buf.startswith(b"\r\n", start, end):
        return [], start + 2
    match = _BLANK_LINE_RE.search(buf, start, end)
    block_end, body_start = (match.start(), match.end()) if match else (end, end)
    # One character per byte: string offsets are byte offsets.
    text = buf[start:block_end].decode("ascii", "surrogateescape")
    fast = _well_formed(text)
    if fast is not None:
        return _bounded(fast, defects), body_start
    fields, stop = _read_lines(text, defects)
    return _bounded(fields, defects), body_start if stop is None else start + stop


def _read_lines(text: str, defects: list[str]) -> tuple[list[tuple[str, str]], int | None]:
    """A header block that needs reading line by line: its fields, and where the body
    begins when a line that is no field ends the block early (else None).

    The lines are visited one at a time and a field's continuation lines are
    kept as a range of `text`, unfolded once: a block of a million short lines
    costs no list of a million strings.
    """
    fields: list[tuple[str, str]] = []
    field: _Field | None = None
    position, length = 0, len(text)
    while position < length:
        line_start = position
        newline = text.find("\n", position)
        position = newline + 1 if newline >= 0 else length
        line = _strip_cr(text[line_start : position - 1 if newline >= 0 else length])
        if not line:
            break  # the end of a block cut off by the end of the part
        if line[0] in " \t":
            if field is not None and field.name:
                field.extend(line_start, position)
            elif "FirstHeaderLineIsContinuationDefect" not in defects[-1:]:
                defects.append("FirstHeaderLineIsContinuationDefect")
            continue
        if line.startswith("From ") and not _OBS_FROM_RE.match(line):
            if line_start > 0:
                defects.append("MisplacedEnvelopeHeaderDefect")
                if field is not None:
                    field.close(text)  # continuation lines may follow it: not one range
            continue  # at the top: the mbox envelope line (see envelope_line)
        field_match = _FIELD_RE.match(line)
        if field_match is None:
            # RFC 5322 section 2.2.3: unfolding comes first, so "From\r\n : x"
            # is a field whose name was folded away from its colon.
            following = _after_continuations(text, position)
            if following > position:
                line += _unfold(text[position : following - 1])
                field_match = _FIELD_RE.match(line)
            if field_match is None:
                defects.append("MissingHeaderBodySeparatorDefect")
                _flush(fields, field, text)
                return fields, line_start
            position = following
        _flush(fields, field, text)
        field = _Field(field_match.group(1), line[field_match.end() :].lstrip(" \t"))
        if not field.name:
            defects.append("InvalidHeaderDefect")  # ": value" has no name
    _flush(fields, field, text)
    return fields, None


@dataclass(slots=True)
class _Field:
    """A field being read: its name, the rest of its first line, and the range of
    `text` its continuation lines take (they follow the first line, one after another)."""

    name: str
    first: str
    more_start: int = -1
    more_end: int = -1

    def extend(self, start: int, end: int) -> None:
        if self.more_start < 0:
            self.more_start = start
        self.more_end = end

    def close(self, text: str) -> None:
        """Take the continuation lines so far into `first`."""
        if self.more_start >= 0:
            self.first += _unfold(text[self.more_start : self.more_end])
            self.more_start = self.more_end = -1

    def value(self, text: str) -> str:
        self.close(text)
        return self.first


def _after_continuations(text: str, position: int) -> int:
    """The offset after the run of continuation lines that starts at `position`."""
    length = len(text)
    while position < length and text[position] in " \t":
        newline = text.find("\n", position)
        position = newline + 1 if newline >= 0 else length + 1
    return position


def _unfold(text: str) -> str:
    """RFC 5322 section 2.2.3: the line breaks removed, and one CR before each, as
    at the end of a last line that has no line break."""
    if text.endswith("\r"):
        text = text[:-1]
    if "\n" in text:
        text = text.replace("\r\n", "\n").replace("\n", "")
    return text


def _well_formed(text: str) -> list[tuple[str, str]] | None:
    """The fields of a header block that is nothing but fields, in one regex pass;
    None when anything needs the line-by-line reading (junk, an mbox line)."""
    if text.startswith(("From ", " ", "\t")):
        return None
    fields: list[tuple[str, str]] = []
    position = 0
    for match in _WHOLE_FIELD_RE.finditer(text):
        if match.start() != position:
            return None
        position = match.end()
        if len(fields) > MAX_FIELDS:
            continue  # one more than kept: _bounded names the defect
        value = match.group(2)
        if "\n" in value:  # RFC 5322 section 2.2.3: unfold
            value = value.replace("\r\n", "\n").replace("\n", "")
        fields.append((match.group(1), value[:-1] if value.endswith("\r") else value))
    return fields if position == len(text) else None


def _strip_cr(line: str) -> str:
    return line[:-1] if line.endswith("\r") else line


def _bounded(fields: list[tuple[str, str]], defects: list[str]) -> list[tuple[str, str]]:
    if len(fields) > MAX_FIELDS:
        defects.append("too-many-headers")
        del fields[MAX_FIELDS:]
    return fields


def _flush(fields: list[tuple[str, str]], field: _Field | None, text: str) -> None:
    if field is None or not field.name or len(fields) > MAX_FIELDS:
        return  # one more than kept: _bounded names the defect
    fields.append((field.name, field.value(text)))


def line_ends(data: bytes) -> bytes:
    """Old Mac mail ends lines with a lone CR: read it as LF (body bytes of other mail are
    left alone, a CR inside a binary part is data)."""
    if lone_cr(data):
        return data.replace(b"\r", b"\n")
    return data


def lone_cr(data: bytes) -> bool:
    """Whether `data` is old Mac mail, whose lines end with a lone CR (see `line_ends`)."""
    head = data[:4096]
    return b"\r" in head and b"\n" not in head


def envelope_line(buf: bytes) -> str | None:
    """The mbox "From sender date" line at the very start, without "From ", or None."""
    if not buf.startswith(b"From "):
        return None
    end = buf.find(b"\n", 0, 2048)
    line = buf[5 : end if end >= 0 else 2048]
    return line.decode("ascii", "surrogateescape").strip()


# --------------------------------------------------------------------------
# Content-Type and friends


def split_params(value: str, *, raw_bytes: bool = False) -> tuple[str, dict[str, str]]:
    """The lower-cased first token of a MIME header and its parameters.

    Quoted strings may hold ";"; RFC 2231 continuations and charset'lang'
    prefixes are decoded; an extended parameter (name*=) wins over a plain
    one of the same name, which senders add only as an ASCII fallback. With
    `raw_bytes`, 8-bit bytes stay as surrogates (a boundary is bytes, not text).
    """
    if not raw_bytes:
        value = from_8bit(value)
    head, _, rest = value.partition(";")
    plain: dict[str, str] = {}
    extended: dict[str, list[tuple[int, str, bool]]] = {}
    position = 0
    while position < len(rest):
        match = _SEGMENT_RE.match(rest, position)
        segment = match.group(0) if match else ""
        position += len(segment) + 1
        key, eq, raw = segment.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            continue
        raw = _unquote(raw.strip())
        encoded = key.endswith("*")
        base = key[:-1] if encoded else key
        continued = _CONTINUATION_RE.match(base)
        if continued:
            extended.setdefault(continued.group(1), []).append(
                (int(continued.group(2)), raw, encoded)
            )
        elif encoded:
            extended.setdefault(base, []).append((0, raw, True))
        else:
            plain.setdefault(key, raw)
    for key, pieces in extended.items():
        plain[key] = _rfc2231(pieces)
    return head.strip().lower(), plain


def _unquote(value: str) -> str:
    # As email.utils.unquote: only \\ and \" are escapes, so that a quoted
    # Windows path keeps its backslashes for safe_filename to cut at.
    if len(value) > 1 and value[0] == value[-1] == '"':
        return value[1:-1].replace("\\\\", "\\").replace('\\"', '"')
    if value.startswith('"'):
        return value[1:]  # an unterminated quote
    if len(value) > 1 and value[0] == "<" and value[-1] == ">":
        return value[1:-1]
    return value


def _rfc2231(pieces: list[tuple[int, str, bool]]) -> str:
    """RFC 2231 sections 3 and 4: join continuations, percent-decode, apply the charset."""
    pieces.sort(key=lambda piece: piece[0])
    charset: str | None = None
    data = bytearray()
    for index, (_, text, encoded) in enumerate(pieces):
        if not encoded:
            data += text.encode("utf-8", "surrogateescape")
            continue
        if index == 0 and text.count("'") >= 2:
            charset, _, text = text.split("'", 2)
        data += urllib.parse.unquote_to_bytes(text.encode("utf-8", "surrogateescape"))
    return decode_bytes(bytes(data), charset or None, Defects())


def _content_type(part: Part, default: str) -> None:
    raw = part.first("content-type")
    if raw is None:
        part.content_type = default
        return
    ctype, part.params = split_params(raw)
    if ctype.count("/") != 1:
        ctype = "text/plain"  # as compat32: a type without one slash is plain text
    elif not _CTYPE_RE.match(ctype):
        ctype = "application/octet-stream"
    part.content_type = ctype


def transfer_encoding(part: Part) -> str:
    """The Content-Transfer-Encoding token, lower-cased; "" when absent."""
    raw = part.first("content-transfer-encoding")
    return from_8bit(raw).split(";", 1)[0].strip().lower() if raw else ""


# --------------------------------------------------------------------------
# The tree


def parse_tree(buf: bytes) -> Part:
    """The MIME tree of a whole mail; multiparts are split, everything else is a leaf."""
    defects: list[str] = []
    fields, body = read_headers(buf, 0, len(buf), defects)
    root = Part(fields, body, len(buf), defects=defects)
    _content_type(root, "text/plain")
    _split(buf, root, 0, _Budget())
    if root.content_type.startswith("multipart/") and root.children is None and not root.too_deep:
        root.defects.append("MultipartInvariantViolationDefect")  # a multipart that is not one
    return root


def _part(buf: bytes, start: int, end: int, default: str, depth: int, budget: _Budget) -> Part:
    defects: list[str] = []
    fields, body = read_headers(buf, start, end, defects)
    part = Part(fields, body, end, defects=defects)
    _content_type(part, default)
    _split(buf, part, depth, budget)
    return part


def _split(buf: bytes, part: Part, depth: int, budget: _Budget) -> None:
    if not part.content_type.startswith("multipart/"):
        return
    if depth >= MAX_DEPTH:
        part.too_deep = True
        return
    raw_boundary = split_params(part.first("content-type") or "", raw_bytes=True)[1]
    boundary = raw_boundary.get("boundary", "").rstrip()
    if not boundary:
        part.defects.append("NoBoundaryInMultipartDefect")
        return
    if transfer_encoding(part) not in ("", "7bit", "8bit", "binary"):
        part.defects.append("InvalidMultipartContentTransferEncodingDefect")
    regions, closed = _regions(buf, part.start, part.end, boundary)
    if regions is None:
        part.defects.append("StartBoundaryNotFoundDefect")
        return
    if not closed:
        part.defects.append("CloseBoundaryNotFoundDefect")
    default = "message/rfc822" if part.content_type == "multipart/digest" else "text/plain"
    children: list[Part] = []
    for start, end in regions:
        if budget.parts >= MAX_PARTS:
            part.defects.append("too-many-parts")
            break
        budget.parts += 1
        children.append(_part(buf, start, end, default, depth + 1, budget))
    part.children = children


def _regions(
    buf: bytes, start: int, end: int, boundary: str
) -> tuple[list[tuple[int, int]] | None, bool]:
    """The body regions between boundary lines, and whether the close boundary came.

    None when no boundary line starts a part at all.
    """
    delimiter = b"--" + boundary.encode("utf-8", "surrogateescape")
    regions: list[tuple[int, int]] = []
    part_start: int | None = None
    position = start
    while True:
        found = buf.find(delimiter, position, end)
        if found < 0:
            break
        position = found + len(delimiter)
        if found > start and buf[found - 1] not in (0x0A, 0x0D):
            continue  # not at the start of a line
        after = position
        close = buf.startswith(b"--", after, end)
        if close:
            after += 2
        while after < end and buf[after] in (0x20, 0x09):
            after += 1
        if after < end and buf[after] not in (0x0A, 0x0D):
            continue  # "--boundaryX": another boundary, or text
        line_end = after + (2 if buf.startswith(b"\r\n", after, end) else 1 if after < end else 0)
        if part_start is not None and part_start < found:
            regions.append((part_start, _before_line_break(buf, part_start, found)))
        if close:
            return (regions if part_start is not None else None), True
        part_start = line_end
        position = line_end
    if part_start is None:
        return None, False
    if part_start < end or not regions:
        regions.append((part_start, end))
    return regions, False


def _before_line_break(buf: bytes, start: int, found: int) -> int:
    """RFC 2046 section 5.1.1: the CRLF before a boundary is part of the boundary."""
    if found - 2 >= start and buf[found - 2 : found] == b"\r\n":
        return found - 2
    if found - 1 >= start and buf[found - 1] in (0x0A, 0x0D):
        return found - 1
    return found


# --------------------------------------------------------------------------
# Payloads

_UU_BEGIN_RE = re.compile(rb"^begin [0-7]+ ", re.M)


def decode_payload(buf: bytes, part: Part, defects: Defects) -> bytes:
    """The decoded bytes of a leaf: base64 and quoted-printable leniently, uuencode too."""
    return decode_region(buf, part.start, part.end, transfer_encoding(part), defects)


def decode_region(buf: bytes, start: int, end: int, encoding: str, defects: Defects) -> bytes:
    """`decode_payload` of the leaf body at buf[start:end] with this transfer encoding."""
    view = memoryview(buf)[start:end]
    if encoding == "base64":
        return b64_lenient(view, defects)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(view)
    if encoding in ("x-uuencode", "uuencode", "uue", "x-uue"):
        return _uudecode(bytes(view), defects)
    return bytes(view)


def _uudecode(data: bytes, defects: Defects) -> bytes:
    begin = _UU_BEGIN_RE.search(data)
    if begin is None:
        return data
    out = bytearray()
    for line in data[begin.end() :].splitlines()[1:]:
        if line.strip() in (b"end", b"`", b""):
            if line.strip() == b"end":
                break
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # Some encoders pad lines short; decode what the length byte promises.
            try:
                count = ((line[0] - 32) & 63) * 4 // 3
                out += binascii.a2b_uu(line[:count + 1])
            except (binascii.Error, IndexError):
                defects.add("bad-uuencode")
    return bytes(out)
