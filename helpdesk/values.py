"""Values that cross layers: frozen dataclasses and enums, nothing else (the enums the
store keeps and the CLI shows live in `helpdesk.names`, re-exported here).

Everything here is plain data. Pure stages (parse, thread, rules) take and
return these; services turn them into rows; the CLI renders them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

# Re-exported (`X as X`): most of the code imports these from here.
from helpdesk.names import OPEN_STATUSES as OPEN_STATUSES
from helpdesk.names import QUARANTINE_HELD as QUARANTINE_HELD
from helpdesk.names import QUARANTINE_STATES as QUARANTINE_STATES
from helpdesk.names import Direction as Direction
from helpdesk.names import MessageKind as MessageKind
from helpdesk.names import Priority as Priority
from helpdesk.names import TicketStatus as TicketStatus
from helpdesk.names import without_subaddress as without_subaddress


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox from an address header; `address` is lower-cased for comparison."""

    address: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


@dataclass(frozen=True, slots=True)
class PayloadSpan:
    """Where an attachment lies in the raw mail it was parsed from, still encoded.

    `encoding` is its Content-Transfer-Encoding ("" when none), `message` says
    that it is a message/* part (kept with CRLF line ends), `size` is the
    size of the decoded bytes. See `AttachmentPart.detached`.
    """

    start: int
    end: int
    encoding: str
    message: bool
    size: int


@dataclass(frozen=True, slots=True)
class AttachmentPart:
    """A decoded attachment with a file name that is safe to write anywhere.

    `span` says where it lies in the raw mail (parse sets it; not for the
    attachments of a mail found inside another). A `detached` part carries
    no `content`: its bytes are decoded from the raw mail where they are
    stored (`helpdesk.mail.parse.attach`), so that a worker process does not
    send a copy of a large attachment back with its result (issue 12 item 10).
    """

    filename: str
    content_type: str
    content: bytes
    sha256: str
    inline: bool = False
    content_id: str | None = None
    span: PayloadSpan | None = field(default=None, compare=False, repr=False)
    detached: bool = False

    @property
    def size(self) -> int:
        return self.span.size if self.detached and self.span is not None else len(self.content)


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """Everything ingest needs from one raw mail, decoded and normalised.

    `message_id`, `in_reply_to` and `references` hold ids without angle
    brackets. When the mail has no Message-ID, `message_id` is derived from
    `content_hash` and `message_id_synthetic` is true, so that a redelivery of
    the same mail is still recognised.

    `from_` is the sender: the first usable address of From, else of Sender,
    Reply-To, Return-Path, else the envelope sender; `sender_source` says
    which ("from", "sender", "reply-to", "return-path", "envelope", or ""
    when there is none). `from_header` is the From field as decoded, for
    display, whatever it holds. Subjects and display names are at most 998
    characters, `references` the first and the last 99 ids (RFC 5322 3.6.4).
    """

    message_id: str
    message_id_synthetic: bool
    subject: str
    from_: Address | None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    date: datetime | None = None
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    text: str = ""
    new_text: str = ""
    quoted_text: str = ""
    html: str | None = None
    attachments: tuple[AttachmentPart, ...] = ()
    defects: tuple[str, ...] = ()
    content_hash: str = ""
    size: int = 0
    sender_source: str = ""
    from_header: str = ""

    def header(self, name: str) -> str | None:
        """The first decoded value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def header_all(self, name: str) -> tuple[str, ...]:
        """Every decoded value of header `name`, in order."""
        wanted = name.lower()
        return tuple(value for key, value in self.headers if key.lower() == wanted)

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Ids this mail answers, nearest first: In-Reply-To, then References newest first."""
        seen: dict[str, None] = {}
        for mid in (*self.in_reply_to, *reversed(self.references)):
            seen.setdefault(mid, None)
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a raw message came from; IMAP origins identify the exact server copy."""

    source: str  # "stdin", "file", "maildir", "mbox", "imap", "lmtp", "demo", "retry"
    mailbox: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None
    path: str | None = None
    recipient: str | None = None

    def describe(self) -> str:
        """A short human description, for logs and the CLI."""
        if self.source == "imap":
            return f"imap:{self.mailbox} uid {self.uid} (uidvalidity {self.uidvalidity})"
        if self.path:
            return f"{self.source}:{self.path}"
        return self.source


@dataclass(frozen=True, slots=True)
class Incoming:
    """One raw mail a source hands to ingest, and where it came from.

    `problem` is set when the source already knows the mail cannot be taken
    (too large, unreadable on the server): it is quarantined with that error
    and whatever bytes `raw` holds (its headers, or nothing).
    """

    raw: bytes
    origin: Origin
    problem: str | None = None
    # The SMTP MAIL FROM, where the source knows it (LMTP, the MTA pipe).
    envelope_sender: str | None = None
    # When the mail reached the server we read it from (IMAP INTERNALDATE), where the
    # source knows it: the start of the arrival-to-commit latency the daemon measures.
    arrived_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RegexResults:
    """Admin rule regexes searched ahead of time (in a parsing worker), for one mail.

    For the exact `subject` and `body` strings they were searched in: each
    pattern's first match as (start, end), or None for no match. A pattern
    missing here (or other text) is searched when the rules run.
    """

    subject: str
    body: str
    in_subject: Mapping[str, tuple[int, int] | None]
    in_body: Mapping[str, tuple[int, int] | None]


@dataclass(frozen=True, slots=True)
class TicketView:
    """A frozen snapshot of a ticket, as pure logic (threading, rules) sees it."""

    id: int
    status: TicketStatus
    subject: str = ""
    requester: str | None = None
    participants: frozenset[str] = frozenset()
    merged_into: int | None = None
    team: str | None = None
    assignee: str | None = None
    priority: Priority = Priority.NORMAL
    tags: frozenset[str] = frozenset()


class ThreadReason(StrEnum):
    """Why a message was attached to a ticket (or not)."""

    TAG = "tag"
    IN_REPLY_TO = "in_reply_to"
    REFERENCES = "references"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ThreadNote:
    """Something threading decided that belongs in the audit trail."""

    kind: str  # "foreign_tag", "closed_ticket", "merged", "unknown_tag"
    ticket_id: int
    detail: str


@dataclass(frozen=True, slots=True)
class ThreadMatch:
    """The threading verdict: append to `ticket_id`, or open a new ticket when it is None."""

    ticket_id: int | None
    reason: ThreadReason
    reopen: bool = False
    related_ticket_id: int | None = None
    notes: tuple[ThreadNote, ...] = ()

    @property
    def is_new(self) -> bool:
        return self.ticket_id is None


class OutcomeKind(StrEnum):
    """What ingest did with one message."""

    NEW_TICKET = "new_ticket"
    REPLY = "reply"
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """The result of ingesting one raw message; ingest never raises for bad input."""

    kind: OutcomeKind
    ticket_id: int | None = None
    message_row_id: int | None = None
    message_id: str | None = None
    quarantine_id: int | None = None
    error: str | None = None
    notes: tuple[str, ...] = field(default=())
    mail_class: str = "human"
    rules_fired: tuple[str, ...] = ()
    mails_queued: tuple[str, ...] = ()
    # Why automatic mail was not sent (auto-replies suppressed by reason).
    suppressed: tuple[str, ...] = ()


# --------------------------------------------------------------------------
# Classification of automated mail (RFC 3834 and what real servers send)


class MailClass(StrEnum):
    """What kind of sender wrote a mail, as far as loop protection is concerned."""

    HUMAN = "human"
    AUTO_REPLY = "auto_reply"  # out-of-office, vacation, autoresponders
    BOUNCE = "bounce"  # DSNs and non-delivery reports
    LIST = "list"  # mailing lists and bulk mail
    OWN = "own"  # our own addresses or our X-Loop


@dataclass(frozen=True, slots=True)
class BounceRecipient:
    """One recipient of a delivery status notification (RFC 3464)."""

    address: str
    action: str  # failed, delayed, delivered, relayed, expanded
    status: str  # e.g. "5.1.1"
    diagnostic: str = ""

    @property
    def permanent(self) -> bool:
        """A 5.x.x status of a failed delivery: the address will not work next time either."""
        return self.action == "failed" and self.status.startswith("5")


@dataclass(frozen=True, slots=True)
class BounceReport:
    """What a bounce says: who failed, how, and which mail of ours it returns."""

    recipients: tuple[BounceRecipient, ...]
    original_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The classification of one mail; automated mail is stored but never answered."""

    mail_class: MailClass
    reasons: tuple[str, ...] = ()
    bounce: BounceReport | None = None

    @property
    def automated(self) -> bool:
        return self.mail_class is not MailClass.HUMAN


# --------------------------------------------------------------------------
# Rules: actions and the evaluation trace


@dataclass(frozen=True, slots=True)
class SetTeam:
    team: str


@dataclass(frozen=True, slots=True)
class SetAssignee:
    agent: str  # an agent's address


@dataclass(frozen=True, slots=True)
class SetPriority:
    priority: Priority


@dataclass(frozen=True, slots=True)
class AddTags:
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SetStatus:
    status: TicketStatus


@dataclass(frozen=True, slots=True)
class AutoReply:
    """Answer the sender with a template (never to automated mail; rate-limited)."""

    template: str


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward the mail to a team's address or to an address, with a template."""

    template: str
    team: str | None = None
    address: str | None = None


Action = SetTeam | SetAssignee | SetPriority | AddTags | SetStatus | AutoReply | Forward


@dataclass(frozen=True, slots=True)
class RuleInput:
    """What rules know about a mail besides its content."""

    mailbox: str | None = None
    recipients: tuple[str, ...] = ()  # envelope recipients, or To/Cc when unknown
    is_new: bool = True
    verdict: Verdict = Verdict(MailClass.HUMAN)


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule's result: whether it matched, why, and what it contributed."""

    rule: str
    file: str
    matched: bool
    reasons: tuple[str, ...] = ()
    actions: tuple[Action, ...] = ()
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The actions to take, in order, and the trace of every rule looked at."""

    actions: tuple[Action, ...] = ()
    trace: tuple[RuleTrace, ...] = ()

    @property
    def fired(self) -> tuple[str, ...]:
        return tuple(t.rule for t in self.trace if t.matched)


# --------------------------------------------------------------------------
# Outgoing mail


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """A mail we send, before it is composed into bytes."""

    kind: MessageKind
    ticket_id: int | None
    from_: Address
    to: tuple[Address, ...]
    subject: str
    body: str
    cc: tuple[Address, ...] = ()
    reply_to: Address | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    automated: bool = False  # adds Auto-Submitted, X-Auto-Response-Suppress
    thread_topic: str | None = None  # the ticket's subject, for Outlook's Thread-Topic
    attachments: tuple[AttachmentPart, ...] = ()
    extra_headers: tuple[tuple[str, str], ...] = ()
    # The SMTP envelope sender (MAIL FROM, RFC 5321 section 4.1.1.2): None is
    # `from_.address`; "" is the null sender `<>`, which automatic mail uses so
    # that bounces and autoresponders do not answer it (RFC 3834 section 3.3).
    envelope_sender: str | None = None
    # The Auto-Submitted keyword of automated mail (RFC 3834 section 5):
    # "auto-replied" answers a message, "auto-generated" is caused by time or state.
    auto_submitted: str = "auto-replied"
    # A Precedence header (e.g. "bulk"), which vacation programs still look for.
    precedence: str | None = None
    # The conversation index (Thread-Index, MS-OXOMSG) of the mail this one
    # answers; compose appends this mail's child block. None: a new root.
    parent_thread_index: bytes | None = None

    @property
    def envelope_from(self) -> str:
        """The MAIL FROM address; "" for the null sender `<>`."""
        return self.from_.address if self.envelope_sender is None else self.envelope_sender
