"""mail/dsn.py: reading bounces in linear time gives what the old single regexes gave.

The old regexes are the oracle here: on short random texts (where their
backtracking costs nothing) the linear code must find exactly the same
addresses and cut the returned copy at exactly the same place. The time
bounds themselves are in tests/hostile/.
"""

from __future__ import annotations

import random
import re

import pytest

from helpdesk.mail import dsn
from helpdesk.mail.dsn import MAX_RECIPIENTS, find_addresses, parse_bounce_text

# The regexes mail/classify.py used before: correct, but quadratic on long runs.
OLD_ADDRESS_RE = re.compile(
    r"(?<![\w.+-])[\w!#$%&'*+/=?^`{|}~.-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+",
    re.I,
)
OLD_RETURNED_COPY_RE = re.compile(
    r"^[\s>-]*(?:this is a copy of|below this line is a copy of|original message"
    r"|unsent message below|returned message|message headers follow)",
    re.I | re.M,
)
PIECES = [*"ab.-@!+_ \n>K1é\"=;", "\u212a", "\u017f", "x.y", "@a.b", "\r\n", "u@ex.com",
          "original message", "This is a copy of", "550 5.1.1", "\t"]


def random_texts(seed: int, count: int) -> list[str]:
    rnd = random.Random(seed)
    return ["".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 25))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(4))
def test_find_addresses_matches_the_single_regex(seed: int) -> None:
    """The same addresses, in the same order, as the one regex they replace."""
    for text in random_texts(seed, 5000):
        expected = [m.group(0) for m in OLD_ADDRESS_RE.finditer(text)]
        assert list(find_addresses(text)) == expected, text


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("mail to dana@example.com failed", ["dana@example.com"]),
        ("a@example.com!b@example.org", ["a@example.com", "b@example.org"]),
        ("<bob.smith+x@mail.example.co.uk>.", ["bob.smith+x@mail.example.co.uk"]),
        ("x@localhost and @example.com", []),
        ("!" * 3000 + "@" + "a" * 3000, []),
    ],
)
def test_find_addresses_examples(text: str, addresses: list[str]) -> None:
    """Addresses in running text; a domain needs two labels; runs without one find nothing."""
    assert list(find_addresses(text)) == addresses


@pytest.mark.parametrize("seed", range(4))
def test_returned_copy_starts_where_the_old_regex_matched(seed: int) -> None:
    """Blank, ">" and "-" lines above the marker belong to the copy, as before."""
    for text in random_texts(seed + 10, 5000):
        old = OLD_RETURNED_COPY_RE.search(text)
        assert dsn._returned_copy(text) == (old.start() if old else len(text)), text


def test_addresses_below_the_returned_copy_are_not_recipients() -> None:
    """Blank lines between the report and the copy do not move the cut."""
    text = (
        "550 5.1.1 <gone@example.com>: user unknown\n" + "\n" * 500
        + ">\n------ This is a copy of the message\nTo: other@example.com\n"
    )
    report = parse_bounce_text(text)
    assert report is not None
    assert [r.address for r in report.recipients] == ["gone@example.com"]


def test_a_report_names_at_most_max_recipients() -> None:
    """A "bounce" listing thousands of addresses cannot suppress mail to all of them."""
    addresses = " ".join(f"user{i}@example.com" for i in range(MAX_RECIPIENTS * 3))
    report = parse_bounce_text(f"550 5.1.1 unknown: {addresses}")
    assert report is not None
    assert len(report.recipients) == MAX_RECIPIENTS
    assert report.recipients[0].address == "user0@example.com"
    assert report.recipients[0].status == "5.1.1"


def test_folded_dsn_fields_are_joined_once() -> None:
    """Continuation lines of a field are joined with single spaces, however many there are."""
    text = "Final-Recipient: rfc822; a@example.com\nDiagnostic-Code: smtp; 550\n" + (
        " more\n" * 1000
    )
    (block,) = dsn._text_blocks(text)
    assert block["diagnostic-code"] == "smtp; 550" + " more" * 1000
    assert block["final-recipient"] == "rfc822; a@example.com"
