"""Assemble what ingest and the sender need from settings, rule files, templates and the store.

Called at start-up by the CLI and the daemon, and again on SIGHUP: a broken
rule or template file raises (`RuleError`, `TemplateError`) and the caller
keeps what it had.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.delivery import signing
from helpdesk.delivery.outbox import OutboxPolicy, Signer
from helpdesk.desk.actions import ActionContext
from helpdesk.flow.ingest import IngestContext
from helpdesk.mail.compose import ticket_from_message_id
from helpdesk.mail.prepare import PrepareConfig
from helpdesk.mail.trust import TrustPolicy
from helpdesk.rules import RuleSet, load_rules
from helpdesk.settings import Settings
from helpdesk.store.models import AgentAddress, Team, utcnow
from helpdesk.templates import TemplateSet, load_templates
from helpdesk.thread import ThreadPolicy

# Templates that always exist: the built-in fallback texts stand in for them.
BUILTIN_TEMPLATES = frozenset({"acknowledge", "password-reset", "team-forward", "agent-reply",
                               "resolved", "escalated"})


@dataclass(frozen=True)
class Configured:
    """Rules and templates as loaded from their directories."""

    rules: RuleSet
    templates: TemplateSet


def load_configured(session: Session | None, settings: Settings) -> Configured:
    """Load templates, then rules checked against the teams, agents and templates that exist.

    Without a session (no database yet) only the config's teams and agents count.
    """
    directory = settings.templates.dir
    templates = load_templates(directory) if directory.exists() else TemplateSet()
    teams = {t.name for t in settings.teams}
    agents = {a for agent in settings.agents for a in agent.addresses}
    if session is not None:
        teams |= set(session.scalars(select(Team.name)))
        agents |= set(session.scalars(select(AgentAddress.address)))
    rules = load_rules(
        settings.rules.dir,
        teams=teams,
        agents=agents,
        templates=templates.names | BUILTIN_TEMPLATES,
    )
    return Configured(rules, templates)


def signer(session: Session, settings: Settings) -> Signer:
    """The domain, key and X-Loop id our outgoing mail is signed with."""
    secret = settings.helpdesk.secret
    key = signing.signing_key(session, secret.get_secret_value() if secret else None)
    return Signer(domain=settings.helpdesk.domain, key=key,
                  loop_id=settings.helpdesk.support_address)


def ingest_context(
    session: Session,
    settings: Settings,
    configured: Configured | None,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> IngestContext:
    """The ingest context; without `configured`, mail is stored and threaded but no rule runs."""
    hd = settings.helpdesk
    sign = signer(session, settings)
    trust = TrustPolicy(
        authserv_id=settings.security.trusted_authserv_id,
        authres_fields=settings.security.trusted_authres_fields,
        trust_from_header=settings.security.trust_from_header,
    )
    domains = frozenset({hd.domain})
    actions = None
    if configured is not None:
        team_addresses = {t.name: t.address for t in session.scalars(select(Team))}
        team_addresses.update({t.name: t.address for t in settings.teams})
        actions = ActionContext(
            helpdesk_name=hd.name,
            support_address=hd.support_address,
            tag_prefix=hd.tag_prefix,
            signer=sign,
            templates=configured.templates,
            teams=team_addresses,
            is_own_address=settings.is_own_address,
            auto_reply_limit=settings.auto_reply.max_per_sender,
            auto_reply_window=timedelta(hours=settings.auto_reply.window_hours),
            requester_envelope=settings.outbox.requester_envelope_sender,
            staff_envelope=settings.outbox.staff_envelope_sender,
            precedence_bulk=settings.outbox.precedence_bulk,
        )
    return IngestContext(
        tag_prefix=hd.tag_prefix,
        policy=ThreadPolicy(
            foreign_tag=settings.threading.foreign_tag,
            closed_ticket=settings.threading.closed_ticket,
        ),
        is_own_address=settings.is_own_address,
        clock=clock,
        loop_id=hd.support_address,
        verify_signed_id=lambda mid: ticket_from_message_id(
            mid, secret=sign.key, domains=domains
        ),
        rules=configured.rules if configured else None,
        actions=actions,
        mailbox_teams={
            **{m.name: m.team for m in settings.mailboxes if m.team},
            **{m.name: m.team for m in settings.maildirs if m.team},
        },
        trust=trust,
        note_address=hd.notes_to,
        bounce_suppression=timedelta(days=settings.bounces.suppress_days),
        prepare=PrepareConfig(own_addresses=frozenset(hd.own_addresses),
                              loop_id=hd.support_address, trust=trust,
                              rule_patterns=configured.rules.text_patterns() if configured
                              else ()),
    )


def outbox_policy(settings: Settings) -> OutboxPolicy:
    """The sender's retry policy from `[outbox]`."""
    return OutboxPolicy(
        max_permanent_failures=settings.outbox.max_permanent_failures,
        retry_max_delay=timedelta(seconds=settings.outbox.retry_max_delay),
        give_up_after=timedelta(hours=settings.outbox.give_up_after_hours),
    )
