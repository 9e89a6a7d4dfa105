"""Names every layer shares and that are cheap to import: no dataclass is built here.

The directions, kinds, statuses and priorities the store keeps and the CLI
shows, how an address is named without its subaddress, and how a ticket is
referred to. Reading commands and the settings import this module alone;
`helpdesk.values` and `helpdesk.thread` re-export its names for the rest.
"""

from __future__ import annotations

from enum import StrEnum


class Direction(StrEnum):
    """Which way a message travelled."""

    INCOMING = "in"
    OUTGOING = "out"


class MessageKind(StrEnum):
    """What a stored message is to the ticket (design.md §3)."""

    CUSTOMER = "customer"
    AGENT_REPLY = "agent_reply"
    NOTE = "note"
    AUTO_REPLY = "auto_reply"
    FORWARD = "forward"
    SYSTEM = "system"


class TicketStatus(StrEnum):
    """Life cycle of a ticket; `resolved` reopens on a requester reply, `closed` is final."""

    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


# Tickets someone still has to work on; `helpdesk stats` and `teams list` count these.
OPEN_STATUSES: tuple[TicketStatus, ...] = (
    TicketStatus.NEW,
    TicketStatus.OPEN,
    TicketStatus.PENDING,
)


# What became of a quarantined mail (helpdesk.flow.quarantine): waiting for a person,
# ingested by a retry, replaced by a corrected copy, or dropped by a person.
QUARANTINE_HELD = "held"
QUARANTINE_STATES: tuple[str, ...] = ("held", "resolved", "released", "discarded")


class Priority(StrEnum):
    """Ticket priority, lowest first."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


def without_subaddress(address: str) -> str:
    """``support+vpn@example.org`` → ``support@example.org``."""
    local, _, domain = address.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}" if local else address


def tag_prefix_problem(prefix: str) -> str | None:
    """What is wrong with `prefix` as the tag prefix of `[#1042]`, or None."""
    if not prefix or "]" in prefix or any(char.isspace() for char in prefix):
        return f"must be non-empty, without ']' or whitespace (got {prefix!r})"
    return None


def format_tag(ticket_id: int, prefix: str = "#") -> str:
    """The reference people see and type: `[#1042]`."""
    return f"[{prefix}{ticket_id}]"
