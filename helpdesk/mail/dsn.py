"""Read what a bounce says: RFC 3464 delivery status notifications and the text
of old-style bounces, and which addresses nobody reads.

Split from `helpdesk.mail.classify`, which decides *whether* a mail is a
bounce; this module reads *what* it reports. Both parsers are pure and never
raise, whatever the bytes:

* `parse_dsn(raw)` reads every per-recipient block of the
  `message/delivery-status` part (RFC 3464 section 2.3) and the original
  message id from the returned mail or its headers;
* `parse_bounce_text(text)` reads the human-readable text of a bounce,
  paragraph by paragraph, for failed addresses and their status.

Anyone can send a mail that looks like a bounce (calling oneself postmaster is
enough), so every step is linear in the size of the mail: regexes start only
where a match can begin (no rescanning of a long run from each of its
characters), folded lines are collected and joined once, and a report names
at most `MAX_RECIPIENTS` recipients.

`is_noreply_address` is the rule every later stage uses to never send an
automatic answer to an address that cannot or will not read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from helpdesk.mail.parse.charsets import Defects
from helpdesk.mail.parse.mime import (
    Part,
    decode_payload,
    line_ends,
    parse_tree,
    transfer_encoding,
)
from helpdesk.values import BounceRecipient, BounceReport

__all__ = [
    "MAX_RECIPIENTS",
    "is_noreply_address",
    "keyword",
    "local_part",
    "parse_bounce_text",
    "parse_dsn",
    "shorten",
]

# Reasons quote header values; a reason is a line in an audit trail, not a copy.
_MAX_REASON_VALUE = 80
_MAX_DIAGNOSTIC = 500
# A bounce of one of our mails names its few recipients; a "bounce" naming
# thousands is an attempt to suppress mail to them (or to stall us).
MAX_RECIPIENTS = 100

# --------------------------------------------------------------------------
# Small text helpers, shared with classify


def shorten(value: str, limit: int = _MAX_REASON_VALUE) -> str:
    """`value` on one line, cut to `limit` characters with an ellipsis."""
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"


_COMMENT_RE = re.compile(r"\([^()]*\)")


def keyword(value: str) -> str:
    """The first keyword of a structured value, without comments and parameters."""
    value = _COMMENT_RE.sub(" ", value)
    return value.split(";", 1)[0].strip().lower()


# --------------------------------------------------------------------------
# Addresses nobody reads

# Local parts of mailboxes nobody reads; matched as a whole token of the
# local part, so that VERP forms ("list-bounces+x=y") are caught and
# "bouncer.smith" is not.
_NOREPLY_WORDS = (
    r"no[._-]?reply|do[._-]?not[._-]?reply|don'?t[._-]?reply"
    r"|mailer[._-]?daemon|postmaster|bounces?|notifications?"
)
_NOREPLY_RE = re.compile(rf"(?:^|[._=-])(?:{_NOREPLY_WORDS})(?:$|[._=-])")


def local_part(address: str) -> str:
    """The local part, lower-cased and without a "+detail" sub-address."""
    address = address.strip().strip("<>").strip().lower()
    local = address.rpartition("@")[0] if "@" in address else address
    local = local.strip('"')
    return local.split("+", 1)[0]


def is_noreply_address(address: str) -> bool:
    """Whether `address` is a mailbox that nobody reads: never answer it.

    True for no-reply, do-not-reply, mailer-daemon, postmaster, bounce(s) and
    notification(s) local parts, also inside VERP and sub-addressed forms.
    """
    try:
        return bool(_NOREPLY_RE.search(local_part(address)))
    except (AttributeError, TypeError):
        return False


# --------------------------------------------------------------------------
# RFC 3464 delivery status notifications

_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
# RFC 6522 and RFC 6533 (internationalised): the returned mail or its headers.
_ORIGINAL_TYPES = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"}
)
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_ACTION_BY_CLASS = {"5": "failed", "4": "delayed", "2": "delivered"}
# RFC 3463 section 2: class.subject.detail, 1-3 digits each; not part of an IP address.
_STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_SMTP_CODE_RE = re.compile(r"(?<![\w.:/\[-])([245])[0-5]\d(?=[\s-]|$)")
_TYPED_VALUE_RE = re.compile(r"^\s*[A-Za-z][\w-]*\s*;\s*(.*)$", re.S)
_ID_RE = re.compile(r"<([^<>\s]+)>")
_SURROGATES_RE = re.compile("[\udc80-\udcff]")
_BLANK_LINE_RE = re.compile(r"\r?\n[ \t]*\r?\n")
# Where the header section of a returned mail ends (RFC 5322 section 2.1).
_HEADER_END_RE = re.compile(rb"^\r?\n", re.M)
# A line and its break, as str.splitlines has them (CRLF is one break).
_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_LINE_RE = re.compile(f"([^{_BREAKS}]*)(\r\n|[{_BREAKS}])?")
# A status field is a line or two; a diagnostic may run over several. Longer
# is not a report but an attempt to make us hold it.
_MAX_FIELD = 10_000

_Fields = dict[str, str]


@dataclass
class _Findings:
    recipients: list[BounceRecipient] = field(default_factory=list)
    original_id: str | None = None


def parse_dsn(raw: bytes) -> BounceReport | None:
    """The machine-readable report of a DSN (RFC 3464), or None when there is none.

    Reads every per-recipient block of the `message/delivery-status` part;
    the original message id comes from the returned `message/rfc822` or
    `text/rfc822-headers` part, else from the report's In-Reply-To or
    References. Never raises.

    The structure comes from the MIME reader `parse()` uses (a part is a pair
    of offsets into the raw mail), and only the report's own parts are
    decoded: the status part, and the header section of the returned mail.
    The standard library's parser, used before, held every line of the whole
    mail as a string (26 times the size of a DSN of a million short lines).
    """
    try:
        buf = line_ends(bytes(raw))
        top = parse_tree(buf)
        findings = _Findings()
        _scan(buf, top, findings)
        if not findings.recipients:
            return None
        original = findings.original_id or _replied_id(_first_values(top.fields))
        return BounceReport(tuple(findings.recipients), original)
    except Exception:  # noqa: BLE001 - the contract is to never raise; e.g. MemoryError
        return None


def _scan(buf: bytes, part: Part, findings: _Findings) -> None:
    """Walk multiparts for the status and the returned mail; never into the returned mail.

    parse_tree bounds the depth (MAX_DEPTH) and the number of parts.
    """
    ctype = part.content_type
    if ctype in _STATUS_TYPES:
        if not findings.recipients:
            findings.recipients = _recipients(_text_blocks(_body_text(buf, part)))
    elif ctype in _ORIGINAL_TYPES:
        if findings.original_id is None:
            findings.original_id = _first_id(_returned_fields(buf, part).get("message-id", ""))
    elif part.children is not None:
        for child in part.children:
            _scan(buf, child, findings)


def _recover(value: object) -> str:
    """A raw header value unfolded, 8-bit bytes read as UTF-8, on one line."""
    text = str(value)
    if _SURROGATES_RE.search(text):
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


def _first_values(fields: list[tuple[str, str]]) -> _Fields:
    """The first value of each header field, by lower-cased name."""
    found: _Fields = {}
    for name, value in fields:
        found.setdefault(name.strip().lower(), _recover(value))
    return found


def _body_text(buf: bytes, part: Part) -> str:
    """A leaf's body, transfer encoding undone, as text (RFC 6533 allows UTF-8)."""
    return decode_payload(buf, part, Defects()).decode("utf-8", "replace")


def _returned_fields(buf: bytes, part: Part) -> _Fields:
    """The header fields of the returned mail (or of its returned headers).

    Only its header section is read: the mail a bounce returns may be large.
    """
    if transfer_encoding(part) in ("", "7bit", "8bit", "binary"):
        found = _HEADER_END_RE.search(buf, part.start, part.end)
        section = buf[part.start : found.start() if found else part.end]
    else:  # RFC 2046 section 5.2.1 forbids it for message/rfc822, but mailers do it
        data = decode_payload(buf, part, Defects())
        found = _HEADER_END_RE.search(data)
        section = data[: found.start() if found else len(data)]
    return _block(section.decode("utf-8", "replace"))


def _text_blocks(text: str) -> list[_Fields]:
    """RFC 3464 section 2.1: blocks of header-style fields separated by blank lines."""
    blocks: list[_Fields] = []
    for chunk in _BLANK_LINE_RE.split(text):
        fields = _block(chunk)
        if fields:
            blocks.append(fields)
    return blocks


def _block(text: str) -> _Fields:
    """The header-style fields of one block, the first of each name.

    A field keeps its first `_MAX_FIELD` characters however often it is
    folded, and the lines are read one at a time: a million continuation
    lines cost time in proportion, and little memory.
    """
    # The pieces of each field, joined once at the end: joining as each
    # folded line comes would copy the value again for every line.
    fields: dict[str, list[str]] = {}
    room: dict[str, int] = {}
    name = ""
    for line in _lines(text):
        if line[:1] in (" ", "\t") and name:
            if room[name] > 0:  # a folded continuation
                piece = line.strip()
                fields[name].append(piece)
                room[name] -= len(piece) + 1
            continue
        key, colon, value = line.partition(":")
        name = key.strip().lower() if colon else ""
        if name and name not in fields:
            fields[name] = [value.strip()]
            room[name] = _MAX_FIELD - len(fields[name][0])
        elif name:
            name = ""  # a repeated field: the first one counts
    return {key: _recover(" ".join(parts)[:_MAX_FIELD]) for key, parts in fields.items()}


def _lines(text: str) -> Iterator[str]:
    """The lines of `text` as `str.splitlines` cuts them, one at a time."""
    for match in _LINE_RE.finditer(text):
        line = match.group(1)
        if match.end() == len(text) and not match.group(2):
            if line:
                yield line
            return
        yield line


def _typed_value(value: str) -> str:
    """The value after an RFC 3464 type: "rfc822; a@b" is "a@b", "smtp; 550 ..." is "550 ..."."""
    match = _TYPED_VALUE_RE.match(value)
    return (match.group(1) if match else value).strip()


def _recipients(blocks: list[_Fields]) -> list[BounceRecipient]:
    """Per-recipient blocks (RFC 3464 section 2.3) are those naming a recipient."""
    found: dict[BounceRecipient, None] = {}
    for block in blocks:
        recipient = _recipient(block)
        if recipient is not None:
            found.setdefault(recipient, None)
            if len(found) >= MAX_RECIPIENTS:
                break
    return list(found)


def _recipient(block: _Fields) -> BounceRecipient | None:
    raw_address = block.get("final-recipient") or block.get("original-recipient") or ""
    address = _typed_value(raw_address).strip().strip("<>").strip().lower()
    if not address:
        return None
    diagnostic = shorten(_typed_value(block.get("diagnostic-code", "")), _MAX_DIAGNOSTIC)
    status = _status_in(block.get("status", "")) or _status_in(diagnostic)
    action = keyword(block.get("action", "")).split(" ", 1)[0]
    if action not in _ACTIONS:
        action = _ACTION_BY_CLASS.get(status[:1], action)
    return BounceRecipient(address=address, action=action, status=status, diagnostic=diagnostic)


def _status_in(text: str, classes: str = "245") -> str:
    """The first RFC 3463 status in `text`, else one made from a basic SMTP code
    (RFC 5321 section 4.2.1: "550" is "5.0.0"), else ""."""
    for match in _STATUS_RE.finditer(text):
        if match.group(1) in classes:
            return ".".join(match.groups())
    for match in _SMTP_CODE_RE.finditer(text):
        if match.group(1) in classes:
            return f"{match.group(1)}.0.0"
    return ""


def _first_id(value: str) -> str | None:
    match = _ID_RE.search(value)
    if match:
        return match.group(1)
    bare = value.strip().strip("<>").strip()
    return bare if bare and "@" in bare and " " not in bare else None


def _replied_id(fields: _Fields) -> str | None:
    """In-Reply-To, else the newest References entry (RFC 5322 section 3.6.4)."""
    replied = _first_id(fields.get("in-reply-to", ""))
    if replied:
        return replied
    references = _ID_RE.findall(fields.get("references", ""))
    return references[-1] if references else None


# --------------------------------------------------------------------------
# Bounces without a machine-readable part

# Repeated groups here are possessive (`*+`, `++`) or character classes: the
# regex engine keeps a backtracking frame for every repetition of a plain
# repeated group, ~100 bytes for each character of a run of blanks or each
# label of a domain (a 2 MB run cost 284 MB), and nothing after these runs
# could match if they gave some of it back.
#
# Where an old-style bounce starts quoting the returned mail: addresses below
# that line are the original's headers, not failed recipients. The phrase may
# follow white space, ">" and "-" on its own line; the run before it may not
# cross a line break here (with `\s` it did, and every blank line of 40 KB of
# them started a scan over all the blank lines after it), `_returned_copy`
# takes in the blank or ">"/"-" lines above instead.
_RETURNED_COPY_RE = re.compile(
    r"^(?:[>-]|[^\S\n])*+(?:this is a copy of|below this line is a copy of"
    r"|original message|unsent message below|returned message|message headers follow)",
    re.I | re.M,
)
_RUN_ABOVE_RE = re.compile(r"[>\s-]*")
_PARAGRAPH_RE = re.compile(r"\n[ \t]*\n")

# An address in running text: a local part of RFC 5322 atext and dots, "@",
# and a domain of at least two labels. Read in two steps so that the work
# stays linear: a run of local-part characters that ends at "@" is found
# where the run begins (a regex tried at every character of a 30,000
# character run rescans the run from each one), then the address begins at
# the first character of the run that does not follow a word character, a
# dot, a plus or a hyphen, and the domain is matched after the "@".
_ATEXT = r"[\w!#$%&'*+/=?^`{|}~.-]"
_LOCAL_RUN_RE = re.compile(rf"(?<!{_ATEXT}){_ATEXT}+@", re.I)
_ADDRESS_START_RE = re.compile(r"(?<![\w.+-]).", re.S)
_DOMAIN_RE = re.compile(
    r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)++", re.I
)


def find_addresses(text: str) -> Iterator[str]:
    """The addresses in running text, left to right, as written (not lower-cased).

    The same matches as searching for the whole address with one regex, in
    time linear in `text`.
    """
    scanned = 0  # where the previous address ended: matches do not overlap
    for run in _LOCAL_RUN_RE.finditer(text):
        at = run.end() - 1
        start = _ADDRESS_START_RE.search(text, max(run.start(), scanned), at)
        if start is None:
            continue
        domain = _DOMAIN_RE.match(text, at + 1)
        if domain is None:
            continue
        yield text[start.start() : domain.end()]
        scanned = domain.end()


def _returned_copy(text: str) -> int:
    """Where the returned copy begins (len(text) if nowhere): its marker line,
    and the lines of only white space, ">" and "-" right above it."""
    cut = _RETURNED_COPY_RE.search(text)
    if cut is None:
        return len(text)
    above = text[cut.start() - 1 :: -1] if cut.start() else ""  # reversed, to match backwards
    run = _RUN_ABOVE_RE.match(above)
    start = cut.start() - (run.end() if run else 0)
    # The run may begin inside a line of text: the copy begins on the next line.
    return start if start == 0 or text[start - 1] == "\n" else text.index("\n", start) + 1


def _text_addresses(paragraph: str, skip: Callable[[str], bool]) -> list[str]:
    found: dict[str, None] = {}
    for match in find_addresses(paragraph):
        address = match.strip(".").lower()
        if not skip(address):
            found.setdefault(address, None)
    return list(found)


def parse_bounce_text(
    text: str, *, ignore: Callable[[str], bool] | None = None
) -> BounceReport | None:
    """A best-effort report from the human-readable text of a bounce; never raises.

    Each paragraph before the returned copy is read for addresses and a 4xx/5xx
    status ("5.1.1", or "550" as "5.0.0"); the addresses of a paragraph with a
    status are the failed recipients. When no paragraph has a status, the
    addresses found are reported as failed with an unknown status (""), which
    is never `permanent`. Addresses for which `ignore` is true, and no-reply
    addresses such as postmaster, are skipped. At most `MAX_RECIPIENTS` are
    reported.
    """
    try:
        return _text_report(text, ignore or (lambda _address: False))
    except Exception:  # noqa: BLE001 - the contract is to never raise
        return None


def _text_report(text: str, ignore: Callable[[str], bool]) -> BounceReport | None:
    def skip(address: str) -> bool:
        return is_noreply_address(address) or ignore(address)

    body = text[: _returned_copy(text)]
    coded: dict[str, BounceRecipient] = {}
    uncoded: dict[str, None] = {}
    for paragraph in _PARAGRAPH_RE.split(body):
        if "@" not in paragraph:
            continue  # cheap, and most paragraphs of a long text have no address
        addresses = _text_addresses(paragraph, skip)
        if not addresses:
            continue
        status = _status_in(paragraph, classes="45")
        if status:
            diagnostic = shorten(paragraph, _MAX_DIAGNOSTIC)
            action = _ACTION_BY_CLASS[status[0]]
            for address in addresses:
                coded.setdefault(address, BounceRecipient(address, action, status, diagnostic))
        else:
            uncoded.update(dict.fromkeys(addresses))
        if len(coded) >= MAX_RECIPIENTS:
            break
    if coded:
        return BounceReport(tuple(coded.values())[:MAX_RECIPIENTS])
    if uncoded:
        return BounceReport(
            tuple(BounceRecipient(a, "failed", "") for a in list(uncoded)[:MAX_RECIPIENTS])
        )
    return None
