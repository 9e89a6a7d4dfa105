"""The pure stage of ingest: everything about one mail that needs no database.

`prepare(raw, ...)` parses the mail, classifies it (RFC 3834 and friends),
decides whether it can become a ticket entry at all, and precomputes what an
agent's mail may need (the command block at its top, a customer's mail
forwarded inside it). It is pure and never raises for bad mail: a parser that
fails anyway is reported in `Prepared.problem`, which makes the caller
quarantine the mail.

Why a stage of its own (issues 9 §4, 12 §11, 13 §2): it is where all the
CPU-heavy, input-driven work happens, so it runs *before* the write
transaction opens (a slow mail never holds SQLite's write lock), and in a
worker process (`helpdesk.intake.pool`) whose time limit can really stop it
and whose CPU time does not freeze the daemon's other threads. `Prepared` and
`PrepareConfig` are plain, picklable data for that reason.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from helpdesk.mail.classify import classify
from helpdesk.mail.commands import CommandBlock, parse_commands
from helpdesk.mail.forwarded import ForwardedMail, find_forwarded
from helpdesk.mail.parse import detach
from helpdesk.mail.parse import parse as parse_message
from helpdesk.mail.trust import TrustPolicy, TrustVerdict, agent_trust
from helpdesk.values import (
    Address,
    AttachmentPart,
    MailClass,
    ParsedMessage,
    RegexResults,
    Verdict,
    without_subaddress,
)

__all__ = [
    "BOUNCE_SENDER",
    "DETACH_AT",
    "PrepareConfig",
    "Prepared",
    "detach_payloads",
    "prepare",
    "prepare_with",
]

# Attachments from this size on are not sent back from a worker (`detach_payloads`):
# below it, decoding them again would cost more than the copy.
DETACH_AT = 64 * 1024
# Stands in for the sender of a bounce that names none (a bare `MAILER-DAEMON`).
BOUNCE_SENDER = Address("mailer-daemon@unknown.invalid", "Mail Delivery System")


@dataclass(frozen=True, slots=True)
class PrepareConfig:
    """What the pure stage knows about this help desk: plain data, sent to worker processes."""

    own_addresses: frozenset[str] = frozenset()
    # Our X-Loop value (the support address): mail carrying it is our own.
    loop_id: str = ""
    # What makes mail from an agent's address the agent's ([security]).
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    # The rules' subject and body regexes, searched by the worker beside the
    # parse (`helpdesk.intake`), so that the writer only looks the results up.
    rule_patterns: tuple[str, ...] = ()

    def is_own_address(self, address: str) -> bool:
        """Our addresses and their ``+tag`` sub-addresses, in any case."""
        wanted = address.strip().lower()
        return wanted in self.own_addresses or without_subaddress(wanted) in self.own_addresses


@dataclass(frozen=True, slots=True)
class Prepared:
    """The outcome of the pure stage for one mail.

    `problem` set means the mail cannot become a ticket entry (not mail, no
    sender, the parser failed, the time limit stopped it): quarantine it with
    `problem` as the error and `detail` as the technical detail. `msg` may
    still be set then (for the quarantine's subject and sender columns).
    """

    msg: ParsedMessage | None
    verdict: Verdict
    problem: str | None = None
    detail: str = ""
    commands: CommandBlock | None = None
    forwarded: ForwardedMail | None = None
    # Would the sender be trusted as an agent (if it is one: the store knows)?
    trust: TrustVerdict | None = None
    seconds: float = 0.0
    # `PrepareConfig.rule_patterns` searched in the mail's subject and body.
    searched: RegexResults | None = None

    @classmethod
    def failed(cls, problem: str, detail: str = "") -> Prepared:
        """A mail the pure stage could not handle at all."""
        return cls(None, Verdict(MailClass.HUMAN), problem=problem, detail=detail)


def prepare(raw: bytes, config: PrepareConfig, envelope_sender: str | None = None) -> Prepared:
    """Parse, classify and check one raw mail (see the module docstring)."""
    return prepare_with(raw, parse=parse_message, is_own_address=config.is_own_address,
                        loop_id=config.loop_id, trust=config.trust,
                        envelope_sender=envelope_sender)


def prepare_with(
    raw: bytes,
    *,
    parse: Callable[..., ParsedMessage],
    is_own_address: Callable[[str], bool],
    loop_id: str,
    trust: TrustPolicy,
    envelope_sender: str | None = None,
) -> Prepared:
    """`prepare` with the parser and the own-address predicate given as callables.

    `envelope_sender` is the SMTP MAIL FROM where the source knows it (LMTP,
    the MTA pipe's $SENDER): the last resort for a mail whose headers name
    no sender (`helpdesk.mail.parse`).
    """
    try:
        msg = parse(raw, envelope_sender=envelope_sender) if envelope_sender else parse(raw)
    except Exception as exc:  # noqa: BLE001 - parse promises not to raise; if it does, keep the mail
        return Prepared.failed(f"parser failed: {exc!r}", traceback.format_exc(limit=8))
    verdict = classify(msg, raw, own_addresses=is_own_address, loop_id=loop_id)
    if msg.from_ is None and msg.headers and verdict.mail_class is MailClass.BOUNCE:
        # A bounce is a bounce whatever its From says (`MAILER-DAEMON <>`, none
        # at all): worth keeping on the ticket it returns.
        msg = dataclasses.replace(msg, from_=BOUNCE_SENDER, sender_source="bounce")
    problem = unusable(msg)
    if problem:
        return Prepared(msg, verdict, problem=problem)
    commands = None if verdict.automated else parse_commands(msg.new_text or msg.text)
    # A customer's mail forwarded on their behalf only matters for an agent's
    # new mail, but which senders are agents is the store's knowledge: look
    # for it here, where the time limit covers it, and let ingest decide.
    forwarded = None
    if commands is not None and not commands.is_note:
        forwarded = find_forwarded(msg)
    # Reading Authentication-Results is linear but input-sized: it belongs here too.
    # Only a sender named in From can be an agent: DKIM and SPF vouch for From,
    # not for a Reply-To or an envelope address we fell back on.
    trusted = None
    if not verdict.automated and msg.sender_source == "from":
        trusted = agent_trust(msg, trust)
    return Prepared(msg, verdict, commands=commands, forwarded=forwarded, trust=trusted)


def detach_payloads(prepared: Prepared, min_size: int = DETACH_AT) -> Prepared:
    """`prepared` with its mail's attachments of at least `min_size` bytes `detach`ed.

    A worker process sends this back instead: the store decodes those bytes
    again from the raw mail it holds anyway (`helpdesk.mail.parse.attach`),
    so a large attachment is never pickled, piped and unpickled as well
    (issue 12 item 10). The attachments of a mail attached to a forward were
    parsed from that mail, not from the raw one: they keep their bytes.
    """
    msg = prepared.msg
    if msg is None or not any(part.size >= min_size for part in msg.attachments):
        return prepared
    swapped = {id(part): detach(part) for part in msg.attachments if part.size >= min_size}

    def thin(parts: tuple[AttachmentPart, ...]) -> tuple[AttachmentPart, ...]:
        return tuple(swapped.get(id(part), part) for part in parts)

    forwarded = prepared.forwarded
    if forwarded is not None:
        forwarded = dataclasses.replace(forwarded, attachments=thin(forwarded.attachments))
    return dataclasses.replace(prepared, msg=dataclasses.replace(msg, attachments=thin(
        msg.attachments)), forwarded=forwarded)


def unusable(msg: ParsedMessage) -> str | None:
    """Why this parsed mail cannot become a ticket entry, or None.

    Only mail without headers, or without a usable address anywhere (From,
    Sender, Reply-To, Return-Path, the envelope; parse looks leniently), is
    quarantined: odd but valid senders are kept (issue 9 §14).
    """
    if not msg.headers:
        defects = ", ".join(msg.defects) or "no header lines"
        return f"not an e-mail message: no headers found ({defects})"
    if msg.from_ is None or "@" not in msg.from_.address:
        shown = repr(msg.from_header) if msg.from_header else "missing"
        return (f"no usable sender address anywhere (From is {shown}; no Sender, Reply-To, "
                "Return-Path or envelope sender)")
    return None
