"""Threading: which ticket does a message belong to? Pure; lookups are parameters.

Order of evidence (design.md §4):
1. the subject tag (`[#1042]`), because Outlook drops or rewrites References
   and people answer old mails from their sent folder;
2. `In-Reply-To`, then `References` newest first, against every stored
   Message-ID, incoming and outgoing.

A tag is a claim anyone can type. When the sender is not a participant of the
tagged ticket (and no header ties the mail to it), `foreign_tag` decides:
open a new ticket (default) or accept it with a note. A mail to a closed
ticket reopens it or opens a new, linked ticket (`closed_ticket`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from helpdesk.names import format_tag as format_tag  # re-exported: its users import it here
from helpdesk.values import (
    ParsedMessage,
    ThreadMatch,
    ThreadNote,
    ThreadReason,
    TicketStatus,
    TicketView,
)

# Reply and forward prefixes in the languages our users' clients speak:
# Re, Aw (de), Sv (sv/da/no), Vs (fi), Antw/Antwort (nl/de), Réf/Rép (fr),
# Fwd/Fw, Wg (de "weitergeleitet"), Tr (fr "transféré"), Rif (it), Enc (pt).
_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|antwort|ref|réf|rép|rif|fwd?|wg|tr|enc|odp|r)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)
# Merged tickets can chain; a bound protects against a cycle in bad data.
_MAX_MERGE_HOPS = 16


@dataclass(frozen=True, slots=True)
class ThreadPolicy:
    """What to do with a tag from a stranger and with mail to a closed ticket."""

    foreign_tag: str = "new_ticket"  # or "accept"
    closed_ticket: str = "reopen"  # or "new_ticket"


@lru_cache(maxsize=32)
def _tag_pattern(prefix: str) -> re.Pattern[str]:
    # Tolerates `[ #1042 ]`, `[#  1042]` and full-width brackets some clients produce.
    return re.compile(rf"[\[［]\s*{re.escape(prefix)}\s*(\d{{1,12}})\s*[\]］]")


def find_tag(subject: str, prefix: str = "#") -> int | None:
    """The ticket number in the first `[#N]` tag of `subject`, or None."""
    match = _tag_pattern(prefix).search(subject)
    return int(match.group(1)) if match else None


def with_tag(subject: str, ticket_id: int, prefix: str = "#") -> str:
    """`subject` with the ticket's tag in front, unless it already carries it."""
    tag = format_tag(ticket_id, prefix)
    return subject if tag in subject else f"{tag} {subject}".strip()


def reply_references(msg: ParsedMessage) -> tuple[str, ...]:
    """The References of a mail answering `msg`: its own chain, then `msg` (RFC 5322 §3.6.4)."""
    if msg.message_id_synthetic:
        return msg.references  # an id we made up means nothing to anyone else
    return (*msg.references, msg.message_id)


def clean_subject(subject: str, prefix: str = "#") -> str:
    """The subject without our tags and reply/forward prefixes, for a new ticket."""
    without_tags = _tag_pattern(prefix).sub(" ", subject)
    previous = None
    text = " ".join(without_tags.split())
    while previous != text:  # `Re: [#3] AW: x` needs two passes once the tag is gone
        previous = text
        text = _PREFIX.sub("", text).strip()
    return text or "(no subject)"


TicketLookup = Callable[[int], TicketView | None]
MessageIdLookup = Callable[[Sequence[str]], dict[str, int]]
AgentCheck = Callable[[str], bool]
SignedIdCheck = Callable[[str], int | None]


def _no_signed_ids(_message_id: str) -> int | None:
    return None


def match_thread(
    msg: ParsedMessage,
    *,
    get_ticket: TicketLookup,
    find_by_message_ids: MessageIdLookup,
    is_agent: AgentCheck,
    policy: ThreadPolicy,
    tag_prefix: str = "#",
    verify_signed_id: SignedIdCheck = _no_signed_ids,
) -> ThreadMatch:
    """Decide whether `msg` continues a ticket, and which; never raises for odd input.

    `find_by_message_ids` maps each known Message-ID to its ticket id;
    `get_ticket` returns a snapshot or None; `is_agent` tells staff addresses;
    `verify_signed_id` returns the ticket a Message-ID we signed belongs to
    (None for any other id, and for a forged one).
    """
    sender = msg.from_.address if msg.from_ else ""
    notes: list[ThreadNote] = []
    header_hits = find_by_message_ids(msg.thread_ids) if msg.thread_ids else {}
    # Our own signed ids thread even when the stored copy is gone (a restored
    # backup, another installation's database); a forged id verifies to nothing.
    for mid in msg.thread_ids:
        if mid not in header_hits:
            signed = verify_signed_id(mid)
            if signed is not None:
                header_hits[mid] = signed

    found = _by_tag(msg, sender, header_hits, get_ticket, is_agent, policy, tag_prefix, notes)
    if found is None:
        found = _by_headers(msg, header_hits, get_ticket, notes)
    if found is None:
        related = notes[0].ticket_id if notes else None
        return ThreadMatch(None, ThreadReason.NONE, related_ticket_id=related, notes=tuple(notes))

    ticket, reason = found
    if ticket.status == TicketStatus.CLOSED:
        if policy.closed_ticket == "new_ticket":
            notes.append(ThreadNote("closed_ticket", ticket.id, "closed; opened a new ticket"))
            return ThreadMatch(
                None, ThreadReason.NONE, related_ticket_id=ticket.id, notes=tuple(notes)
            )
        notes.append(ThreadNote("closed_ticket", ticket.id, "closed; reopened by a new mail"))
        return ThreadMatch(ticket.id, reason, reopen=True, notes=tuple(notes))

    # A requester answering a resolved ticket says it is not resolved yet.
    reopen = ticket.status == TicketStatus.RESOLVED and sender == (ticket.requester or "")
    return ThreadMatch(ticket.id, reason, reopen=reopen, notes=tuple(notes))


def _follow_merges(ticket: TicketView | None, get_ticket: TicketLookup) -> TicketView | None:
    hops = 0
    while ticket is not None and ticket.merged_into is not None and hops < _MAX_MERGE_HOPS:
        ticket = get_ticket(ticket.merged_into)
        hops += 1
    return ticket


def _by_tag(
    msg: ParsedMessage,
    sender: str,
    header_hits: dict[str, int],
    get_ticket: TicketLookup,
    is_agent: AgentCheck,
    policy: ThreadPolicy,
    tag_prefix: str,
    notes: list[ThreadNote],
) -> tuple[TicketView, ThreadReason] | None:
    tag = find_tag(msg.subject, tag_prefix)
    if tag is None:
        return None
    ticket = _follow_merges(get_ticket(tag), get_ticket)
    if ticket is None:
        notes.append(ThreadNote("unknown_tag", tag, f"no ticket {tag}; tag ignored"))
        return None
    # A header pointing at the same ticket is evidence the sender saw the thread.
    vouched = tag in header_hits.values() or ticket.id in header_hits.values()
    if sender and (sender in ticket.participants or is_agent(sender) or vouched):
        return ticket, ThreadReason.TAG
    if policy.foreign_tag == "accept":
        notes.append(
            ThreadNote("foreign_tag", ticket.id, f"{sender or 'unknown sender'} is not a "
                       "participant; accepted by policy")
        )
        return ticket, ThreadReason.TAG
    notes.append(
        ThreadNote("foreign_tag", ticket.id, f"{sender or 'unknown sender'} is not a "
                   "participant; opened a new ticket")
    )
    return None


def _by_headers(
    msg: ParsedMessage,
    header_hits: dict[str, int],
    get_ticket: TicketLookup,
    notes: list[ThreadNote],
) -> tuple[TicketView, ThreadReason] | None:
    # Nearest first: In-Reply-To, then References from the newest.
    for mid in msg.thread_ids:
        ticket_id = header_hits.get(mid)
        if ticket_id is None:
            continue
        if any(n.kind == "foreign_tag" and n.ticket_id == ticket_id for n in notes):
            continue
        ticket = _follow_merges(get_ticket(ticket_id), get_ticket)
        if ticket is None:
            continue
        reason = ThreadReason.IN_REPLY_TO if mid in msg.in_reply_to else ThreadReason.REFERENCES
        return ticket, reason
    return None
