"""Turn the raw bytes of one mail into a `ParsedMessage`.

Promises of `parse(raw)`:

* it is pure: no I/O, no clock, no logging, no environment;
* it never raises, whatever the bytes: a part that cannot be read is skipped
  and named in `defects`; if even the MIME structure cannot be read, the
  headers alone are parsed; if not even that works, a message with a
  synthetic id, the size and a defect naming the failure comes back;
* every decoded header value is free of CR, LF and other control characters
  (RFC 5322 section 2.2: a field body is one logical line), every text is
  free of NUL, and attachment names are safe to use as file names anywhere.

Choice of parser: the standard library's `email.message_from_bytes` with the
`compat32` policy, walked by our own code, with our own header decoding.
mail-parser (`mailparser.parse_from_bytes`) wraps the same compat32 parser
but eagerly does much more than we need (every Received header, address and
date diagnostics, JSON-ready copies of everything): on a 4.5 KB
multipart/alternative mail it alone manages about 950 messages/s against
about 4,000/s for the bare compat32 parse and walk, and it would still leave
charset recovery, RFC 2231 names, inline images and message/rfc822 parts to
us. `email.policy.default` is correct but about five times slower. So the
compat32 tree is the one structure we build, and the decoding that compat32
gets wrong or leaves lossy (8-bit headers, unknown charsets, truncated
base64, RFC 2047 words split inside a multi-byte character) is done here.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import io
import quopri
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache

from helpdesk.mail.html import html_to_text
from helpdesk.mail.quoting import split_reply
from helpdesk.values import Address, AttachmentPart, ParsedMessage

__all__ = ["parse", "safe_filename"]

SYNTHETIC_ID_DOMAIN = "synthetic.helpdesk.invalid"
# Deeper MIME nesting than this is an attack, not a mail.
_MAX_DEPTH = 40
_MAX_FILENAME_BYTES = 150
_MAX_ID_LENGTH = 500
_MAX_ADDRESS_LENGTH = 320

# --------------------------------------------------------------------------
# Defects


class _Defects:
    """Defect names in the order first seen, each once."""

    def __init__(self) -> None:
        self._names: dict[str, None] = {}

    def add(self, name: str) -> None:
        self._names.setdefault(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def names(self) -> tuple[str, ...]:
        return tuple(self._names)


# Defects of the stdlib parser that mean the mail was cut off in transit.
_TRUNCATION_DEFECTS = ("CloseBoundaryNotFoundDefect", "InvalidBase64LengthDefect")

# --------------------------------------------------------------------------
# Charsets

# What real mail declares, mapped to the codecs to try in order. An empty
# tuple means "no usable declaration": guess UTF-8, then Windows-1252.
_GUESS: tuple[str, ...] = ()
_LATIN = ("utf_8", "cp1252")  # WHATWG: latin-1 labels mean windows-1252
_CHARSET_ALIASES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "646", "us"),
        _GUESS,
    ),
    **dict.fromkeys(
        (
            "x-unknown", "unknown-8bit", "unknown", "x-user-defined", "default",
            "8bit", "7bit", "binary", "none", "charset", "_iso-2022-jp$esc",
        ),
        _GUESS,
    ),
    **dict.fromkeys(
        (
            "iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "latin-1", "l1",
            "windows-1252", "cp1252", "x-cp1252", "cp-1252", "iso-8859-15", "latin-9",
        ),
        _LATIN,
    ),
    **dict.fromkeys(
        ("gb2312", "gbk", "x-gbk", "gb_2312-80", "euc-cn", "cp936", "chinese", "csgb2312"),
        ("gb18030",),
    ),
    **dict.fromkeys(
        (
            "ks_c_5601-1987", "ks_c_5601", "ksc5601", "ks_c_5601-1989", "euc-kr",
            "korean", "windows-949", "x-windows-949", "cp949",
        ),
        ("cp949",),
    ),
    **dict.fromkeys(
        ("iso-2022-jp", "csiso2022jp", "iso2022jp"),
        ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2"),
    ),
    **dict.fromkeys(
        ("shift_jis", "shift-jis", "sjis", "x-sjis", "ms_kanji", "windows-31j", "cp932"),
        ("cp932", "shift_jis_2004"),
    ),
    **dict.fromkeys(("big5", "big5-hkscs", "x-big5"), ("big5hkscs", "cp950")),
    **dict.fromkeys(("iso-8859-8-i", "iso-8859-8-e"), ("iso8859_8",)),
    **dict.fromkeys(("tis-620", "windows-874", "iso-8859-11"), ("cp874",)),
    **dict.fromkeys(("utf-8", "utf8", "x-utf-8", "utf-8-sig"), ("utf_8",)),
    "unicode-1-1-utf-7": ("utf_7",),
}  # fmt: skip
# Codecs that are not character sets a mail can use, or that interpret
# backslashes or punycode: never decode mail text with them.
_FORBIDDEN_CODECS = frozenset(
    {"unicode_escape", "raw_unicode_escape", "undefined", "idna", "punycode", "mbcs", "oem"}
)
_ASCII_PROBE = b"AZaz09 =?<>@.:;,-_\n"
_STATEFUL_CODECS = ("iso2022", "utf_7", "hz", "utf_16", "utf_32")


@lru_cache(maxsize=512)
def _codecs_for(charset: str | None) -> tuple[tuple[str, ...], bool]:
    """(codecs to try, whether the declaration was understood) for a declared charset."""
    if charset is None:
        return _GUESS, True
    label = charset.strip().strip("\"'").lower()
    if not label:
        return _GUESS, True
    if label in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[label], True
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError, TypeError):
        return _GUESS, False
    if name in _FORBIDDEN_CODECS:
        return _GUESS, False
    try:
        b"".decode(name)
    except (LookupError, UnicodeError, TypeError, ValueError):
        return _GUESS, False  # a bytes-to-bytes codec such as base64
    return (name,), True


@lru_cache(maxsize=64)
def _ascii_compatible(codec: str) -> bool:
    """Whether pure-ASCII bytes always decode to themselves.

    False for the stateful 7-bit encodings (ISO-2022-JP escapes, UTF-7, HZ),
    for UTF-16/32 and for EBCDIC code pages.
    """
    if codec.startswith(_STATEFUL_CODECS):
        return False
    try:
        return _ASCII_PROBE.decode(codec) == _ASCII_PROBE.decode("ascii")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return False


def _decode_bytes(data: bytes, charset: str | None, defects: _Defects) -> str:
    """Decode with the declared charset, else UTF-8, else Windows-1252; never raises."""
    candidates, understood = _codecs_for(charset)
    if not understood:
        defects.add("unknown-charset")
    if data.isascii() and all(_ascii_compatible(codec) for codec in candidates):
        return data.decode("ascii")
    for codec in candidates:
        try:
            return data.decode(codec)
        except (UnicodeError, LookupError, ValueError, TypeError):
            continue
    if candidates:
        defects.add("charset-mismatch")  # declared, but the bytes are not in that charset
    try:
        return data.decode("utf_8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


# --------------------------------------------------------------------------
# Headers

# RFC 5322 section 2.2.3: unfolding removes the CRLF in front of white space.
_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")
# Anything a reader could take for a line break; none may survive in a header.
_LINEBREAK_RE = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
# 8-bit header bytes, smuggled through the parser by surrogateescape.
_ESCAPED_BYTES_RE = re.compile("[\udc80-\udcff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# RFC 2047 section 2: =?charset?encoding?encoded-text?=
_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?]*?)\?=")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_NOISE = bytes(set(range(256)) - set(_B64_ALPHABET))


def _from_8bit(text: str) -> str:
    """Recover raw 8-bit header bytes as UTF-8, or as Windows-1252 when they are not."""
    if not _ESCAPED_BYTES_RE.search(text):
        return text
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return _SURROGATE_RE.sub("\ufffd", text)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _b64_lenient(data: bytes, defects: _Defects | None = None) -> bytes:
    """Base64 decode that survives missing padding, junk and truncation."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    clean = data.translate(None, _B64_NOISE)
    remainder = len(clean) % 4
    if remainder == 1:
        # One stray sextet cannot make a byte: the data was cut off.
        clean = clean[:-1]
        if defects is not None:
            defects.add("truncated")
    elif remainder:
        clean += b"=" * (4 - remainder)
    if defects is not None:
        defects.add("bad-base64")
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:
        return b""


def _decode_word_payload(encoding: str, text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    if encoding in "Bb":
        return _b64_lenient(raw)
    # RFC 2047 section 4.2: "_" is a space, "=XX" an octet.
    return binascii.a2b_qp(raw, header=True)


def _decode_words(text: str, defects: _Defects) -> str:
    """Decode RFC 2047 encoded words; adjacent words are joined (section 6.2).

    Adjacent words in the same charset are decoded together, because some
    senders split one multi-byte character across two words.
    """
    if "=?" not in text:
        return text
    out: list[str] = []
    run: list[tuple[str, bytearray]] = []

    def flush() -> None:
        for charset, data in run:
            out.append(_decode_bytes(bytes(data), charset, defects))
        run.clear()

    position = 0
    for match in _ENCODED_WORD_RE.finditer(text):
        between = text[position : match.start()]
        if between and (not run or between.strip()):
            flush()
            out.append(between)
        # RFC 2231 section 5 allows a language after the charset: utf-8*en.
        charset = match.group(1).split("*", 1)[0].lower()
        data = _decode_word_payload(match.group(2), match.group(3))
        if run and run[-1][0] == charset:
            run[-1][1].extend(data)
        else:
            run.append((charset, bytearray(data)))
        position = match.end()
    flush()
    out.append(text[position:])
    return "".join(out)


def _clean_line(text: str, defects: _Defects) -> str:
    """One safe line: no line breaks, no control characters, no lone surrogates."""
    if "\x00" in text:
        defects.add("nul-removed")
    text = _LINEBREAK_RE.sub(" ", text)
    text = _CONTROL_RE.sub("", text).replace("\t", " ")
    if _SURROGATE_RE.search(text):
        text = _SURROGATE_RE.sub("\ufffd", text)
    return text.strip()


def _prepare(raw: object) -> str:
    """A raw header value unfolded and with 8-bit bytes decoded; encoded words left."""
    if not isinstance(raw, str):
        raw = str(raw)
    return _from_8bit(_FOLD_RE.sub("", raw))


def _decode_header(raw: object, defects: _Defects) -> str:
    return _clean_line(_decode_words(_prepare(raw), defects), defects)


@dataclass(frozen=True)
class _Header:
    name: str
    prepared: str  # unfolded, 8-bit decoded, encoded words still encoded
    value: str  # fully decoded, one safe line


def _read_headers(msg: Message, defects: _Defects) -> list[_Header]:
    headers: list[_Header] = []
    for name, raw in msg.raw_items():
        clean_name = _clean_line(str(name), defects)
        prepared = _prepare(raw)
        value = _clean_line(_decode_words(prepared, defects), defects)
        headers.append(_Header(clean_name, prepared, value))
    return headers


def _all(headers: list[_Header], name: str) -> list[_Header]:
    return [header for header in headers if header.name.lower() == name]


# --------------------------------------------------------------------------
# Addresses, ids, date

_ADDR_RE = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+$")
_ID_IN_BRACKETS_RE = re.compile(r"<([^<>]*)>")
_ID_SPLIT_RE = re.compile(r"[\s,;]+")
_ID_BAD_RE = re.compile(r"[\s<>\x00-\x1f\x7f]")
_PLACEHOLDER_START = "\ue000"
_PLACEHOLDER_END = "\ue001"
_PLACEHOLDER_RE = re.compile(f"{_PLACEHOLDER_START}(\\d+){_PLACEHOLDER_END}")


def _addresses(values: list[str], header: str, defects: _Defects) -> tuple[Address, ...]:
    """Mailboxes of one address header; garbage entries are skipped and named."""
    if not values:
        return ()
    words: list[str] = []
    protected = [_protect_words(value, words) for value in values]
    try:
        pairs = getaddresses(protected)
    except Exception:  # noqa: BLE001 - the stdlib parser is not hardened against garbage
        defects.add(f"bad-address:{header}")
        return ()
    found: dict[str, Address] = {}
    bad = False
    for raw_name, raw_addr in pairs:
        addr = _clean_line(_restore_words(raw_addr, words), defects).lower()
        if not addr:
            continue
        if len(addr) > _MAX_ADDRESS_LENGTH or not _ADDR_RE.match(addr):
            bad = True
            continue
        name = _decode_words(_restore_words(raw_name, words), defects)
        name = " ".join(_clean_line(name, defects).split())
        name = name.strip("\"' ")
        if name.lower() == addr:
            name = ""
        found.setdefault(addr, Address(address=addr, name=name))
    if bad:
        defects.add(f"bad-address:{header}")
    return tuple(found.values())


def _protect_words(value: str, words: list[str]) -> str:
    """Hide encoded words from the address parser behind private-use placeholders.

    An encoded word may hide ":", "@" or "," (RFC 2047 section 5 forbids that
    in a phrase, hostile and broken senders do it anyway); the address parser
    must not see them, or "=?utf-8?q?Eve=0D=0ABcc:_x@example.org?=" is a group.
    """
    if "=?" not in value or _PLACEHOLDER_START in value:
        return value

    def hide(match: re.Match[str]) -> str:
        words.append(match.group(0))
        return f"{_PLACEHOLDER_START}{len(words) - 1}{_PLACEHOLDER_END}"

    return _ENCODED_WORD_RE.sub(hide, value)


def _restore_words(text: str, words: list[str]) -> str:
    if not words or _PLACEHOLDER_START not in text:
        return text

    def restore(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return words[index] if index < len(words) else ""

    return _PLACEHOLDER_RE.sub(restore, text)


def _valid_id(value: str) -> str | None:
    value = "".join(value.split())
    if not value or len(value) > _MAX_ID_LENGTH or _ID_BAD_RE.search(value):
        return None
    return value


def _ids(value: str) -> tuple[str, ...]:
    """Message ids in a header; tolerant of missing brackets, commas and junk."""
    candidates = _ID_IN_BRACKETS_RE.findall(value)
    if not candidates:
        candidates = [
            token.strip("<>\"'()[]") for token in _ID_SPLIT_RE.split(value) if "@" in token
        ]
    found: dict[str, None] = {}
    for candidate in candidates:
        valid = _valid_id(candidate)
        if valid:
            found.setdefault(valid, None)
    return tuple(found)


def _message_id(value: str) -> str | None:
    ids = _ids(value)
    if ids:
        return ids[0]
    bare = value.strip().strip("<>")
    return _valid_id(bare) if bare and " " not in bare.strip() else None


def _parse_date(value: str | None, defects: _Defects) -> datetime | None:
    if value is None or not value.strip():
        defects.add("no-date")
        return None
    try:
        parsed = parsedate_to_datetime(value)
        # RFC 5322 section 3.3: "-0000" is UTC without local-time knowledge,
        # which the stdlib returns as a naive datetime.
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
        defects.add("bad-date")
        return None


# --------------------------------------------------------------------------
# File names

_RESERVED_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{device}{n}" for device in ("COM", "LPT") for n in "0123456789¹²³"}
)
_SEPARATORS_RE = re.compile(r"[/\\]+")
_FORBIDDEN_CHARS_RE = re.compile(r'[<>:"|?*]')
_DOTS_RE = re.compile(r"\.{2,}")
_EXTENSIONS: dict[str, str] = {
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/ms-tnef": ".dat",
    "application/vnd.ms-tnef": ".dat",
    "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "application/json": ".json",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
    "application/pgp-signature": ".asc",
    "application/pgp-encrypted": ".asc",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/webp": ".webp",
    "image/svg+xml": ".svg",
    "image/tiff": ".tif",
    "image/heic": ".heic",
    "text/plain": ".txt",
    "text/html": ".html",
    "text/csv": ".csv",
    "text/calendar": ".ics",
    "text/x-vcard": ".vcf",
    "text/vcard": ".vcf",
    "text/rfc822-headers": ".txt",
    "message/rfc822": ".eml",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "audio/mpeg": ".mp3",
    "video/mp4": ".mp4",
}


def _extension_for(content_type: str) -> str:
    return _EXTENSIONS.get(content_type, ".bin")


def safe_filename(name: str | None, content_type: str = "", index: int = 1) -> str:
    """A file name that is safe on any file system; never empty.

    Keeps only the last path component, drops control and bidi-override
    characters, replaces characters Windows forbids, removes leading dots and
    spaces and any "..", defuses device names (CON, NUL, COM1, ...), and
    bounds the name to 150 bytes of UTF-8, keeping the extension. Without a
    usable name it is "attachment-<index><extension of content_type>".
    """
    cleaned = _clean_filename(name or "")
    return cleaned or f"attachment-{index}{_extension_for(content_type)}"


def _clean_filename(name: str) -> str:
    name = unicodedata.normalize("NFC", name)  # Apple Mail sends decomposed names
    # Cc controls, Cf format characters (U+202E right-to-left override turns
    # "gpj.exe" into "exe.jpg" on screen), Cs surrogates; line separators too.
    name = "".join(
        " " if unicodedata.category(ch) in ("Zl", "Zp") else ch
        for ch in name
        if unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
    )
    parts = [part for part in _SEPARATORS_RE.split(name) if part.strip(" .")]
    name = parts[-1] if parts else ""
    name = _FORBIDDEN_CHARS_RE.sub("_", name)
    name = " ".join(name.split())
    name = _DOTS_RE.sub(".", name)
    # Windows drops trailing dots and spaces, so "evil.exe." is "evil.exe".
    name = name.strip(". ")
    if name and name.split(".", 1)[0].strip().upper() in _RESERVED_NAMES:
        name = f"_{name}"
    return _truncate_filename(name, _MAX_FILENAME_BYTES)


def _truncate_filename(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    suffix = f".{ext}" if dot and stem and 0 < len(ext) <= 16 and " " not in ext else ""
    if not suffix:
        stem = name
    budget = limit - len(suffix.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore").rstrip(". ")
    return f"{cut or 'attachment'}{suffix}"


# --------------------------------------------------------------------------
# Bodies

_CTYPE_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
_META_CHARSET_RE = re.compile(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)
_NEWLINES_RE = re.compile(r"\r\n?")
_GENERATOR_POLICY = compat32.clone(linesep="\r\n", max_line_length=None)
_REPAIRED_HEADERS = ("content-type", "content-disposition", "content-transfer-encoding")


def _clean_text(text: str, defects: _Defects) -> str:
    """Body text with \\n line ends, no NUL (PostgreSQL cannot store it), no lone surrogates."""
    if "\r" in text:
        text = _NEWLINES_RE.sub("\n", text)
    if "\x00" in text:
        defects.add("nul-removed")
        text = text.replace("\x00", "")
    if "\ufeff" in text:
        # A byte order mark inside text is noise (iOS puts one in quotes).
        text = text.replace("\ufeff", "")
    if _SURROGATE_RE.search(text):
        text = _SURROGATE_RE.sub("\ufffd", text)
    return text


def _unflow(text: str, delsp: bool) -> str:
    """Undo RFC 3676 format=flowed: join soft-broken lines of equal quote depth."""
    out: list[str] = []
    paragraph: str | None = None
    paragraph_depth = 0

    def emit(depth: int, content: str) -> None:
        out.append(f"{'>' * depth} {content}".rstrip() if depth else content)

    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):  # section 4.4 space-stuffing
            content = content[1:]
        if paragraph is not None and depth != paragraph_depth:
            emit(paragraph_depth, paragraph)
            paragraph = None
        # Section 4.3: the signature separator "-- " is never flowed.
        flowed = content.endswith(" ") and content.rstrip() != "--"
        if flowed and delsp:
            content = content[:-1]
        paragraph = content if paragraph is None else paragraph + content
        paragraph_depth = depth
        if not flowed:
            emit(depth, paragraph)
            paragraph = None
    if paragraph is not None:
        emit(paragraph_depth, paragraph)
    return "\n".join(out)


def _flatten(msg: Message) -> bytes:
    buffer = io.BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=_GENERATOR_POLICY).flatten(msg)
    return buffer.getvalue()


@dataclass
class _Content:
    """What a walk of (part of) the MIME tree found."""

    segments: list[tuple[str, str]] = field(default_factory=list)  # ("plain"|"html", text)
    htmls: list[str] = field(default_factory=list)
    attachments: list[AttachmentPart] = field(default_factory=list)


class _Walker:
    """Walks the compat32 tree collecting body text, HTML and attachments."""

    def __init__(self, defects: _Defects) -> None:
        self.defects = defects
        self.attachment_count = 0

    def walk(self, part: Message, depth: int, out: _Content) -> None:
        if depth > _MAX_DEPTH:
            self.defects.add("nesting-too-deep")
            return
        try:
            self._walk_part(part, depth, out)
        except Exception as exc:  # noqa: BLE001 - one unreadable part must not lose the rest
            self.defects.add(f"unreadable-part:{type(exc).__name__}")
        for defect in part.defects:
            self.defects.add(type(defect).__name__)

    def _walk_part(self, part: Message, depth: int, out: _Content) -> None:
        _repair_headers(part)
        ctype = _content_type(part)
        if ctype == "message/rfc822":
            self._forwarded(part, out)
        elif part.is_multipart():
            payload = part.get_payload()
            children = [c for c in payload if isinstance(c, Message)] if payload else []
            if ctype.startswith("message/"):
                self._message_part(part, ctype, out)
            elif ctype == "multipart/alternative":
                self._alternative(children, depth, out)
            else:
                for child in children:
                    self.walk(child, depth + 1, out)
        else:
            self._leaf(part, ctype, out)

    def _alternative(self, children: list[Message], depth: int, out: _Content) -> None:
        """RFC 2046 section 5.1.4: the last alternative is the richest; take the
        last one with plain text for `text` and the last one with HTML for `html`."""
        text_choice: _Content | None = None
        html_choice: _Content | None = None
        for child in children:
            found = _Content(attachments=out.attachments)
            self.walk(child, depth + 1, found)
            if found.segments and (_has_plain(found) or not _has_plain(text_choice)):
                text_choice = found
            if found.htmls:
                html_choice = found
        if text_choice is not None:
            out.segments.extend(text_choice.segments)
        if html_choice is not None:
            out.htmls.extend(html_choice.htmls)

    def _leaf(self, part: Message, ctype: str, out: _Content) -> None:
        disposition = _disposition(part)
        filename = self._filename(part)
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
        self._attach(out, part, _payload(part, self.defects), ctype, filename, disposition)

    def _text(self, part: Message, ctype: str) -> str:
        data = _payload(part, self.defects)
        charset = _content_charset(part)
        if charset is None and ctype == "text/html":
            sniffed = _META_CHARSET_RE.search(data[:4096])
            charset = sniffed.group(1).decode("ascii") if sniffed else None
        text = _clean_text(_decode_bytes(data, charset, self.defects), self.defects)
        if ctype == "text/plain" and _param(part, "format") == "flowed":
            text = _unflow(text, delsp=_param(part, "delsp") == "yes")
        return text

    def _forwarded(self, part: Message, out: _Content) -> None:
        """A message/rfc822 part is kept whole as "<subject>.eml"."""
        payload = part.get_payload()
        subject = ""
        encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            inner = payload[0]
            data = _flatten(inner)
            if encoding in ("base64", "quoted-printable"):
                # RFC 2046 §5.2.1 forbids encoding a message/rfc822 part, but
                # mailers (Python's own add_attachment among them) do it; the
                # parser then sees the encoded text as the forwarded mail.
                data = (_b64_lenient(data, self.defects) if encoding == "base64"
                        else quopri.decodestring(data))
                inner = message_from_bytes(data, policy=compat32)
            subject_raw = _raw_header(inner, "subject")
            if subject_raw is not None:
                subject = " ".join(_decode_header(subject_raw, self.defects).split())
        else:
            data = _payload(part, self.defects)
        # The subject is a title, not a path: "Invoice 2024/09" keeps both parts.
        name = f"{_SEPARATORS_RE.sub('_', subject) or 'forwarded'}.eml"
        self._attach(out, part, data, "message/rfc822", name, _disposition(part))

    def _message_part(self, part: Message, ctype: str, out: _Content) -> None:
        """message/delivery-status and friends: their body, as a text attachment."""
        flat = _flatten(part)
        _, _, body = flat.partition(b"\r\n\r\n")
        name = self._filename(part) or f"{ctype.split('/', 1)[1]}.txt"
        self._attach(out, part, body, ctype, name, _disposition(part))

    def _attach(
        self,
        out: _Content,
        part: Message,
        data: bytes,
        ctype: str,
        filename: str | None,
        disposition: str | None,
    ) -> None:
        self.attachment_count += 1
        content_id = _content_id(part, self.defects)
        inline = disposition == "inline" or (disposition is None and content_id is not None)
        out.attachments.append(
            AttachmentPart(
                filename=safe_filename(filename, ctype, self.attachment_count),
                content_type=ctype,
                content=data,
                sha256=hashlib.sha256(data).hexdigest(),
                inline=inline,
                content_id=content_id,
            )
        )

    def _filename(self, part: Message) -> str | None:
        """The decoded file name (RFC 2231 or RFC 2047), or None."""
        for header, param in (("content-disposition", "filename"), ("content-type", "name")):
            try:
                value = part.get_param(param, None, header)
            except Exception:  # noqa: BLE001 - compat32 parameter parsing is not hardened
                self.defects.add("bad-mime-parameters")
                continue
            if value is None:
                continue
            text = _rfc2231_value(value, self.defects) if isinstance(value, tuple) else str(value)
            text = _decode_words(_from_8bit(text), self.defects).strip()
            if text:
                return text
        return None


def _has_plain(content: _Content | None) -> bool:
    return content is not None and any(
        kind == "plain" and text.strip() for kind, text in content.segments
    )


def _rfc2231_value(value: tuple[str | None, str | None, str], defects: _Defects) -> str:
    """RFC 2231 section 4: charset'language'percent-decoded-octets."""
    charset, _, text = value
    try:
        data = text.encode("latin-1", "surrogateescape")
    except UnicodeEncodeError:
        return text
    return _decode_bytes(data, charset or None, defects)


def _raw_header(part: Message, name: str) -> str | None:
    for key, value in part.raw_items():
        if key.lower() == name:
            return str(value)
    return None


def _repair_headers(part: Message) -> None:
    """Make the MIME headers compat32 reads safe for its parameter parsing.

    compat32 turns 8-bit header bytes into U+FFFD when it reads parameters,
    and compares Content-Transfer-Encoding without stripping white space.
    """
    for name in _REPAIRED_HEADERS:
        raw = _raw_header(part, name)
        if raw is None:
            continue
        fixed = _FOLD_RE.sub("", _from_8bit(raw))
        if name == "content-transfer-encoding":
            fixed = fixed.split(";", 1)[0].strip().lower()
        if fixed != raw:
            part.replace_header(name, fixed)


def _content_type(part: Message) -> str:
    ctype = part.get_content_type()
    return ctype if _CTYPE_RE.match(ctype) else "application/octet-stream"


def _content_charset(part: Message) -> str | None:
    try:
        charset = part.get_content_charset()
    except Exception:  # noqa: BLE001 - compat32 parameter parsing is not hardened
        return None
    return str(charset) if charset else None


def _param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
    except Exception:  # noqa: BLE001 - compat32 parameter parsing is not hardened
        return ""
    return value.strip().lower() if isinstance(value, str) else ""


def _disposition(part: Message) -> str | None:
    raw = _raw_header(part, "content-disposition")
    if raw is None:
        return None
    value = raw.split(";", 1)[0].strip().lower()
    if value.startswith("attach"):
        return "attachment"
    if value == "inline":
        return "inline"
    return None


def _content_id(part: Message, defects: _Defects) -> str | None:
    raw = _raw_header(part, "content-id")
    if raw is None:
        return None
    value = _clean_line(_prepare(raw), defects).strip().strip("<>").strip()
    return value or None


def _payload(part: Message, defects: _Defects) -> bytes:
    """The decoded bytes of a leaf part; base64 is decoded leniently."""
    cte = (_raw_header(part, "content-transfer-encoding") or "").strip().lower()
    if cte == "base64":
        payload = part.get_payload()
        if isinstance(payload, str):
            return _b64_lenient(payload.encode("ascii", "ignore"), defects)
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


# --------------------------------------------------------------------------
# Assembly


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


def _first(headers: list[_Header], name: str) -> _Header | None:
    found = _all(headers, name)
    return found[0] if found else None


def _assemble(
    raw: bytes, headers: list[_Header], content: _Content, defects: _Defects
) -> ParsedMessage:
    if not headers:
        defects.add("no-headers")

    def addresses(name: str) -> tuple[Address, ...]:
        return _addresses([h.prepared for h in _all(headers, name)], name, defects)

    senders = addresses("from")
    from_ = senders[0] if senders else None
    if from_ is None:
        defects.add("no-from")
    subject_header = _first(headers, "subject")
    subject = " ".join(subject_header.value.split()) if subject_header else ""
    date_header = _first(headers, "date")
    date = _parse_date(date_header.value if date_header else None, defects)

    id_headers = _all(headers, "message-id")
    if len(id_headers) > 1:
        defects.add("duplicate-message-id")
    original_id = id_headers[0].value if id_headers else ""
    message_id = _message_id(original_id)

    def ids(name: str) -> tuple[str, ...]:
        found: dict[str, None] = {}
        for header in _all(headers, name):
            found.update(dict.fromkeys(_ids(header.value)))
        return tuple(found)

    text = _join_text(content.segments)
    html = "\n".join(content.htmls) if content.htmls else None
    new_text, quoted_text = split_reply(text)
    for name in _TRUNCATION_DEFECTS:
        if name in defects:
            defects.add("truncated")
    content_hash = _content_hash(
        [
            ("from", from_.address if from_ else ""),
            ("subject", subject),
            ("date", date_header.value if date_header else ""),
            ("message-id", original_id),
            ("text", text),
            ("html", html if html is not None else ""),
        ],
        content.attachments,
    )
    synthetic = message_id is None
    if message_id is None:
        defects.add("no-message-id" if not original_id else "bad-message-id")
        message_id = f"{content_hash[:40]}@{SYNTHETIC_ID_DOMAIN}"
    return ParsedMessage(
        message_id=message_id,
        message_id_synthetic=synthetic,
        subject=subject,
        from_=from_,
        to=addresses("to"),
        cc=addresses("cc"),
        reply_to=addresses("reply-to"),
        date=date,
        in_reply_to=ids("in-reply-to"),
        references=ids("references"),
        headers=tuple((h.name, h.value) for h in headers),
        text=text,
        new_text=new_text,
        quoted_text=quoted_text,
        html=html,
        attachments=tuple(content.attachments),
        defects=defects.names(),
        content_hash=content_hash,
        size=len(raw),
    )


def parse(raw: bytes) -> ParsedMessage:
    """Parse one raw mail; never raises (see the module docstring)."""
    try:
        data = bytes(raw)
    except Exception as exc:  # noqa: BLE001 - the contract is to never raise
        return _hopeless(b"", exc)
    try:
        defects = _Defects()
        msg = message_from_bytes(data, policy=compat32)
        headers = _read_headers(msg, defects)
        content = _Content()
        _Walker(defects).walk(msg, 0, content)
        return _assemble(data, headers, content, defects)
    except Exception as exc:  # noqa: BLE001 - e.g. RecursionError on absurd nesting
        return _headers_only(data, exc)


def _headers_only(data: bytes, exc: BaseException) -> ParsedMessage:
    """When the MIME structure cannot be read: the headers, and no body."""
    try:
        defects = _Defects()
        defects.add(f"parse-error:{type(exc).__name__}")
        msg = BytesHeaderParser(policy=compat32).parsebytes(data)
        headers = _read_headers(msg, defects)
        return _assemble(data, headers, _Content(), defects)
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
