"""What makes a reply part of its conversation: References, Thread-Index and Thread-Topic.

Pure functions: time is a parameter.

References (RFC 5322 section 3.6.4): a reply's References are the parent's
References, or else the parent's In-Reply-To when it holds exactly one id,
followed by the parent's Message-ID; so a reply to an In-Reply-To-only mail
(iOS Mail does that) keeps the first id of the thread. A long list is trimmed
from the middle, keeping the first id (the root, which threads the whole
conversation) and the latest ones, as mail clients do.

Thread-Index (MS-OXOMSG section 2.2.1.3, PidTagConversationIndex) is the
base64 of a 22-byte header block followed by one 5-byte child block per
reply level:

    header: 0x01 | 5 bytes of FILETIME | GUID (16 bytes, Data1-3 big-endian)
    child:  DC (1 bit) | time delta (31 bits) | random (8 bits)

The header's five time bytes are bits 55..16 of the conversation's start
time as a FILETIME (100 ns since 1601), big-endian; the reserved first byte
0x01 equals bits 63..56 of every FILETIME from 1972 to 2057, so bytes 0-5
read as one number are the FILETIME shifted right by 16. This is what
Outlook writes and what the spec's earlier revisions say; its current text
says "the 32 bits of the high part and the 8 high bits of the low part",
which no real Thread-Index matches (`AdQc2DN7...`, decoded in the tests,
starts 2018-07-16 07:40:00 only when read as bits 55..16).

A child block's time delta is the reply's time minus the header's time:
when that is under about 1.7 years (bits 49-55 of the difference are zero:
the spec's "high part AND 0x00FE0000"), DC is 0 and the field holds bits
48..18 of the difference; else DC is 1 and it holds bits 53..23. A reply's
index is its parent's index with one child block appended (27, 32, ...
bytes); Exchange groups a conversation by the header block's GUID.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

__all__ = [
    "HEADER_SIZE",
    "child_block",
    "encode_index",
    "index_started",
    "parse_index",
    "reply_index",
    "reply_references",
    "root_index",
    "thread_guid",
    "thread_topic",
    "trim_references",
]

HEADER_SIZE = 22
CHILD_SIZE = 5
# An index this deep is not a real conversation; the oldest levels give way.
MAX_CHILDREN = 100
# A longer header value is not an index we accept (it would be over 145 levels).
_MAX_INDEX_TEXT = 1000
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)  # FILETIME counts 100 ns from here
_THREAD_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "thread-index.helpdesk.invalid")
# MS-OXOMSG: DC is 0 when "the high order part of the delta ... AND 0x00FE0000"
# is 0, i.e. bits 49-55 are clear (nothing above bit 55 fits a FILETIME delta).
_SHORT_DELTA_LIMIT = 2**49

# Outlook's subject normalisation, for Thread-Topic. Kept here rather than
# imported from helpdesk.thread: mail and thread are independent layers.
_TAG_RE = re.compile(r"[\[［]\s*[^\[\]［］\s\d]{1,10}\s*\d{1,12}\s*[\]］]")
_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|antwort|ref|réf|rép|rif|fwd?|wg|tr|enc|odp|r)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------
# References


def reply_references(
    references: Sequence[str], in_reply_to: Sequence[str], message_id: str | None
) -> tuple[str, ...]:
    """The References of a reply to a mail with these headers (RFC 5322 section 3.6.4).

    `message_id` is None when the parent's id means nothing to anyone else
    (one we made up because it had none).
    """
    chain = list(references) if references else list(in_reply_to[:1] if len(in_reply_to) == 1
                                                      else ())
    if message_id:
        chain.append(message_id)
    return tuple(chain)


def trim_references(ids: Sequence[str], max_octets: int) -> list[str]:
    """`ids` without the middle ones once `<id> ` each would pass `max_octets`.

    The first id stays, then as many of the last ones as fit (at least the last).
    """
    if sum(len(mid) + 3 for mid in ids) <= max_octets or len(ids) < 3:
        return list(ids)
    budget = max_octets - (len(ids[0]) + 3)
    tail: list[str] = []
    for mid in reversed(ids[1:]):
        cost = len(mid) + 3
        if cost > budget and tail:
            break
        tail.append(mid)
        budget -= cost
    return [ids[0], *reversed(tail)]


# --------------------------------------------------------------------------
# Thread-Index


def _filetime(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("a Thread-Index time must be timezone-aware")
    return (moment - _FILETIME_EPOCH) // timedelta(microseconds=1) * 10


def thread_guid(key: str) -> bytes:
    """A GUID for a conversation of ours: RFC 4122 version 5 of `key`, in network order."""
    return uuid.uuid5(_THREAD_NAMESPACE, key).bytes


def root_index(started: datetime | None, guid: bytes) -> bytes:
    """The 22-byte header block of a conversation that started at `started`.

    None writes a zero time, the fixed prefix MS-OXOCFG section 2.2.8.8 uses.
    """
    if len(guid) != 16:
        raise ValueError("a Thread-Index GUID has 16 bytes")
    field = 0 if started is None else (_filetime(started) >> 16) & (2**40 - 1)
    return b"\x01" + field.to_bytes(5, "big") + guid


def index_started(index: bytes) -> datetime:
    """The start time a conversation index's header block carries (to 6.5 ms)."""
    filetime = int.from_bytes(index[:6], "big") << 16
    return _FILETIME_EPOCH + timedelta(microseconds=filetime // 10)


def child_block(delta: int, random: int) -> bytes:
    """The 5-byte child block for a reply `delta` FILETIME units after the header's time."""
    delta = max(0, delta)  # a parent from a clock that runs ahead
    if delta < _SHORT_DELTA_LIMIT:
        code, field = 0, (delta >> 18) & 0x7FFFFFFF
    else:
        code, field = 1, min(delta >> 23, 0x7FFFFFFF)
    return ((code << 39) | (field << 8) | (random & 0xFF)).to_bytes(CHILD_SIZE, "big")


def reply_index(parent: bytes, when: datetime, random: int = 0) -> bytes:
    """`parent` with the child block of a reply written at `when` appended."""
    if len(parent) < HEADER_SIZE or (len(parent) - HEADER_SIZE) % CHILD_SIZE:
        raise ValueError(f"not a conversation index: {len(parent)} bytes")
    children = parent[HEADER_SIZE:]
    if len(children) >= MAX_CHILDREN * CHILD_SIZE:
        children = children[-(MAX_CHILDREN - 1) * CHILD_SIZE:]
    delta = _filetime(when) - (int.from_bytes(parent[:6], "big") << 16)
    return parent[:HEADER_SIZE] + children + child_block(delta, random)


def parse_index(text: str | None) -> bytes | None:
    """The conversation index in a Thread-Index header value, or None if it is not one."""
    if not text:
        return None
    compact = "".join(text.split())
    if len(compact) >= _MAX_INDEX_TEXT:
        return None
    try:
        index = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(index) < HEADER_SIZE or (len(index) - HEADER_SIZE) % CHILD_SIZE or index[0] != 1:
        return None
    return index


def encode_index(index: bytes) -> str:
    """The Thread-Index header value of `index`."""
    return base64.b64encode(index).decode("ascii")


# --------------------------------------------------------------------------
# Thread-Topic


def thread_topic(subject: str) -> str:
    """The subject without `[#N]`-style tags and reply/forward prefixes (Thread-Topic)."""
    text = " ".join(_TAG_RE.sub(" ", subject).split())
    previous = None
    while previous != text:
        previous = text
        text = _PREFIX_RE.sub("", text).strip()
    return text
