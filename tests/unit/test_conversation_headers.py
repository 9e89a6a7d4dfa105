"""References (RFC 5322 section 3.6.4) and Thread-Index (MS-OXOMSG 2.2.1.3), checked bit by bit."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from helpdesk.mail.conversation import (
    child_block,
    encode_index,
    index_started,
    parse_index,
    reply_index,
    reply_references,
    root_index,
    thread_guid,
    trim_references,
)

# A real Thread-Index (an Outlook reply), as decoded by a forensic tool: header
# 2018-07-16 07:40:00.2799616 UTC, GUID acba12de-1827-13f3-bbea-ba45cf137f13,
# one child 14:03:22.5476096 later, DC 0, random 0.
KNOWN = "AdQc2DN7rLoS3hgnE/O76rpFzxN/EwAddF4A"
KNOWN_GUID = uuid.UUID("acba12de-1827-13f3-bbea-ba45cf137f13").bytes
# FILETIME has 100 ns steps, datetime 1 us: one microsecond past the header time.
KNOWN_START = datetime(2018, 7, 16, 7, 40, 0, 279962, tzinfo=UTC)
KNOWN_DELTA = (14 * 3600 + 3 * 60 + 22) * 10**7 + 5476096  # 100 ns units


def filetime(moment: datetime) -> int:
    return (moment - datetime(1601, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 10


# --------------------------------------------------------------------------
# Thread-Index


def test_known_index_decodes_as_the_spec_says() -> None:
    """The header's start time, GUID and the child's time delta come out of the real value."""
    index = parse_index(KNOWN)

    assert index is not None
    assert len(index) == 27
    assert index_started(index) == datetime(2018, 7, 16, 7, 40, 0, 279961, tzinfo=UTC)
    assert index[6:22] == KNOWN_GUID
    child = int.from_bytes(index[22:27], "big")
    assert child >> 39 == 0  # DC
    assert ((child >> 8) & 0x7FFFFFFF) << 18 == KNOWN_DELTA // 2**18 * 2**18
    assert child & 0xFF == 0


def test_root_block_reproduces_the_known_header() -> None:
    """0x01, FILETIME bits 55..16 big-endian, then the GUID: byte for byte Outlook's header."""
    assert root_index(KNOWN_START, KNOWN_GUID) == base64.b64decode(KNOWN)[:22]


def test_child_block_reproduces_the_known_child() -> None:
    """A 14 h delta: DC 0, bits 48..18 of the delta, random byte last."""
    assert child_block(KNOWN_DELTA, 0) == base64.b64decode(KNOWN)[22:]
    assert child_block(KNOWN_DELTA, 0x5A).hex() == "001d745e5a"


def test_reply_to_the_known_header_gives_the_known_index() -> None:
    """Appending our child block to the header block yields Outlook's own reply index."""
    when = KNOWN_START + timedelta(microseconds=KNOWN_DELTA // 10 + 1)

    assert encode_index(reply_index(base64.b64decode(KNOWN)[:22], when)) == KNOWN


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (0, "0000000000"),
        (2**18, "0000000100"),  # the smallest step DC 0 can show: 26.2 ms
        (2**49 - 1, "7fffffff00"),  # the largest DC 0 delta, about 1.78 years
        (2**49, "8400000000"),  # DC 1 from here on: bits 53..23
        (2**54 - 1, "ffffffff00"),
        (-5, "0000000000"),  # a parent from a clock that runs ahead
    ],
)
def test_child_block_bit_layout(delta: int, expected: str) -> None:
    """DC (1 bit), time delta (31 bits), random (8 bits), big-endian."""
    assert child_block(delta, 0).hex() == expected


def test_reply_levels_grow_by_five_bytes() -> None:
    """Each reply appends one child block to its parent's index: 22, 27, 32 bytes."""
    root = root_index(KNOWN_START, thread_guid("ticket:x:1"))
    first = reply_index(root, KNOWN_START + timedelta(hours=1))
    second = reply_index(first, KNOWN_START + timedelta(days=3))

    assert (len(root), len(first), len(second)) == (22, 27, 32)
    assert second[:27] == first
    delta = int.from_bytes(second[27:32], "big") >> 8 << 18
    assert abs(delta - timedelta(days=3) // timedelta(microseconds=1) * 10) < 2**18


def test_root_carries_the_conversation_start() -> None:
    """The header's time is the start time, to 2**16 * 100 ns (6.5 ms)."""
    started = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    assert abs(index_started(root_index(started, bytes(16))) - started) < timedelta(
        milliseconds=7)


@pytest.mark.parametrize(
    "text",
    [
        None, "", "not base64!", base64.b64encode(bytes(21)).decode(),
        base64.b64encode(b"\x01" + bytes(22)).decode(),  # 23 bytes: not 22 + 5n
        base64.b64encode(b"\x02" + bytes(21)).decode(),  # reserved byte is not 0x01
        "A" * 1000,
    ],
)
def test_invalid_indexes_are_ignored(text: str | None) -> None:
    """Anything but 0x01, 21 more bytes and whole 5-byte blocks is not an index."""
    assert parse_index(text) is None


def test_folded_index_is_accepted() -> None:
    """White space from folding inside the header value is ignored."""
    assert parse_index(KNOWN[:10] + "\r\n " + KNOWN[10:]) == base64.b64decode(KNOWN)


def test_very_deep_index_keeps_its_header_and_latest_levels() -> None:
    """Past 100 levels the oldest child blocks give way; the header block stays."""
    index = root_index(KNOWN_START, KNOWN_GUID) + bytes(5 * 100)

    deeper = reply_index(index, KNOWN_START)

    assert len(deeper) == 22 + 5 * 100
    assert deeper[:22] == index[:22]


# --------------------------------------------------------------------------
# References


def test_references_follow_the_parents_references() -> None:
    """RFC 5322 3.6.4: the parent's References, then its Message-ID."""
    assert reply_references(("a@x", "b@x"), ("b@x",), "c@x") == ("a@x", "b@x", "c@x")


def test_in_reply_to_only_parent_keeps_its_parent() -> None:
    """iOS writes only In-Reply-To: it takes the place of References (issue 10 item 6)."""
    assert reply_references((), ("first@x",), "second@x") == ("first@x", "second@x")


def test_in_reply_to_with_several_ids_is_not_used() -> None:
    """Only an In-Reply-To holding exactly one id stands in for References."""
    assert reply_references((), ("a@x", "b@x"), "c@x") == ("c@x",)


def test_made_up_parent_id_is_left_out() -> None:
    """A parent whose id we synthesised adds nothing of its own."""
    assert reply_references(("a@x",), (), None) == ("a@x",)


def test_trimming_keeps_the_first_and_the_latest() -> None:
    """Past the size bound the middle goes: the root and the newest ids stay, in order."""
    ids = [f"{i:03d}.{'x' * 40}@example.com" for i in range(200)]

    kept = trim_references(ids, 3000)

    assert kept[0] == ids[0]
    assert kept[1:] == ids[-(len(kept) - 1):]
    assert sum(len(mid) + 3 for mid in kept) <= 3000
    assert len(kept) == 1 + (3000 - 59) // 59


def test_short_references_are_kept_whole() -> None:
    """Under the bound nothing changes."""
    assert trim_references(["a@x", "b@x", "c@x"], 3000) == ["a@x", "b@x", "c@x"]


def test_filetime_helper_matches_the_known_start() -> None:
    """The test's own FILETIME arithmetic agrees with the known header bytes."""
    assert filetime(KNOWN_START) >> 16 == int.from_bytes(base64.b64decode(KNOWN)[:6], "big")
