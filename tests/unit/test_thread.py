"""Threading decisions, as a pure function of a message and lookups."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from helpdesk.thread import ThreadPolicy, clean_subject, find_tag, format_tag, match_thread
from helpdesk.values import (
    Address,
    ParsedMessage,
    ThreadReason,
    TicketStatus,
    TicketView,
)

DANA = "dana@example.com"
STRANGER = "mallory@example.net"
AGENT = "alice@it.example.com"


def message(
    subject: str = "Printer broken",
    sender: str = DANA,
    in_reply_to: tuple[str, ...] = (),
    references: tuple[str, ...] = (),
) -> ParsedMessage:
    return ParsedMessage(
        message_id="new@example.com",
        message_id_synthetic=False,
        subject=subject,
        from_=Address(sender),
        in_reply_to=in_reply_to,
        references=references,
    )


def ticket(
    ticket_id: int = 7,
    status: TicketStatus = TicketStatus.OPEN,
    participants: frozenset[str] = frozenset({DANA}),
    merged_into: int | None = None,
) -> TicketView:
    return TicketView(
        id=ticket_id,
        status=status,
        requester=DANA,
        participants=participants,
        merged_into=merged_into,
    )


def decide(
    msg: ParsedMessage,
    tickets: Sequence[TicketView] = (),
    ids: dict[str, int] | None = None,
    policy: ThreadPolicy | None = None,
):
    by_id = {t.id: t for t in tickets}
    known = ids or {}
    return match_thread(
        msg,
        get_ticket=by_id.get,
        find_by_message_ids=lambda wanted: {m: known[m] for m in wanted if m in known},
        is_agent=lambda address: address == AGENT,
        policy=policy or ThreadPolicy(),
    )


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[#1042] VPN down", 1042),
        ("Re: [#1042] VPN down", 1042),
        ("RE: AW: SV: [#1042] VPN down", 1042),
        ("AW: WG: Antw: Fwd: [ #1042 ] VPN", 1042),
        ("Re:[#  1042]VPN", 1042),
        ("VPN down ［#1042］", 1042),
        ("VPN down #1042", None),
        ("[1042] VPN down", None),
        ("", None),
    ],
)
def test_find_tag_tolerates_prefix_chains_and_spacing(subject: str, expected: int | None) -> None:
    """The tag is found behind any reply/forward chain and with mangled spacing."""
    assert find_tag(subject) == expected


def test_custom_tag_prefix() -> None:
    """A configured prefix such as `IT-` is honoured and `#` is then not a tag."""
    assert find_tag("Re: [IT-55] disk full", "IT-") == 55
    assert find_tag("Re: [#55] disk full", "IT-") is None
    assert format_tag(55, "IT-") == "[IT-55]"


def test_clean_subject_strips_tags_and_prefixes() -> None:
    """A new ticket's subject loses our tag and the reply prefixes."""
    assert clean_subject("RE: AW: [#12] Re: Laptop fan noise") == "Laptop fan noise"
    assert clean_subject("   ") == "(no subject)"
    assert clean_subject("Reply needed: server room") == "Reply needed: server room"


def test_no_evidence_opens_new_ticket() -> None:
    """A mail with neither tag nor known references starts a ticket."""
    match = decide(message())
    assert match.is_new
    assert match.reason is ThreadReason.NONE


def test_tag_from_participant_appends() -> None:
    """A tagged reply from the requester lands on that ticket."""
    match = decide(message("AW: [#7] Printer broken"), [ticket()])
    assert (match.ticket_id, match.reason) == (7, ThreadReason.TAG)
    assert match.notes == ()


def test_in_reply_to_beats_references() -> None:
    """In-Reply-To is used before References, and References newest first."""
    msg = message(
        "Re: Printer",
        in_reply_to=("b@x",),
        references=("a@x", "b@x"),
    )
    match = decide(msg, [ticket(1), ticket(2)], {"a@x": 1, "b@x": 2})
    assert (match.ticket_id, match.reason) == (2, ThreadReason.IN_REPLY_TO)
    msg = message("Re: Printer", references=("a@x", "c@x"))
    match = decide(msg, [ticket(1), ticket(3)], {"a@x": 1, "c@x": 3})
    assert (match.ticket_id, match.reason) == (3, ThreadReason.REFERENCES)


def test_foreign_tag_opens_new_ticket_by_default() -> None:
    """A stranger quoting someone else's tag gets a new ticket, with a note on both."""
    match = decide(message("Re: [#7] give me access", sender=STRANGER), [ticket()])
    assert match.is_new
    assert match.related_ticket_id == 7
    assert [n.kind for n in match.notes] == ["foreign_tag"]


def test_foreign_tag_accepted_by_policy() -> None:
    """With foreign_tag = accept the stranger's mail is appended, flagged."""
    match = decide(
        message("Re: [#7] info", sender=STRANGER), [ticket()],
        policy=ThreadPolicy(foreign_tag="accept"),
    )
    assert match.ticket_id == 7
    assert [n.kind for n in match.notes] == ["foreign_tag"]


def test_agent_is_never_foreign() -> None:
    """Staff may write on any ticket."""
    match = decide(message("Re: [#7] Printer", sender=AGENT), [ticket()])
    assert match.ticket_id == 7
    assert match.notes == ()


def test_header_match_vouches_for_tag() -> None:
    """A non-participant whose In-Reply-To points into the same ticket is accepted."""
    msg = message("Re: [#7] Printer", sender=STRANGER, in_reply_to=("m1@x",))
    match = decide(msg, [ticket()], {"m1@x": 7})
    assert match.ticket_id == 7
    assert match.notes == ()


def test_unknown_tag_falls_back_to_headers() -> None:
    """A tag naming no ticket is ignored with a note; References still thread it."""
    msg = message("Re: [#999] Printer", references=("m1@x",))
    match = decide(msg, [ticket()], {"m1@x": 7})
    assert (match.ticket_id, match.reason) == (7, ThreadReason.REFERENCES)
    assert [n.kind for n in match.notes] == ["unknown_tag"]


def test_resolved_ticket_reopens_for_requester_only() -> None:
    """The requester answering a resolved ticket reopens it; an agent's note does not."""
    resolved = ticket(status=TicketStatus.RESOLVED, participants=frozenset({DANA}))
    assert decide(message("Re: [#7] x"), [resolved]).reopen is True
    assert decide(message("Re: [#7] x", sender=AGENT), [resolved]).reopen is False


def test_closed_ticket_reopens_by_default() -> None:
    """Mail to a closed ticket reopens it when closed_ticket = reopen."""
    match = decide(message("Re: [#7] x"), [ticket(status=TicketStatus.CLOSED)])
    assert (match.ticket_id, match.reopen) == (7, True)
    assert [n.kind for n in match.notes] == ["closed_ticket"]


def test_closed_ticket_new_ticket_policy() -> None:
    """With closed_ticket = new_ticket a linked new ticket is opened instead."""
    match = decide(
        message("Re: [#7] x"), [ticket(status=TicketStatus.CLOSED)],
        policy=ThreadPolicy(closed_ticket="new_ticket"),
    )
    assert match.is_new
    assert match.related_ticket_id == 7


def test_merged_ticket_is_followed() -> None:
    """A tag of a merged ticket threads onto the ticket it was merged into."""
    tickets = [ticket(7, merged_into=9), ticket(9)]
    assert decide(message("Re: [#7] x"), tickets).ticket_id == 9


def test_merge_cycle_does_not_hang() -> None:
    """Bad data (a merge cycle) cannot loop forever."""
    tickets = [ticket(7, merged_into=8), ticket(8, merged_into=7)]
    assert decide(message("Re: [#7] x"), tickets).ticket_id in (7, 8)
