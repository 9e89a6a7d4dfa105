"""What ingest needs to know about this help desk, built once from the settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from helpdesk.desk.actions import ActionContext
from helpdesk.mail.parse import parse as parse_message
from helpdesk.mail.prepare import PrepareConfig
from helpdesk.mail.trust import TrustPolicy
from helpdesk.rules import RuleSet
from helpdesk.store.models import utcnow
from helpdesk.thread import ThreadPolicy
from helpdesk.values import ParsedMessage

__all__ = ["IngestContext"]


@dataclass(frozen=True)
class IngestContext:
    """What ingest needs to know about this help desk; built once from settings."""

    tag_prefix: str = "#"
    policy: ThreadPolicy = field(default_factory=ThreadPolicy)
    is_own_address: Callable[[str], bool] = lambda _address: False
    parse: Callable[[bytes], ParsedMessage] = parse_message
    clock: Callable[[], datetime] = utcnow
    # Our X-Loop value (the support address): mail carrying it is our own.
    loop_id: str = ""
    # The ticket a Message-ID we signed belongs to; None for others and forgeries.
    verify_signed_id: Callable[[str], int | None] = lambda _message_id: None
    # Rules and what their actions need; None: store and thread only.
    rules: RuleSet | None = None
    actions: ActionContext | None = None
    # The team a new ticket from a mailbox starts with ([[mailbox]] team).
    mailbox_teams: Mapping[str, str] = field(default_factory=dict)
    # No automatic mail to an address that bounced permanently, for this long.
    bounce_suppression: timedelta = timedelta(days=7)
    # What makes mail from an agent's address the agent's ([security]); by
    # default nothing does: agent powers by mail are off (helpdesk.mail.trust).
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    # Mail from an agent to this address is an internal note.
    note_address: str | None = None
    # Tell the assignee (or the team) about customer replies.
    notify: bool = True
    # The same knowledge as plain data, for the pure stage in worker processes.
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
