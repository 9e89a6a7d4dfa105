"""Header lines of our own: RFC 2047 encoded-words, folding, msg-id and address lists.

Why not the standard library's header registry: on Python 3.11 its folder
loses the space before an emoji and writes empty encoded-words
(`=?utf-8?q??=`, invalid: RFC 2047 section 2 needs at least one encoded
character), is quadratic on a megabyte-long value, and costs about 3 ms a
mail. These functions write the header text directly, in one pass.

Promises of every function here:

* the result is ASCII, ends in CRLF, and folds at white space (RFC 5322
  section 2.2.3) so that no line is longer than 76 characters (RFC 2047
  section 2 asks that of every line holding an encoded-word; RFC 5322 section
  2.1.1 recommends 78 for all) unless one token cannot be split (a msg-id, an
  addr-spec, a very long header name); never longer than 998;
* encoded-words are `=?utf-8?q?...?=` (readable for Latin text) or
  `=?utf-8?b?...?=` when that is over 20% shorter for the run of text, each at
  most 75 characters (RFC 2047 section 2) and holding whole UTF-8
  characters, at least one;
* a fold is only ever put before white space that is in the value, so
  unfolding (removing the CRLF) gives the value back;
* time is linear in the length of the value.

Unstructured values (`fold_unstructured`: Subject, Thread-Topic; RFC 5322
section 3.2.5) decode back to exactly the input with an RFC 2047 decoder,
`email.policy.default` included. Decoders drop white space between two
adjacent encoded-words (RFC 2047 section 6.2) and strip it at the start and
end of a value, so such white space travels inside the encoded-words: `Sales
😀 Ünïcode` becomes one run `=?utf-8?q?Sales_...?=`, never two words whose
separating space a decoder would lose. Words that need no encoding are
written as they are; a word is encoded when it is not ASCII, contains `=?`
(it would read as an encoded-word), or is too long to fit on a line.

Display names (`fold_addresses`, RFC 5322 section 3.4 `phrase`): atoms when
they are plain words, a quoted-string when ASCII with specials, otherwise
encoded-words of the whole name (RFC 2047 section 5 (3) restricts Q there to
letters, digits and `!*+-/`, which we use everywhere). They decode back to
exactly the input with an RFC 2047 decoder. Note: the standard library's
address parser on Python 3.11 (`email.policy.default`) deviates for encoded
display names: it keeps the white space between two adjacent encoded-words
(RFC 2047 section 6.2 says to drop it), so a name too long for one
encoded-word shows an extra space, and it turns each run of white space
inside an encoded-word into one space; mail clients, and the standard
library's own `email.header.decode_header`, do neither. A name that fits one
encoded-word is never split, and ASCII names with odd white space are
quoted-strings, so only long non-ASCII names meet that deviation.

MIME parameters (`fold_parameters`: an attachment's Content-Disposition and
file name): a quoted-string when printable ASCII that fits a line, else RFC
2231 percent-encoded UTF-8, in numbered continuations when long, each piece
whole characters; folds go between parameters. Our parser and the standard
library read every name back (the latter trims white space at its ends).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

__all__ = [
    "MAX_LINE",
    "WIDTH",
    "fold_addresses",
    "fold_ids",
    "fold_parameters",
    "fold_unstructured",
]

WIDTH = 76  # RFC 2047 section 2: lines holding an encoded-word
MAX_LINE = 998  # RFC 5322 section 2.1.1
_EW_MAX = 75  # RFC 2047 section 2: the longest encoded-word
_Q_PREFIX = "=?utf-8?q?"
_B_PREFIX = "=?utf-8?b?"
_EW_OVERHEAD = len(_Q_PREFIX) + len("?=")
# A run of white space this long between two words is encoded with them:
# written as it is, a fold inside it would leave a line of white space only.
_LONG_SPACE = WIDTH // 2

_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_WSP_SPLIT = re.compile(r"([ \t]+)")  # RFC 5322 WSP: space and tab, nothing else
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ATOMS_RE = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")
# Printable ASCII, spaces and tabs: what we write as a quoted-string, which
# keeps every white space character (RFC 5322 section 3.2.4).
_QUOTABLE_RE = re.compile(r"[\x20-\x7e\t]*")
_QUOTED_MAX = 64  # a longer ASCII name is encoded, so that it can fold
# Q "safe" bytes (RFC 2047 section 5 (3), the strictest context), and space as "_".
_Q_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/"
_Q_TABLE = [f"={byte:02X}" for byte in range(256)]
for _byte in _Q_SAFE:
    _Q_TABLE[_byte] = chr(_byte)
_Q_TABLE[0x20] = "_"
_Q_CHEAP = _Q_SAFE + b" "  # one character in Q


# --------------------------------------------------------------------------
# Unstructured values


def fold_unstructured(name: str, value: str) -> str:
    """`Name: value` CRLF, folded and RFC 2047-encoded as needed (module docstring)."""
    prefix = f"{name}:"
    if not value:
        return prefix + "\r\n"
    value = _encodable(value)
    if (
        len(prefix) + 1 + len(value) <= WIDTH
        and value.isascii()
        and value.isprintable()
        and "=?" not in value
        and value[0] != " "
        and value[-1] != " "
    ):
        return f"{prefix} {value}\r\n"  # the common case: one short ASCII line
    parts = _WSP_SPLIT.split(value)  # word, space, word, ..., word
    words, spaces = parts[0::2], parts[1::2]
    encode = _words_to_encode(words, spaces, len(prefix) + 1)
    lines = _Lines(prefix)
    count = len(words)
    i = 0
    while i < count:
        # The first word follows "Name: " and may not move to a new line: a
        # fold right after the colon would add a leading space to the value.
        sep, can_fold = (spaces[i - 1], True) if i else (" ", False)
        kind = encode[i]
        end = i + 1
        while end < count and encode[end] is kind:
            end += 1
        # Words i..end-1 with the white space between them, as in the value:
        # encoded words carry it inside (decoders drop it between them).
        run = "".join(parts[2 * i: 2 * end - 1])
        if kind:
            lines.put_encoded(sep, run, can_fold)
        elif not lines.fits(sep, run):
            for k in range(i, end):
                lines.put(spaces[k - 1] if k else sep, words[k], can_fold or k > i)
        else:
            lines.put(sep, run, can_fold)
        i = end
    return lines.text()


def _words_to_encode(words: list[str], spaces: list[str], first_column: int) -> list[bool]:
    """Which words are written as encoded-words (module docstring)."""
    widths = [first_column, *map(len, spaces)]  # where each word would start a line
    encode = [
        not word
        or not (word.isascii() and word.isprintable())
        or "=?" in word
        or width + len(word) > WIDTH
        for word, width in zip(words, widths, strict=True)
    ]
    # White space at the start or the end of the value is stripped by
    # readers: it goes into the encoded-word of its neighbour.
    if len(words) > 1:
        if not words[0]:
            encode[1] = True
        if not words[-1]:
            encode[-2] = True
    for i, width in enumerate(widths[1:]):
        if width > _LONG_SPACE:
            encode[i] = encode[i + 1] = True
    return encode


# --------------------------------------------------------------------------
# Address lists


def fold_addresses(name: str, mailboxes: Sequence[tuple[str, str]]) -> str:
    """`Name: a, b` CRLF for (display name, addr-spec) pairs; addr-specs are written as given.

    Folds between mailboxes, between the words of a display name and before
    the angle-addr; the caller checks that addr-specs are ASCII and valid.
    """
    lines = _Lines(f"{name}:")
    for index, (display, spec) in enumerate(mailboxes):
        comma = "," if index < len(mailboxes) - 1 else ""  # sticks to the address
        if not display:
            lines.put(" ", spec + comma, True)
            continue
        display = _encodable(display)
        if _needs_phrase_encoding(display):
            lines.put_encoded(" ", display, True)
        elif _ATOMS_RE.fullmatch(display):
            for word in display.split(" "):
                lines.put(" ", word, True)
        else:
            escaped = display.replace("\\", "\\\\").replace('"', '\\"')
            lines.put(" ", f'"{escaped}"', True)
        lines.put(" ", f"<{spec}>{comma}", True)
    return lines.text()


def _needs_phrase_encoding(display: str) -> bool:
    return (
        len(display) > _QUOTED_MAX
        or "=?" in display
        or not display.isascii()
        or _QUOTABLE_RE.fullmatch(display) is None  # tabs, runs of spaces, edges
    )


# --------------------------------------------------------------------------
# msg-id lists


def fold_ids(name: str, ids: Sequence[str]) -> str:
    """`Name: <id> <id>` CRLF, folded between ids, and after the colon when the first
    id does not fit (as Outlook does); an id is never split or encoded."""
    lines = _Lines(f"{name}:")
    for mid in ids:
        lines.put(" ", f"<{mid}>", True)
    return lines.text()


# --------------------------------------------------------------------------
# MIME parameters

# RFC 2231 attribute-char: US-ASCII but space, controls, "*", "'", "%" and the tspecials.
_ATTRIBUTE_CHARS = frozenset(
    chr(c) for c in range(0x21, 0x7F)) - frozenset("*'%()<>@,;:\\\"/[]?=")
_PRINTABLE_RE = re.compile(r"[\x20-\x7e]*")


def fold_parameters(name: str, value: str, params: Sequence[tuple[str, str]]) -> str:
    """`Name: value; attr="v"` CRLF, folded before a parameter that does not fit.

    A printable ASCII value that fits on a line is a quoted-string; any other
    (non-ASCII, control characters, too long) is RFC 2231 UTF-8 percent-encoding,
    cut into numbered continuations (`attr*0*=`, `attr*1*=`) between characters,
    never inside one, for readers that decode each piece on its own.
    """
    lines = _Lines(f"{name}:")
    lines.put(" ", value, False)
    for attr, text in params:
        for token in _parameter_tokens(attr, text):
            lines.put("", ";", False)
            lines.put(" ", token, True)
    return lines.text()


def _parameter_tokens(attr: str, text: str) -> list[str]:
    text = _encodable(text)  # a name from broken mail may carry lone surrogates
    if _PRINTABLE_RE.fullmatch(text):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        quoted = f'{attr}="{escaped}"'
        if len(quoted) < WIDTH - 1:  # a space before it, a ";" after it
            return [quoted]
    pieces = [c if c in _ATTRIBUTE_CHARS else "".join(f"%{b:02X}" for b in c.encode("utf-8"))
              for c in text]
    whole = f"{attr}*=utf-8''{''.join(pieces)}"
    if len(whole) < WIDTH - 1:
        return [whole]
    tokens: list[str] = []
    head = current = f"{attr}*0*=utf-8''"
    for piece in pieces:
        if current != head and len(current) + len(piece) >= WIDTH - 1:
            tokens.append(current)
            head = current = f"{attr}*{len(tokens)}*="
        current += piece
    tokens.append(current)
    return tokens


# --------------------------------------------------------------------------
# Writing lines


class _Lines:
    """Header text being written, one line at a time, with the current column."""

    def __init__(self, prefix: str) -> None:
        self._out = [prefix]
        self._column = len(prefix)

    def text(self) -> str:
        self._out.append("\r\n")
        return "".join(self._out)

    def fits(self, sep: str, text: str) -> bool:
        """Whether `sep` and `text` fit on the current line."""
        return self._column + len(sep) + len(text) <= WIDTH

    def _fold(self) -> None:
        self._out.append("\r\n")
        self._column = 0

    def put(self, sep: str, token: str, can_fold: bool) -> None:
        """White space `sep` and an unbreakable `token`; fold before `sep` if needed."""
        if can_fold and self._column + len(sep) + len(token) > WIDTH and self._column > 0:
            self._fold()
        self._out += (sep, token)
        self._column += len(sep) + len(token)

    def put_encoded(self, sep: str, text: str, can_fold: bool) -> None:
        """`text` as encoded-words after white space `sep`.

        A text that fits in one encoded-word is never split: when it does not
        fit on the current line, it starts a new one (see also the note on
        display names). A longer text fills lines greedily.
        """
        data = text.encode("utf-8")
        # Q costs 1 per safe byte and 3 per other; B 4 per 3 bytes.
        q_cost = len(data) + 2 * len(data.translate(None, _Q_CHEAP))
        b_cost = 4 * ((len(data) + 2) // 3)
        # Q keeps Latin text readable in the raw mail; B only when markedly shorter.
        use_q = 4 * q_cost <= 5 * b_cost
        whole = _EW_OVERHEAD + (q_cost if use_q else b_cost)
        if whole <= _EW_MAX and (can_fold or self._column + len(sep) + whole <= WIDTH):
            # The common case: one encoded-word, on this line or (folding) on the next.
            if can_fold and self._column + len(sep) + whole > WIDTH:
                self._fold()
            payload = ("".join(map(_Q_TABLE.__getitem__, data)) if use_q
                       else base64.b64encode(data).decode("ascii"))
            word = f"{_Q_PREFIX if use_q else _B_PREFIX}{payload}?="
            self._out += (sep, word)
            self._column += len(sep) + len(word)
            return
        stream: _QStream | _BStream = _QStream(data) if use_q else _BStream(data)
        first = True
        while not stream.done():
            gap = sep if first else " "
            room = WIDTH - self._column - len(gap)
            if room < _EW_OVERHEAD + stream.next_cost() and (can_fold or not first):
                self._fold()
                room = WIDTH - len(gap)
            word = stream.take(min(room, _EW_MAX) - _EW_OVERHEAD)
            self._out += (gap, word)
            self._column += len(gap) + len(word)
            first = False


def _utf8_length(lead: int) -> int:
    """The length of the UTF-8 sequence that starts with byte `lead`."""
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


class _QStream:
    """Text Q-encoded once, then cut into encoded-words of whole characters.

    Cutting the encoded text rather than encoding per character keeps a
    megabyte-long value at C speed: a cut may not split an `=XX` escape nor
    land before an escaped UTF-8 continuation byte (=80 to =BF).
    """

    def __init__(self, data: bytes) -> None:
        self._text = "".join(map(_Q_TABLE.__getitem__, data))
        self._start = 0

    def done(self) -> bool:
        return self._start >= len(self._text)

    def next_cost(self) -> int:
        """Encoded characters of the next character."""
        text, start = self._text, self._start
        if text[start] != "=":
            return 1
        return 3 * _utf8_length(int(text[start + 1:start + 3], 16))

    def take(self, budget: int) -> str:
        """One encoded-word of as many whole characters as fit `budget` (at least one)."""
        text, start = self._text, self._start
        end = min(start + budget, len(text))
        if end < len(text):
            if text[end - 1] == "=":
                end -= 1
            elif text[end - 2] == "=" and end - 2 >= start:
                end -= 2
            while end > start and text[end] == "=" and text[end + 1] in "89AB":
                end -= 3
            if end <= start:
                end = start + self.next_cost()
        self._start = end
        return f"{_Q_PREFIX}{text[start:end]}?="


class _BStream:
    """Bytes cut into B encoded-words at UTF-8 character boundaries."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._start = 0

    def done(self) -> bool:
        return self._start >= len(self._data)

    def next_cost(self) -> int:
        return 4 * ((_utf8_length(self._data[self._start]) + 2) // 3)

    def take(self, budget: int) -> str:
        data, start = self._data, self._start
        end = min(start + budget // 4 * 3, len(data))
        while start < end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1  # not inside a character
        if end <= start:
            end = start + _utf8_length(data[start])
        self._start = end
        return f"{_B_PREFIX}{base64.b64encode(data[start:end]).decode('ascii')}?="


def _encodable(text: str) -> str:
    """`text` with lone surrogates (not UTF-8 encodable) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE_RE.sub("\ufffd", text)
    return text
