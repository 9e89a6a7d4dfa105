"""The fixture corpus through parse() and classify(): who sent each mail, and what ingest
would quarantine under the rule parse proposes to it.

The rule: quarantine a mail that has no header at all (not mail), or that names no
usable sender anywhere (From, Sender, Reply-To, Return-Path, the envelope) and is not
a bounce; a bounce is kept whatever its From says (classify decides what a bounce is).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdesk.mail.classify import classify
from helpdesk.mail.parse import parse
from helpdesk.values import Address, MailClass, ParsedMessage

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = ROOT / "tests" / "messages"
DEMO = ROOT / "helpdesk" / "demo_mail"
CORPUS = sorted([*MESSAGES.rglob("*.eml"), *DEMO.glob("*.eml")])


def would_quarantine(parsed: ParsedMessage, raw: bytes) -> bool:
    """The quarantine rule proposed to ingest (see the module docstring)."""
    if not parsed.headers:
        return True
    verdict = classify(parsed, raw, own_addresses=frozenset(), loop_id="")
    return parsed.from_ is None and verdict.mail_class is not MailClass.BOUNCE


def test_corpus_quarantine_count() -> None:
    """Of every fixture, only what is not mail at all would be quarantined."""
    quarantined = sorted(
        str(path.relative_to(ROOT))
        for path in CORPUS
        if would_quarantine(parse(raw := path.read_bytes()), raw)
    )
    assert len(CORPUS) >= 60
    assert quarantined == [
        "helpdesk/demo_mail/06-malformed.eml",
        "tests/messages/hostile/garbage.eml",
    ]


@pytest.mark.parametrize(
    ("relative", "sender", "source", "from_header"),
    [
        (
            "flufl-bounce/jetmail-empty-from.eml",
            Address("python-list-owner@python.org"),
            "sender",
            '"Jetmail System" <>',
        ),
        (
            "flufl-bounce/postmaster-empty-from.eml",
            Address("mailer-daemon@sb7.songbird.com"),
            "return-path",
            "Postmaster <>",
        ),
        (
            "flufl-bounce/quoted-local-part.eml",
            Address('"system administrator"@example.com'),
            "from",
            '<"System Administrator"@example.com>',
        ),
        (
            "flufl-bounce/escaped-at-in-local-part.eml",
            Address('"postmaster@example.com"@xxx.com'),
            "from",
            "<Postmaster\\@example.com@xxx.com>",
        ),
        (
            "rspamd/no-from-envelope-in-received.eml",
            Address("upwest201diana@outlook.com"),
            "envelope",
            "",
        ),
        ("rspamd/folded-from-name.eml", Address("any@attack.com"), "from", "<any@attack.com>"),
        (
            "mail-parser/address-as-display-name.eml",
            Address("bob@example.com", "alice@example.com"),
            "from",
            "alice@example.com <bob@example.com>",
        ),
        (
            "odd-senders/no-angle-brackets.eml",
            Address("bb@bug.com", "Big Bug"),
            "from",
            "Big Bug bb@bug.com",
        ),
        (
            "odd-senders/two-bare-addresses.eml",
            Address("anna.berg@example.org"),
            "from",
            "anna.berg@example.org ben.okafor@example.org",
        ),
        (
            "odd-senders/archive-at-form.eml",
            Address("lena@example.org", "Lena Svensson"),
            "from",
            "lena at example.org (Lena Svensson)",
        ),
        (
            "odd-senders/display-name-only-reply-to.eml",
            Address("printer-admin@example.org"),
            "reply-to",
            '"Printer on floor 3"',
        ),
        ("odd-senders/sender-only.eml", Address("ops-alerts@example.org"), "sender", ""),
        (
            "odd-senders/return-path-only.eml",
            Address("root@backup01.example.org"),
            "return-path",
            "",
        ),
        ("odd-senders/mbox-envelope-only.eml", Address("backup@nas.example.org"), "envelope", ""),
        ("odd-senders/mailer-daemon-empty-address.eml", None, "", "MAILER-DAEMON <>"),
        ("odd-senders/empty-angle-address.eml", None, "", "<>"),
    ],
)
def test_real_world_senders(
    relative: str, sender: Address | None, source: str, from_header: str
) -> None:
    """Each odd shape yields the sender it names, where it named it, and is not quarantined."""
    raw = (MESSAGES / relative).read_bytes()
    parsed = parse(raw)
    assert (parsed.from_, parsed.sender_source, parsed.from_header) == (
        sender,
        source,
        from_header,
    )
    assert not would_quarantine(parsed, raw)


@pytest.mark.parametrize(
    "relative",
    ["odd-senders/mailer-daemon-empty-address.eml", "odd-senders/empty-angle-address.eml"],
)
def test_bounces_without_sender_are_kept_as_bounces(relative: str) -> None:
    """A DSN from "MAILER-DAEMON <>" has no sender; it is a bounce, so it is not quarantined."""
    raw = (MESSAGES / relative).read_bytes()
    parsed = parse(raw)
    assert parsed.from_ is None
    assert "no-from" in parsed.defects
    verdict = classify(parsed, raw, own_addresses=frozenset(), loop_id="")
    assert verdict.mail_class is MailClass.BOUNCE


def test_the_rule_quarantines_a_mail_without_any_sender() -> None:
    """A human-looking mail naming nobody anywhere is the one thing the rule quarantines."""
    raw = b"To: support@example.com\nSubject: hello\nDate: Mon, 1 Sep 2025 10:00:00 +0000\n\nhi\n"
    parsed = parse(raw)
    assert (parsed.from_, parsed.sender_source) == (None, "")
    assert would_quarantine(parsed, raw)
    with_envelope = parse(raw, envelope_sender="dana@example.org")
    assert with_envelope.from_ == Address("dana@example.org")
    assert not would_quarantine(with_envelope, raw)
