"""Composing outgoing mail: microseconds per acknowledgement, beside the old way, same run.

What it measures (issue 13 item 3: composing an outgoing mail under 0.3 ms):

1. `compose()` of an acknowledgement as the acknowledge rule queues it (the
   shipped template's text, the requester's name and subject, In-Reply-To,
   References, a Thread-Index child block, Auto-Submitted, Precedence), for
   an ASCII requester and for a German one with a long subject, an en dash
   and an emoji;
2. the same mail through the old path, a copy of the previous compose kept
   in this file: headers set through the standard library's header registry
   (`EmailMessage` with `policy.SMTP`-like folding), body by `set_content`;
3. render + compose: the shipped template rendered (compiled once, at load)
   and the mail composed, what the acknowledge action costs besides the store;
4. a team's copy of a customer's reply with two attachments (a 20 KB PDF with
   a German name, a 150 KB photo), beside the same compose with the attachment
   parts written by `EmailMessage.set_content` as before (kept in this file);
5. with `--hostile`: a 100 KB and a 1 MB subject and display name through
   our folding (linear: the second takes about ten times the first), and the
   old path on 20 KB and 40 KB (quadratic: about four times; 1 MB took 45 s
   and 900 MB when issue 12 measured it).

Each figure is the median of `--rounds` timed loops of `--loops` mails
(after one warm-up loop), printed in microseconds per mail beside the target
(300 us) and as a ratio to the old path measured in the same run. The exit
code does not depend on the figures.

Run from the repository root:

    .venv/bin/python bench/compose.py [--loops 2000] [--rounds 7] [--hostile]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from pathlib import Path
from random import Random

if __package__ in (None, ""):  # run as `python bench/compose.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpdesk.mail import compose as compose_module
from helpdesk.mail.compose import compose, make_message_id, thread_index
from helpdesk.mail.conversation import root_index, thread_guid
from helpdesk.templates import build_context, load_templates
from helpdesk.thread import format_tag, with_tag
from helpdesk.values import (
    Address,
    AttachmentPart,
    MessageKind,
    OutgoingMail,
    ParsedMessage,
    Priority,
    TicketStatus,
    TicketView,
)

TARGET_US = 300.0
ROOT = Path(__file__).resolve().parent.parent
SUPPORT = Address("support@example.com", "Example IT")
DATE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = b"bench secret"


# --------------------------------------------------------------------------
# The mails


def acknowledgement(requester: Address, subject: str, message_id: str) -> OutgoingMail:
    """An acknowledgement as actions._auto_reply queues it, with the shipped template's text."""
    templates = load_templates(ROOT / "templates")
    rendered = templates.render("acknowledge", context(requester, subject, message_id))
    return OutgoingMail(
        kind=MessageKind.AUTO_REPLY,
        ticket_id=1042,
        from_=SUPPORT,
        to=(requester,),
        subject=with_tag(rendered.subject, 1042),
        body=rendered.body,
        reply_to=SUPPORT,
        in_reply_to=message_id,
        references=(message_id,),
        automated=True,
        auto_submitted="auto-replied",
        precedence="bulk",
        envelope_sender="",
        thread_topic=subject,
        parent_thread_index=root_index(DATE, thread_guid("ticket:support@example.com:1042")),
    )


def context(requester: Address, subject: str, message_id: str) -> dict[str, object]:
    message = ParsedMessage(message_id=message_id, message_id_synthetic=False, subject=subject,
                            from_=requester, text="Hi,\n\nit does not work.\n")
    ticket = TicketView(id=1042, status=TicketStatus.NEW, subject=subject,
                        requester=requester.address, priority=Priority.NORMAL)
    return build_context(helpdesk_name="Example IT", support_address=SUPPORT.address,
                         ticket=ticket, reference=format_tag(1042), created_at=DATE,
                         message=message, requester=requester)


ASCII = acknowledgement(Address("dana.reyes@example.com", "Dana Reyes"),
                        "VPN drops every hour", "ask-1@mail.example.com")
GERMAN = acknowledgement(
    Address("joerg.mueller@kunde.example", "Jörg Müller-Lüdenscheidt"),
    "Drucker im 3. Stock – Papierstau 😀 seit Montag früh, bitte dringend prüfen",
    "AM0PR04MB6433A1B2C3D4E5F6A7B8C9D@AM0PR04MB6433.eurprd04.prod.outlook.com",
)


# --------------------------------------------------------------------------
# The old path (the compose this project had before issue 10), kept for the baseline

_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _OldPolicy(EmailPolicy):
    def fold(self, name: str, value: str) -> str:
        if name.lower() in _ID_HEADERS:
            return _old_fold_ids(name, str(value), self.linesep)
        folded: str = super().fold(name, value)
        return folded

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in _ID_HEADERS:
            return _old_fold_ids(name, str(value), self.linesep).encode("ascii")
        return super().fold_binary(name, value)


_OLD_POLICY = _OldPolicy(linesep="\r\n")


def _old_fold_ids(name: str, value: str, linesep: str) -> str:
    lines = [f"{name}:"]
    for token in value.split():
        if len(lines[-1]) + 1 + len(token) > 78 and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += f" {token}"
    return linesep.join(lines) + linesep


def _old_check(value: str) -> str:
    if "\r" in value or "\n" in value or _CONTROL_RE.search(value):
        raise ValueError(value)
    return value


def _old_address(address: Address) -> HeaderAddress:
    local, _, domain = _old_check(address.address).rpartition("@")
    return HeaderAddress(display_name=_old_check(address.name), username=local,
                         domain=domain.encode("idna").decode("ascii"))


def old_compose(mail: OutgoingMail, *, message_id: str, date: datetime, loop_id: str) -> bytes:
    """The header-registry path: every header parsed and folded by the standard library."""
    msg = EmailMessage(policy=_OLD_POLICY)
    msg["Message-ID"] = f"<{message_id}>"
    msg["Date"] = format_datetime(date)
    msg["From"] = _old_address(mail.from_)
    if mail.reply_to is not None:
        msg["Reply-To"] = _old_address(mail.reply_to)
    msg["To"] = [_old_address(a) for a in mail.to]
    msg["Subject"] = " ".join(_old_check(mail.subject).split())
    if mail.in_reply_to:
        msg["In-Reply-To"] = f"<{mail.in_reply_to}>"
    refs = list(dict.fromkeys((*mail.references, mail.in_reply_to or "")))
    if any(refs):
        msg["References"] = " ".join(f"<{r}>" for r in refs if r)
    msg["Thread-Topic"] = _old_check(mail.thread_topic or "")
    msg["Thread-Index"] = thread_index(f"ticket:{loop_id}:{mail.ticket_id}", date)
    if mail.automated:
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Loop"] = loop_id
    text = mail.body.replace("\r\n", "\n")
    plain = text.isascii() and all(len(line) <= 998 for line in text.split("\n"))
    msg.set_content(text, subtype="plain", charset="utf-8",
                    cte="7bit" if plain else "quoted-printable")
    return msg.as_bytes()


def old_attachment_part(attachment: AttachmentPart) -> bytes:
    """The attachment part as compose wrote it before: through `EmailMessage.set_content`."""
    maintype, _, subtype = attachment.content_type.partition("/")
    part = EmailMessage(policy=EmailPolicy(linesep="\r\n"))
    part.set_content(attachment.content, maintype=maintype, subtype=subtype,
                     disposition="inline" if attachment.inline else "attachment",
                     filename=attachment.filename)
    del part["MIME-Version"]
    return part.as_bytes()


def bench_attachments(loops: int, rounds: int) -> None:
    random = Random(7)
    mail = replace(ASCII, automated=False, attachments=(
        AttachmentPart("Rechnung März 2026.pdf", "application/pdf", random.randbytes(20_000), ""),
        AttachmentPart("IMG_0042.jpg", "image/jpeg", random.randbytes(150_000), ""),
    ))
    mid = make_message_id(1042, domain="example.com", secret=SECRET, nonce="0123456789abcdef")

    def new() -> bytes:
        return compose(mail, message_id=mid, date=DATE, loop_id=SUPPORT.address)

    new_us = per_mail_us(new, max(1, loops // 10), rounds)
    ours = compose_module._attachment_part
    compose_module._attachment_part = old_attachment_part
    try:
        old_us = per_mail_us(new, max(1, loops // 20), rounds)
    finally:
        compose_module._attachment_part = ours
    print(f"{'compose, 2 attachments (170 KB)':34s} {new_us:7.0f} us/mail  (no target: base64 "
          f"of 170 KB)  {old_us / new_us:5.1f}x faster than set_content ({old_us:7.0f} us)")


# --------------------------------------------------------------------------
# Timing


def per_mail_us(work: Callable[[], object], loops: int, rounds: int) -> float:
    """Median over `rounds` of the microseconds one call of `work` takes."""
    for _ in range(max(1, loops // 10)):
        work()
    figures = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(loops):
            work()
        figures.append((time.perf_counter() - started) / loops * 1e6)
    return statistics.median(figures)


def report(label: str, new_us: float, old_us: float | None) -> None:
    verdict = "PASS" if new_us <= TARGET_US else "MISS"
    ratio = f"  {old_us / new_us:5.1f}x faster than the old path ({old_us:7.0f} us)" \
        if old_us else ""
    print(f"{label:34s} {new_us:7.0f} us/mail  target {TARGET_US:.0f} us  {verdict}{ratio}")


def bench_mail(label: str, mail: OutgoingMail, loops: int, rounds: int) -> None:
    mid = make_message_id(1042, domain="example.com", secret=SECRET, nonce="0123456789abcdef")

    def new() -> bytes:
        return compose(mail, message_id=mid, date=DATE, loop_id=SUPPORT.address)

    def old() -> bytes:
        return old_compose(mail, message_id=mid, date=DATE, loop_id=SUPPORT.address)

    new_us = per_mail_us(new, loops, rounds)
    old_us = per_mail_us(old, max(1, loops // 5), rounds)
    report(f"compose, {label}", new_us, old_us)


def bench_render(loops: int, rounds: int) -> None:
    templates = load_templates(ROOT / "templates")
    requester = Address("dana.reyes@example.com", "Dana Reyes")
    ctx = context(requester, "VPN drops every hour", "ask-1@mail.example.com")
    mid = make_message_id(1042, domain="example.com", secret=SECRET, nonce="0123456789abcdef")

    def render_and_compose() -> bytes:
        rendered = templates.render("acknowledge", ctx)
        mail = OutgoingMail(
            kind=MessageKind.AUTO_REPLY, ticket_id=1042, from_=SUPPORT, to=(requester,),
            subject=with_tag(rendered.subject, 1042), body=rendered.body, reply_to=SUPPORT,
            in_reply_to="ask-1@mail.example.com", references=("ask-1@mail.example.com",),
            automated=True, precedence="bulk", envelope_sender="",
            parent_thread_index=ASCII.parent_thread_index,
        )
        return compose(mail, message_id=mid, date=DATE, loop_id=SUPPORT.address)

    report("render + compose + Message-ID", per_mail_us(render_and_compose, loops, rounds), None)


def bench_hostile() -> None:
    """Megabyte-long subjects and names: linear for us, quadratic for the old path."""
    mid = "hostile@example.com"
    for size in (100_000, 1_000_000):
        word = "Ärger "
        huge = word * (size // len(word))
        mail = replace(ASCII, subject=huge, to=(Address("dana@example.com", huge),))
        started = time.perf_counter()
        compose(mail, message_id=mid, date=DATE, loop_id=SUPPORT.address)
        print(f"hostile, ours, {size // 1000:5d} KB subject+name  "
              f"{time.perf_counter() - started:8.2f} s")
    for size in (20_000, 40_000):
        huge = "Ärger " * (size // 6)
        mail = replace(ASCII, subject=huge, to=(Address("dana@example.com", huge),))
        started = time.perf_counter()
        old_compose(mail, message_id=mid, date=DATE, loop_id=SUPPORT.address)
        print(f"hostile, old,  {size // 1000:5d} KB subject+name  "
              f"{time.perf_counter() - started:8.2f} s")


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=2000, help="mails per timed loop")
    parser.add_argument("--rounds", type=int, default=7, help="timed loops; the median counts")
    parser.add_argument("--hostile", action="store_true", help="also 1 MB subjects and names")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    print(f"python {sys.version.split()[0]}; median of {args.rounds} rounds of {args.loops} "
          "mails (the old path: a fifth as many)")
    bench_mail("ASCII acknowledgement", ASCII, args.loops, args.rounds)
    bench_mail("German, long subject, emoji", GERMAN, args.loops, args.rounds)
    bench_render(args.loops, args.rounds)
    bench_attachments(args.loops, args.rounds)
    if args.hostile:
        bench_hostile()
    return 0


if __name__ == "__main__":
    sys.exit(main())
