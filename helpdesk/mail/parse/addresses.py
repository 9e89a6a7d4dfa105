"""Mailboxes from address headers, and the sender of a mail wherever it can be found.

Our own reader of RFC 5322 section 3.4 address lists rather than
`email.utils.getaddresses`: the standard library's behaviour on malformed
lists changed within Python 3.11 and 3.12 security releases (the same bytes
give different mailboxes on different patch levels), it is not hardened
against garbage, and it was a fifth of `parse()`'s time. This one splits on
commas outside quoted strings, comments and angle brackets, reads groups,
and is lenient where real mail is broken: `Big Bug bb@bug.com` (no angle
brackets), `a@x.com b@y.com` (no comma), `<"System Administrator"@x.com>`
(a quoted local part), `user at example.com (Name)` (mailing-list archives).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from helpdesk.mail.parse.charsets import Defects
from helpdesk.mail.parse.headers import (
    ENCODED_WORD_RE,
    MAX_DISPLAY,
    clean_line,
    decode_words,
)
from helpdesk.values import Address

__all__ = ["MAX_ADDRESSES", "Sender", "addresses", "find_sender", "usable_address"]

MAX_ADDRESS_LENGTH = 320  # RFC 5321 section 4.5.3.1: 64 + "@" + 255
# Mailboxes kept per header; a header naming more is an attack or a list's
# mistake, and the raw mail keeps every one.
MAX_ADDRESSES = 1_000

_ATEXT = r"[^@\s<>()\[\],;:\"\\]"
_LOCAL = rf'(?:{_ATEXT}+|"(?:[^"\\\r\n]|\\.)*")'
_ADDR_RE = re.compile(rf"^{_LOCAL}@{_ATEXT}+$")
_PLAIN_LOCAL_RE = re.compile(rf"^{_ATEXT}+$")
# Lenient search: the first thing in a header that looks like an address. It
# may start only where a word starts, and its quantifiers never give back, so
# that a header of 40,000 letters and no "@" costs one pass, not 40,000.
_FIND_RE = re.compile(
    r'(?<![^\s<>()\[\],;:"])'
    rf'(?:"(?:[^"\\\r\n]|\\.)*+"|(?:{_ATEXT}|\\.)++)@[\w-]++(?:\.[\w-]++)*+'
)
# Mailman 2 archives write "user at example.com (Name)".
_ARCHIVE_RE = re.compile(r"^\s*([^\s@()<>]+) at ([\w-]+(?:\.[\w-]+)+)\s*(?:\((.*)\))?\s*$")
# Tokens: a quoted string, a comment, an angle address, a separator, a run of
# anything else, or one stray character. Unterminated ones run to the end.
_TOKEN_RE = re.compile(
    r'"[^"\\]*+(?:\\.[^"\\]*+)*+"?|\([^()\\]*+(?:\\.[^()\\]*+)*+\)?|<[^<>]*+>?|[,:;]'
    r'|[^",:;<>(]++|.',
    re.S,
)
_PLACEHOLDER_START = "\ue000"
_PLACEHOLDER_END = "\ue001"
_PLACEHOLDER_RE = re.compile(f"{_PLACEHOLDER_START}(\\d+){_PLACEHOLDER_END}")
_SENDER_HEADERS = ("sender", "reply-to", "return-path")


def usable_address(text: str) -> str | None:
    """`text` as a lower-cased address when it is one; a quoted local part is kept quoted
    unless it needs no quotes."""
    addr = text.strip().lower()
    if not addr or len(addr) > MAX_ADDRESS_LENGTH or not _ADDR_RE.match(addr):
        return None
    if addr.startswith('"'):
        local, _, domain = addr.rpartition("@")
        inner = local[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        if inner and _PLAIN_LOCAL_RE.match(inner) and not inner.startswith("."):
            return f"{inner}@{domain}"
    return addr


@dataclass(slots=True)
class _Item:
    """One mailbox as written: phrase words, the angle-bracketed address, comments."""

    phrase: list[str]
    angle: str | None
    comments: list[str]


def _items(value: str) -> Iterator[_Item]:
    """The mailboxes of an address list, groups flattened (RFC 5322 section 3.4)."""
    item = _Item([], None, [])
    for match in _TOKEN_RE.finditer(value):
        token = match.group(0)
        first = token[0]
        if first == "," or first == ";":
            yield item
            item = _Item([], None, [])
        elif first == ":" and item.angle is None:
            item = _Item([], None, [])  # "group name:" starts a group
        elif first == '"':
            inner = token[1:-1] if len(token) > 1 and token.endswith('"') else token[1:]
            item.phrase.append('"' + inner + '"' if item.angle is None else inner)
        elif first == "(":
            item.comments.append(token[1:-1] if token.endswith(")") else token[1:])
        elif first == "<":
            item.angle = token[1:-1] if token.endswith(">") else token[1:]
        elif not token.isspace():
            item.phrase.append(token)
    yield item


def addresses(values: list[str], header: str, defects: Defects) -> tuple[Address, ...]:
    """Mailboxes of one address header; garbage entries are skipped and named."""
    found: dict[str, Address] = {}
    bad = False
    for value in values:
        words: list[str] = []
        for item in _items(_protect_words(value, words)):
            pairs, broken = _mailboxes(item, words, defects)
            bad = bad or broken
            for addr, name in pairs:
                found.setdefault(addr, Address(address=addr, name=name))
            if len(found) >= MAX_ADDRESSES:
                defects.add(f"too-many-addresses:{header}")
                return tuple(found.values())
    if bad:
        defects.add(f"bad-address:{header}")
    return tuple(found.values())


def _mailboxes(
    item: _Item, words: list[str], defects: Defects
) -> tuple[list[tuple[str, str]], bool]:
    """(address, display name) pairs of one list item, and whether it was broken."""
    if item.angle is not None:
        inner = _restore_words(item.angle, words).strip()
        if inner.startswith("@") and ":" in inner:
            inner = inner.split(":", 1)[1]  # RFC 5322 section 4.4: an obsolete route
        addr = usable_address(clean_line(inner, defects))
        if addr is None:
            return [], bool(inner)
        return [(addr, _name(" ".join(item.phrase), item.comments, addr, words, defects))], False
    text = "".join(item.phrase).strip()
    if not text:
        return [], False
    addr = usable_address(_restore_words(text, words))
    if addr is not None:
        return [(addr, _name("", item.comments, addr, words, defects))], False
    return _bare_words(item, words, defects), True


def _bare_words(item: _Item, words: list[str], defects: Defects) -> list[tuple[str, str]]:
    """`Big Bug bb@bug.com` and `a@x.com b@y.com`: words, then one or more addresses."""
    tokens = " ".join(item.phrase).split()
    found: list[tuple[str, str]] = []
    name_words: list[str] = []
    for token in tokens:
        addr = usable_address(_restore_words(token, words))
        if addr is None:
            if found:
                return []  # words after the addresses: not a shape we know
            name_words.append(token)
            continue
        name = _name(" ".join(name_words), item.comments, addr, words, defects) if not found else ""
        found.append((addr, name))
    return found


def _name(phrase: str, comments: list[str], addr: str, words: list[str], defects: Defects) -> str:
    """The decoded display name; an old-style "(Name)" comment when there is no phrase."""
    raw = phrase.strip() or (comments[0] if len(comments) == 1 else "")
    if not raw:
        return ""
    name = decode_words(_restore_words(raw, words), defects)
    name = " ".join(clean_line(name, defects).split())
    name = name.replace('\\"', '"').strip("\"' ")
    if name.lower() == addr:
        return ""
    if len(name) > MAX_DISPLAY:
        defects.add("long-display-name")
        name = name[:MAX_DISPLAY].rstrip()
    return name


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

    return ENCODED_WORD_RE.sub(hide, value)


def _restore_words(text: str, words: list[str]) -> str:
    if not words or _PLACEHOLDER_START not in text:
        return text

    def restore(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return words[index] if index < len(words) else ""

    return _PLACEHOLDER_RE.sub(restore, text)


# --------------------------------------------------------------------------
# The sender


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a mail and which header (or the envelope) said so."""

    address: Address | None
    source: str  # "from", "sender", "reply-to", "return-path", "envelope" or ""


def lenient_from(value: str, defects: Defects) -> Address | None:
    """The first thing in a From value that looks like an address, or None."""
    archive = _ARCHIVE_RE.match(value)
    if archive:
        addr = usable_address(f"{archive.group(1)}@{archive.group(2)}")
        if addr is not None:
            name = _name(archive.group(3) or "", [], addr, [], defects)
            return Address(address=addr, name=name)
    words: list[str] = []
    for match in _FIND_RE.finditer(_protect_words(value, words)):
        addr = usable_address(_escaped_local(match.group(0)))
        if addr is not None:
            return Address(address=addr)
    return None


def _escaped_local(text: str) -> str:
    """`Postmaster\\@example.com@x.org` means the quoted local part "Postmaster@example.com"."""
    local, _, domain = text.rpartition("@")
    if "\\" not in local or local.startswith('"'):
        return text
    inner = re.sub(r"\\(.)", r"\1", local).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{inner}"@{domain}'


def find_sender(
    from_values: list[str],
    others: dict[str, list[str]],
    envelope: tuple[str | None, ...],
    defects: Defects,
) -> Sender:
    """The sender: the first usable address in From, Sender, Reply-To, Return-Path,
    then the envelope.

    `others` maps "sender", "reply-to" and "return-path" to their raw values;
    `envelope` holds envelope senders in order of trust (the source's, the
    mbox line's, the one our MTA wrote in Received).
    """
    senders = addresses(from_values, "from", defects)
    if senders:
        return Sender(senders[0], "from")
    for value in from_values:
        found = lenient_from(value, defects)
        if found is not None:
            return Sender(found, "from")
    defects.add("no-from")
    for header in _SENDER_HEADERS:
        found_list = addresses(others.get(header, []), header, defects)
        if found_list:
            return Sender(found_list[0], header)
    for candidate in envelope:
        addr = usable_address((candidate or "").strip().strip("<>"))
        if addr is not None:
            return Sender(Address(address=addr), "envelope")
    return Sender(None, "")
