"""Bytes to text for mail: declared charsets, their aliases, and what to do when they lie.

Also the defect collector every stage of `parse()` writes into, and the
lenient base64 decoder that both RFC 2047 words and MIME bodies need.
"""

from __future__ import annotations

import binascii
import codecs
import re
from functools import lru_cache

__all__ = ["Defects", "b64_lenient", "decode_bytes", "from_8bit"]


class Defects:
    """Defect names in the order first seen, each once."""

    __slots__ = ("_names",)

    def __init__(self) -> None:
        self._names: dict[str, None] = {}

    def add(self, name: str) -> None:
        self._names.setdefault(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def names(self) -> tuple[str, ...]:
        return tuple(self._names)


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
def _codecs_for(charset: str | None) -> tuple[tuple[str, ...], bool, bool]:
    """(codecs to try, whether the declaration was understood, whether ASCII reads as itself)."""
    if charset is None:
        return _GUESS, True, True
    label = charset.strip().strip("\"'").lower()
    if not label:
        return _GUESS, True, True
    if label in _CHARSET_ALIASES:
        found = _CHARSET_ALIASES[label]
        return found, True, all(_ascii_compatible(codec) for codec in found)
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError, TypeError):
        return _GUESS, False, True
    if name in _FORBIDDEN_CODECS:
        return _GUESS, False, True
    try:
        b"".decode(name)
    except (LookupError, UnicodeError, TypeError, ValueError):
        return _GUESS, False, True  # a bytes-to-bytes codec such as base64
    return (name,), True, _ascii_compatible(name)


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


def decode_bytes(data: bytes, charset: str | None, defects: Defects) -> str:
    """Decode with the declared charset, else UTF-8, else Windows-1252; never raises."""
    candidates, understood, ascii_ok = _codecs_for(charset)
    if not understood:
        defects.add("unknown-charset")
    if ascii_ok and data.isascii():
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


# 8-bit header bytes, carried through as lone surrogates (surrogateescape).
_ESCAPED_BYTES_RE = re.compile("[\udc80-\udcff]")
SURROGATE_RE = re.compile("[\ud800-\udfff]")


def from_8bit(text: str) -> str:
    """Recover raw 8-bit header bytes as UTF-8, or as Windows-1252 when they are not."""
    if text.isascii() or not _ESCAPED_BYTES_RE.search(text):
        return text
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return SURROGATE_RE.sub("\ufffd", text)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_NOISE = bytes(set(range(256)) - set(_B64_ALPHABET))


def b64_lenient(data: bytes | memoryview, defects: Defects | None = None) -> bytes:
    """Base64 decode that survives missing padding, junk and truncation.

    Accepts a memoryview, so a 30 MB attachment is decoded straight out of the
    raw mail without a copy of its encoded text.
    """
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    clean = bytes(data).translate(None, _B64_NOISE)
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
