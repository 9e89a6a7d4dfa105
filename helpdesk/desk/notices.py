"""Automatic notices to a ticket's requester, and the guards every automatic mail passes.

`resolution_notice` mails the requester that a ticket is resolved
(`templates/resolved.txt`); `helpdesk.desk.tickets.change_status` calls it for
every resolution, whichever path resolved the ticket (CLI, `#status`, a
rule, a timer). `why_no_automatic_mail` is the loop guard shared with rule
auto-replies (`helpdesk.desk.actions`): RFC 3834 section 2, our own addresses,
no-reply senders, permanent bounces and the per-address rate limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypedDict

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session

from helpdesk.delivery import anchors, outbox
from helpdesk.mail.classify import is_noreply_address
from helpdesk.store import batchreads, queries, schema
from helpdesk.store.direct import Direct
from helpdesk.store.models import AutoReplyLog, Event, Message, Ticket
from helpdesk.templates import (
    RenderedTemplate,
    TemplateRenderError,
    TemplateSet,
    build_context,
    fallback,
)
from helpdesk.thread import format_tag, with_tag
from helpdesk.values import Address, Direction, MailClass, MessageKind, OutgoingMail, Verdict


class MailContext(Protocol):
    """What queuing an automatic mail needs (`helpdesk.desk.actions.ActionContext` is one)."""

    @property
    def helpdesk_name(self) -> str: ...
    @property
    def support_address(self) -> str: ...
    @property
    def tag_prefix(self) -> str: ...
    @property
    def signer(self) -> outbox.Signer: ...
    @property
    def templates(self) -> TemplateSet: ...
    @property
    def is_own_address(self) -> Callable[[str], bool]: ...
    @property
    def auto_reply_limit(self) -> int: ...
    @property
    def auto_reply_window(self) -> timedelta: ...
    def automatic(self, keyword: str, *, to_staff: bool) -> AutomaticFields: ...


# RFC 3834 section 5.1 keywords.
AUTO_REPLIED = "auto-replied"  # a direct answer to a message
AUTO_GENERATED = "auto-generated"  # caused by time or by a change, not an answer


class AutomaticFields(TypedDict):
    """What makes an OutgoingMail automatic: RFC 3834 headers and the envelope sender."""

    automated: bool
    auto_submitted: str
    precedence: str | None
    envelope_sender: str | None


@dataclass(frozen=True)
class Notice:
    """How a resolution is announced to the requester.

    `ctx` is None where no mail can be sent (ingest without outgoing mail);
    `quiet` says why no notice is wanted (`--quiet`, `#status resolved quiet`,
    a rule's own automatic reply to the same mail); `verdict` is the
    classification of the mail that caused the resolution, for the loop guard.
    """

    ctx: MailContext | None
    quiet: str | None = None
    template: str = "resolved"
    verdict: Verdict | None = None
    correlation_id: str | None = None


def resolution_notice(
    session: Session,
    ticket: Ticket,
    notice: Notice,
    *,
    actor: str,
    now: datetime,
    message_row_id: int | None = None,
) -> outbox.Queued | None:
    """Queue `notice.template` to the requester through the outbox, unless quiet or guarded.

    The guards of every automatic mail apply (`why_no_automatic_mail`), and
    the requester's own last mail must not have been automated: a ticket an
    autoresponder or a mailing list opened is not answered. Every outcome is
    an event on the ticket (`notice.queued`, `notice.suppressed`, `notice.skipped`).
    """
    ctx, template = notice.ctx, notice.template

    def event(kind: str, detail: dict[str, object]) -> None:
        session.add(Event(ticket_id=ticket.id, message_row_id=message_row_id, actor=actor,
                          kind=kind, detail={"template": template, **detail}, created_at=now))

    requester = ticket.requester
    if notice.quiet or ctx is None or requester is None:
        why = notice.quiet or ("no outgoing mail configured" if ctx is None
                               else "the ticket has no requester")
        event("notice.skipped", {"reason": why})
        return None
    reason, _ = why_no_automatic_mail(session, requester.address, verdict=notice.verdict,
                                      ctx=ctx, now=now)
    reason = reason or _requester_is_automated(session, ticket)
    if reason is not None:
        event("notice.suppressed", {"to": requester.address, "reason": reason})
        return None
    rendered = _render_notice(session, ticket, template, ctx, actor, now)
    # On the requester's own thread (References, and Outlook's Thread-Index), so
    # the notice shows in that conversation.
    parent = anchors.after_row(session, ticket, requester_anchor(session, ticket),
                               ctx.signer.loop_id)
    mail = OutgoingMail(
        kind=MessageKind.SYSTEM,
        ticket_id=ticket.id,
        from_=Address(ctx.support_address, ctx.helpdesk_name),
        to=(Address(requester.address, requester.name),),
        subject=with_tag(rendered.subject, ticket.id, ctx.tag_prefix),
        body=rendered.body,
        reply_to=Address(ctx.support_address, ctx.helpdesk_name),
        in_reply_to=parent.in_reply_to,
        references=parent.references,
        thread_topic=ticket.subject,
        parent_thread_index=parent.parent_thread_index,
        # Caused by a change of state, not an answer to a mail (RFC 3834 §5).
        **ctx.automatic(AUTO_GENERATED, to_staff=False),
    )
    item = outbox.enqueue(session, mail, ctx.signer, now=now,
                          correlation_id=notice.correlation_id)
    session.add(AutoReplyLog(address=requester.address, ticket_id=ticket.id, sent_at=now))
    batchreads.auto_replied(session, requester.address, now)
    event("notice.queued", {"to": requester.address, "message_id": item.message_id})
    return item


def why_no_automatic_mail(
    session: Session,
    address: str,
    *,
    verdict: Verdict | None,
    ctx: MailContext,
    now: datetime,
) -> tuple[str | None, int]:
    """The reason not to mail `address` automatically (None: go ahead), and the count so far.

    No automatic mail answers automated mail (RFC 3834 section 2), goes to our
    own addresses, to no-reply senders, to an address that bounced
    permanently, or to a sender who had `auto_reply_limit` automatic mails in
    the window. `verdict` is the mail being answered, if there is one.
    """
    if verdict is not None and verdict.automated:
        why = verdict.reasons[0] if verdict.reasons else ""
        return f"automated: {verdict.mail_class.value} ({why})", 0
    if ctx.is_own_address(address):
        return "own_address: mail from one of our own addresses", 0
    if is_noreply_address(address):
        return f"noreply: {address} does not take replies", 0
    since = now - ctx.auto_reply_window
    ahead = batchreads.ahead_of(session)
    guards = ahead.guards(address, since) if ahead is not None else None
    if guards is None:
        # Both guards of the store in one statement: asked for every automatic mail.
        guards = _GUARDS.first(session.connection(), {"address": address, "since": since})
        assert guards is not None  # a SELECT without FROM returns its one row
    suppressed, count = guards
    if suppressed is not None and suppressed > now:
        return f"bounced: {address} bounced permanently; suppressed until {suppressed:%Y-%m-%d}", 0
    if count >= ctx.auto_reply_limit:
        return (f"rate_limit: {count} automatic replies to {address} in the last "
                f"{ctx.auto_reply_window.total_seconds() / 3600:g} h"), count
    return None, count


def suppressed_until(session: Session, address: str, now: datetime) -> datetime | None:
    """Until when automatic mail to `address` is suppressed (it bounced), or None."""
    until = session.connection().execute(_SUPPRESSED_UNTIL, {"address": address}).scalar()
    return until if until is not None and until > now else None


# Asked for every automatic mail inside ingest's group commit: Core statements.
_AUTO_REPLIES_SINCE = (
    select(func.count())
    .select_from(schema.auto_replies)
    .where(schema.auto_replies.c.address == bindparam("address"),
           schema.auto_replies.c.sent_at > bindparam("since"))
)
_SUPPRESSED_UNTIL = select(schema.suppressions.c.until).where(
    schema.suppressions.c.address == bindparam("address"))
_GUARDS = Direct(select(_SUPPRESSED_UNTIL.scalar_subquery(),
                        _AUTO_REPLIES_SINCE.scalar_subquery()))


def requester_anchor(session: Session, ticket: Ticket) -> Message | None:
    """The requester's newest mail written by a person, with a real Message-ID, if any."""
    if ticket.requester is None:
        return None
    return session.scalars(
        _from_requester(ticket)
        .where(Message.mail_class == MailClass.HUMAN.value,
               Message.message_id_synthetic.is_(False))
        .order_by(Message.id.desc())
        .limit(1)
    ).first()


def _requester_is_automated(session: Session, ticket: Ticket) -> str | None:
    # Judged by all of the requester's mail: a person whose out-of-office answered our
    # acknowledgement is still a person, a monitoring system that opened the ticket is not.
    classes = set(session.scalars(
        _from_requester(ticket).with_only_columns(Message.mail_class).distinct()))
    if not classes or MailClass.HUMAN.value in classes:
        return None
    return f"automated: the requester only ever sent automated mail ({', '.join(sorted(classes))})"


def _from_requester(ticket: Ticket) -> Select[Message]:
    assert ticket.requester is not None
    return select(Message).where(Message.ticket_id == ticket.id,
                                 Message.direction == Direction.INCOMING.value,
                                 Message.from_address == ticket.requester.address)


def _render_notice(session: Session, ticket: Ticket, template: str, ctx: MailContext,
                   actor: str, now: datetime) -> RenderedTemplate:
    requester = ticket.requester
    context = build_context(
        helpdesk_name=ctx.helpdesk_name,
        support_address=ctx.support_address,
        ticket=queries.view_of(ticket),
        reference=format_tag(ticket.id, ctx.tag_prefix),
        created_at=ticket.created_at,
        requester=Address(requester.address, requester.name) if requester else None,
    )
    try:
        return ctx.templates.render(template, context)
    except TemplateRenderError as exc:
        # The requester must not suffer from a broken template: send the built-in text.
        session.add(Event(ticket_id=ticket.id, actor=actor, kind="template.failed",
                          detail={"template": template, "error": str(exc)}, created_at=now))
        return fallback(template, context)
