"""Header values: RFC 2047 decoding, one safe line each, message ids and dates.

Every decoded value leaves here free of CR, LF and other control characters
(RFC 5322 section 2.2: a field body is one logical line) and bounded in
length; the full header stays in the raw mail, which ingest keeps.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from helpdesk.mail.parse.charsets import (
    SURROGATE_RE,
    Defects,
    b64_lenient,
    decode_bytes,
    from_8bit,
)

__all__ = [
    "MAX_DISPLAY",
    "MAX_HEADER_VALUE",
    "MAX_REFERENCES",
    "Fields",
    "bound_ids",
    "clean_line",
    "decode_header",
    "decode_words",
    "display",
    "ids",
    "message_id",
    "parse_date",
    "read_fields",
]

# RFC 5322 section 2.1.1: 998 characters is the longest line a reader must
# take. Subjects and display names are kept that long for display (and for
# the acknowledgement's own folding); nobody reads further.
MAX_DISPLAY = 998
# Any other decoded header value: long enough for Authentication-Results and
# DKIM-Signature fields, short enough that a megabyte header costs nothing later.
MAX_HEADER_VALUE = 8192
# Except where a cut could change the meaning: a shortened Authentication-Results
# field could lose a "dkim=fail" behind a long comment. It is kept longer than
# helpdesk.mail.trust reads (20,000), so that trust sees it is too long and
# refuses it instead of reading a truncated value.
LONGER_FIELDS = {"authentication-results": 32_768}
# References: the first id (the thread's root) and the last 99 (the nearest
# parents). RFC 5322 section 3.6.4 asks writers to keep exactly those when
# they trim, so readers lose nothing a thread needs.
MAX_REFERENCES = 100
MAX_ID_LENGTH = 500

# Anything a reader could take for a line break; none may survive in a header.
_LINEBREAK_RE = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
# One test for "nothing to clean": the common case costs a single search.
_UNSAFE_RE = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]")
# RFC 2047 section 2: =?charset?encoding?encoded-text?=
ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?]*?)\?=")


def _decode_word_payload(encoding: str, text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    if encoding in "Bb":
        return b64_lenient(raw)
    # RFC 2047 section 4.2: "_" is a space, "=XX" an octet.
    return binascii.a2b_qp(raw, header=True)


def decode_words(text: str, defects: Defects) -> str:
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
            out.append(decode_bytes(bytes(data), charset, defects))
        run.clear()

    position = 0
    for match in ENCODED_WORD_RE.finditer(text):
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


def clean_line(text: str, defects: Defects) -> str:
    """One safe line: no line breaks, no control characters, no lone surrogates."""
    if not _UNSAFE_RE.search(text):
        return text.strip()
    if "\x00" in text:
        defects.add("nul-removed")
    text = _LINEBREAK_RE.sub(" ", text)
    text = _CONTROL_RE.sub("", text).replace("\t", " ")
    if SURROGATE_RE.search(text):
        text = SURROGATE_RE.sub("\ufffd", text)
    return text.strip()


def decode_header(prepared: str, defects: Defects) -> str:
    """An unfolded, 8-bit-decoded value to one safe decoded line."""
    return clean_line(decode_words(prepared, defects), defects)


def display(text: str, defects: Defects, what: str) -> str:
    """White space collapsed, and at most MAX_DISPLAY characters (a defect says so)."""
    text = " ".join(text.split())
    if len(text) > MAX_DISPLAY:
        defects.add(f"long-{what}")
        text = text[:MAX_DISPLAY].rstrip()
    return text


@dataclass(slots=True)
class Fields:
    """The top-level header fields, decoded, in order and by lower-cased name."""

    items: list[tuple[str, str]] = field(default_factory=list)  # (name, decoded value)
    # Unfolded, 8-bit decoded, encoded words still encoded, unbounded: what
    # address and id parsing read.
    prepared: dict[str, list[str]] = field(default_factory=dict)
    decoded: dict[str, list[str]] = field(default_factory=dict)

    def first(self, name: str) -> str | None:
        """The first decoded value of `name` (lower-case), or None."""
        found = self.decoded.get(name)
        return found[0] if found else None


def read_fields(raw_fields: list[tuple[str, str]], defects: Defects) -> Fields:
    """Decode every raw (name, value) pair; each value one safe, bounded line."""
    fields = Fields()
    for name, raw in raw_fields:
        prepared = from_8bit(raw)
        value = decode_words(prepared, defects) if "=?" in prepared else prepared
        value = clean_line(value, defects)
        key = name.lower()
        bound = LONGER_FIELDS.get(key, MAX_HEADER_VALUE)
        if len(value) > bound:
            defects.add("long-header")
            value = value[:bound]
        fields.items.append((name, value))
        fields.prepared.setdefault(key, []).append(prepared)
        fields.decoded.setdefault(key, []).append(value)
    return fields


# --------------------------------------------------------------------------
# Message ids

_ID_IN_BRACKETS_RE = re.compile(r"<([^<>]*)>")
_ID_SPLIT_RE = re.compile(r"[\s,;]+")
_ID_BAD_RE = re.compile(r"[\s<>\x00-\x1f\x7f]")


def _valid_id(value: str) -> str | None:
    value = "".join(value.split())
    if not value or len(value) > MAX_ID_LENGTH or _ID_BAD_RE.search(value):
        return None
    return value


def ids(value: str) -> tuple[str, ...]:
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


def bound_ids(found: tuple[str, ...], defects: Defects, what: str) -> tuple[str, ...]:
    """The first id and the last MAX_REFERENCES - 1 (RFC 5322 section 3.6.4)."""
    if len(found) <= MAX_REFERENCES:
        return found
    defects.add(f"long-{what}")
    return (found[0], *found[-(MAX_REFERENCES - 1) :])


def message_id(value: str) -> str | None:
    """The id of a Message-ID value, without brackets; None when there is none."""
    found = ids(value)
    if found:
        return found[0]
    bare = value.strip().strip("<>")
    return _valid_id(bare) if bare and " " not in bare.strip() else None


def parse_date(value: str | None, defects: Defects) -> datetime | None:
    """An RFC 5322 date as an aware UTC datetime; None (and a defect) when unreadable."""
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
