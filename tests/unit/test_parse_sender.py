"""parse(): the lenient sender chain, and the bounds on what a mail can make big."""

from __future__ import annotations

import pytest

from helpdesk.mail.parse import mime as mime_module
from helpdesk.mail.parse import parse
from helpdesk.values import Address


def mail(*headers: str, body: str = "Hello\n") -> bytes:
    return ("\n".join(headers) + "\n\n" + body).encode("utf-8")


# --------------------------------------------------------------------------
# The sender chain

ALL_SOURCES = (
    "From: Dana <dana@example.org>",
    "Sender: sender@example.org",
    "Reply-To: reply@example.org",
    "Return-Path: <bounces@example.org>",
)


@pytest.mark.parametrize(
    ("dropped", "expected", "source"),
    [
        (0, "dana@example.org", "from"),
        (1, "sender@example.org", "sender"),
        (2, "reply@example.org", "reply-to"),
        (3, "bounces@example.org", "return-path"),
        (4, "envelope@example.org", "envelope"),
    ],
)
def test_sender_chain_order(dropped: int, expected: str, source: str) -> None:
    """From, then Sender, Reply-To, Return-Path, then the envelope: the first usable wins."""
    unusable = ("From: MAILER-DAEMON <>", "Sender: <>", "Reply-To: nobody", "Return-Path: <>")
    headers = [*unusable[:dropped], *ALL_SOURCES[dropped:], "Subject: x"]
    parsed = parse(mail(*headers), envelope_sender="envelope@example.org")
    assert parsed.from_ is not None
    assert (parsed.from_.address, parsed.sender_source) == (expected, source)
    assert ("no-from" in parsed.defects) == (dropped > 0)


def test_no_sender_anywhere() -> None:
    """With nothing usable anywhere there is no sender and the source is empty."""
    parsed = parse(mail("From: Postmaster <>", "Return-Path: <>", "Subject: x"))
    assert (parsed.from_, parsed.sender_source) == (None, "")
    assert parsed.from_header == "Postmaster <>"
    assert "no-from" in parsed.defects


@pytest.mark.parametrize("envelope", ["<>", "", "not an address", None])
def test_unusable_envelope_is_ignored(envelope: str | None) -> None:
    """The null reverse-path of a bounce (MAIL FROM:<>) is no sender."""
    parsed = parse(mail("Subject: x"), envelope_sender=envelope)
    assert parsed.from_ is None


def test_envelope_sender_order() -> None:
    """The source's envelope sender beats the mbox line, which beats Received."""
    received = (
        "Received: from relay.example.net by mx.example.com"
        " (envelope-from <received@example.net>); Mon, 1 Sep 2025 10:00:00 +0000"
    )
    raw = mail("From mbox@example.net Mon Sep  1 10:00:00 2025", received, "Subject: x")
    assert parse(raw, envelope_sender="<given@example.net>").from_ == Address("given@example.net")
    assert parse(raw).from_ == Address("mbox@example.net")
    assert parse(raw.split(b"\n", 1)[1]).from_ == Address("received@example.net")


def test_from_wins_over_envelope() -> None:
    """A usable From is the sender even when the envelope says otherwise (lists, forwarders)."""
    parsed = parse(mail("From: a@example.com"), envelope_sender="bounces@lists.example.com")
    assert (parsed.from_, parsed.sender_source) == (Address("a@example.com"), "from")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Big Bug bb@bug.com", Address("bb@bug.com", "Big Bug")),
        ("a@x.example b@y.example", Address("a@x.example")),
        ('<"System Administrator"@xxx.com>', Address('"system administrator"@xxx.com')),
        ('"John"@example.com', Address("john@example.com")),
        ("<Postmaster\\@example.com@xxx.com>", Address('"postmaster@example.com"@xxx.com')),
        ("lena at example.org (Lena Svensson)", Address("lena@example.org", "Lena Svensson")),
        ("Broken <dana@example.org", Address("dana@example.org", "Broken")),
        ("dana@example.org (Dana Reyes)", Address("dana@example.org", "Dana Reyes")),
        ("=?utf-8?q?J=C3=BCrgen?= jue@example.de", Address("jue@example.de", "Jürgen")),
        ("Ops <@relay.example:ops@example.org>", Address("ops@example.org", "Ops")),
    ],
)
def test_lenient_from(value: str, expected: Address) -> None:
    """The first thing in From that looks like an address is the sender."""
    parsed = parse(mail(f"From: {value}"))
    assert (parsed.from_, parsed.sender_source) == (expected, "from")


def test_from_header_is_kept_for_display() -> None:
    """from_header is the decoded From as written, even when the sender came from elsewhere."""
    parsed = parse(mail("From: =?utf-8?q?Caf=C3=A9_Team?= <>", "Sender: cafe@example.org"))
    assert parsed.from_header == "Café Team <>"
    assert parsed.sender_source == "sender"


def test_hash_does_not_depend_on_the_envelope() -> None:
    """The same mail from a source that knows the envelope and one that does not: one hash."""
    raw = mail("Subject: x", "Date: Mon, 1 Sep 2025 10:00:00 +0000")
    known = parse(raw, envelope_sender="x@example.org")
    assert known.sender_source == "envelope"
    assert parse(raw).content_hash == known.content_hash


def test_two_from_fields_are_a_defect() -> None:
    """With two From fields the first counts, and the defect says there were two."""
    parsed = parse(mail("From: first@example.org", "From: second@example.org"))
    assert parsed.from_ == Address("first@example.org")
    assert "duplicate-from" in parsed.defects


# --------------------------------------------------------------------------
# Bounds


def test_long_subject_is_bounded() -> None:
    """A megabyte subject is stored as 998 characters; the header tuple is bounded too."""
    parsed = parse(mail("From: a@example.com", "Subject: " + "word " * 200_000))
    assert len(parsed.subject) == 998
    assert parsed.subject.startswith("word word")
    assert "long-subject" in parsed.defects
    assert all(len(value) <= 8192 for _, value in parsed.headers)


def test_long_display_name_is_bounded() -> None:
    """A megabyte display name is stored as at most 998 characters."""
    name = "N" * 1_000_000
    parsed = parse(mail(f'From: "{name}" <n@example.com>', f'To: "{name}" <t@example.com>'))
    assert parsed.from_ is not None
    assert parsed.from_.address == "n@example.com"
    assert len(parsed.from_.name) == 998
    assert len(parsed.to[0].name) == 998
    assert len(parsed.from_header) <= 998
    assert {"long-display-name", "long-from"} <= set(parsed.defects)


def test_references_keep_the_first_and_the_last() -> None:
    """10,000 References: the root and the last 99 (RFC 5322 3.6.4); threading still works."""
    ids = [f"<m{i}@example.com>" for i in range(10_000)]
    folded = "\n ".join(" ".join(ids[i : i + 10]) for i in range(0, len(ids), 10))
    parsed = parse(mail("From: a@example.com", f"References: {folded}"))
    expected = ("m0@example.com", *(f"m{i}@example.com" for i in range(9_901, 10_000)))
    assert parsed.references == expected
    assert parsed.thread_ids[0] == "m9999@example.com"
    assert "long-references" in parsed.defects


def test_in_reply_to_is_bounded() -> None:
    """In-Reply-To is bounded the same way."""
    value = " ".join(f"<r{i}@example.com>" for i in range(500))
    parsed = parse(mail("From: a@example.com", f"In-Reply-To: {value}"))
    assert len(parsed.in_reply_to) == 100
    assert parsed.in_reply_to[0] == "r0@example.com"
    assert parsed.in_reply_to[-1] == "r499@example.com"


def test_address_lists_are_bounded() -> None:
    """5,000 recipients: the first 1,000 are kept, with a defect."""
    to = ", ".join(f"u{i}@example.com" for i in range(5_000))
    parsed = parse(mail("From: a@example.com", f"To: {to}"))
    assert len(parsed.to) == 1_000
    assert parsed.to[0] == Address("u0@example.com")
    assert "too-many-addresses:to" in parsed.defects


def test_header_fields_are_bounded() -> None:
    """A mail with 5,000 header fields keeps the first 1,000; the body is still found."""
    fields = [f"X-Junk-{i}: {i}" for i in range(5_000)]
    parsed = parse(mail("From: a@example.com", *fields, body="the body\n"))
    assert len(parsed.headers) == 1_000
    assert parsed.text == "the body"
    assert "too-many-headers" in parsed.defects


def test_mime_parts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts past the limit are not read (the raw mail keeps them); a defect says so."""
    monkeypatch.setattr(mime_module, "MAX_PARTS", 5)
    parts = "".join(
        f"--b\nContent-Type: application/octet-stream\n\npart {i}\n" for i in range(20)
    )
    raw = mail("From: a@example.com", "Content-Type: multipart/mixed; boundary=b", body=parts)
    parsed = parse(raw + b"--b--\n")
    assert len(parsed.attachments) == 5
    assert "too-many-parts" in parsed.defects
