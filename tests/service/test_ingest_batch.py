"""A batch stored in one savepoint, and a mail that fails in it quarantined alone (issue 13 §2).

`ingest_batch` stores a whole batch in one savepoint first and, only when a
mail fails, rolls that savepoint back and stores the batch again with a
savepoint a mail. These tests fail a mail in the middle of a batch after it
has written rows (a real error from the database, or a bug of ours) and check
that the batch's other mails are stored once, threaded as before, and
acknowledged once, and that nothing the failed first pass wrote survives.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

from helpdesk.context import BUILTIN_TEMPLATES
from helpdesk.delivery.outbox import Signer
from helpdesk.desk import actions as actions_module
from helpdesk.desk import directory
from helpdesk.desk.actions import ActionContext
from helpdesk.flow.ingest import IngestContext, filing, ingest_batch
from helpdesk.mail.prepare import Prepared, prepare_with
from helpdesk.rules import load_rules
from helpdesk.store import schema
from helpdesk.templates import load_templates
from helpdesk.values import IngestOutcome, Origin, OutcomeKind
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = "support@example.com"
POISON = "poison@mail.example.com"  # Message-IDs are kept without their angle brackets


def mails() -> list[bytes]:
    """Two conversations of two mails each, and between them a mail that will fail."""
    return [
        make_mail(subject="VPN drops", message_id="<a1@mail.example.com>",
                  sender="Dana <dana@example.com>"),
        make_mail(subject="Re: VPN drops", message_id="<a2@mail.example.com>",
                  in_reply_to="<a1@mail.example.com>", sender="Dana <dana@example.com>"),
        make_mail(subject="Printer", message_id=f"<{POISON}>", sender="Pat <pat@example.com>"),
        make_mail(subject="Laptop fan", message_id="<b1@mail.example.com>",
                  sender="Lee <lee@example.com>"),
        make_mail(subject="Re: Laptop fan", message_id="<b2@mail.example.com>",
                  in_reply_to="<b1@mail.example.com>", sender="Lee <lee@example.com>"),
    ]


def prepared(raws: list[bytes], ctx: IngestContext) -> list[tuple[bytes, Origin, Prepared]]:
    return [(raw, Origin("lmtp", recipient=SUPPORT),
             prepare_with(raw, parse=ctx.parse, is_own_address=ctx.is_own_address,
                          loop_id=ctx.loop_id, trust=ctx.trust))
            for raw in raws]


def count(session: Session, table: Any, *where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def fail_after_the_message_row(monkeypatch: pytest.MonkeyPatch, session: Session,
                               how: str) -> list[str]:
    """Make the poison mail fail once its message row, ticket and contact are written.

    "database": the database itself refuses a statement (a real unique
    violation, which on PostgreSQL also aborts the transaction); "bug": our
    code raises. Returns the Message-IDs the failure struck, in order.
    """
    struck: list[str] = []
    original = filing.rows.message_events

    def message_events(ticket_id: int, row_id: int, message_id: str, *args: Any,
                       **kwargs: Any) -> Any:
        if message_id == POISON:
            struck.append(message_id)
            if how == "database":
                session.connection().execute(text(
                    "INSERT INTO contacts (address, name, created_at) "
                    "SELECT address, name, created_at FROM contacts"))
            else:
                raise RuntimeError("a bug while filing")
        return original(ticket_id, row_id, message_id, *args, **kwargs)

    monkeypatch.setattr(filing.rows, "message_events", message_events)
    return struck


@pytest.mark.parametrize("how", ["database", "bug"])
def test_a_mail_failing_in_the_middle_of_a_batch_is_quarantined_alone(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    ctx = IngestContext(clock=clock, is_own_address=lambda a: a == SUPPORT, loop_id=SUPPORT)
    with store.sessions.begin() as session:
        struck = fail_after_the_message_row(monkeypatch, session, how)
        outcomes = ingest_batch(session, prepared(mails(), ctx), ctx)
    # Struck in the batch's pass and again in the pass a savepoint a mail.
    assert struck == [POISON, POISON]
    assert [o.kind for o in outcomes] == [OutcomeKind.NEW_TICKET, OutcomeKind.REPLY,
                                          OutcomeKind.QUARANTINED, OutcomeKind.NEW_TICKET,
                                          OutcomeKind.REPLY]
    first, reply, poison, second, other_reply = outcomes
    assert reply.ticket_id == first.ticket_id
    assert other_reply.ticket_id == second.ticket_id
    assert first.ticket_id != second.ticket_id
    assert poison.error is not None
    assert poison.error.startswith("could not be stored" if how == "database"
                                   else "internal error while storing")
    with store.sessions() as session:
        stored = session.scalars(select(schema.messages.c.message_id)
                                 .order_by(schema.messages.c.id)).all()
        assert stored == ["a1@mail.example.com", "a2@mail.example.com",
                          "b1@mail.example.com", "b2@mail.example.com"]
        # Nothing of the first pass survives: no ticket or contact of the poison mail,
        # no second copy of the mails before it.
        assert count(session, schema.tickets) == 2
        assert sorted(session.scalars(select(schema.contacts.c.address)).all()) == [
            "dana@example.com", "lee@example.com"]
        assert set(session.scalars(select(schema.events.c.ticket_id)).all()) == {
            first.ticket_id, second.ticket_id}
        (held,) = session.execute(select(schema.quarantine.c.from_address,
                                         schema.quarantine.c.error)).all()
        assert held.from_address == "pat@example.com"
        assert held.error == poison.error


def shipped_rules_context(store: Store, clock: Clock) -> IngestContext:
    """The shipped rules and templates: every new ticket is acknowledged."""
    teams = {n: f"{n}@example.com" for n in
             ("support", "networking", "infrastructure", "identity-and-access", "security")}

    class Team:
        def __init__(self, name: str) -> None:
            self.name, self.address, self.lead = name, teams[name], None

    with store.sessions.begin() as session:
        directory.sync(session, [Team(n) for n in teams], [])  # type: ignore[list-item]
    templates = load_templates(ROOT / "templates")
    rules = load_rules(ROOT / "rules", teams=set(teams), agents=set(),
                       templates=templates.names | BUILTIN_TEMPLATES)
    actions = ActionContext(
        helpdesk_name="Example IT", support_address=SUPPORT, tag_prefix="#",
        signer=Signer("example.com", b"key", SUPPORT), templates=templates, teams=teams,
        is_own_address=lambda a: a == SUPPORT,
    )
    return IngestContext(is_own_address=lambda a: a == SUPPORT, clock=clock, loop_id=SUPPORT,
                         rules=rules, actions=actions)


def test_a_failing_action_keeps_its_mail_and_every_other_mail_is_acknowledged_once(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An action that raises for one mail: the batch is stored again with the actions
    guarded, so that mail is stored with an `actions.failed` event and no reply, and each
    other new ticket has exactly one acknowledgement queued (none left by the first pass)."""
    ctx = shipped_rules_context(store, clock)
    original: Callable[..., Any] = actions_module._auto_reply
    attempts: list[str] = []

    def auto_reply(session: Session, work: Any, msg: Any, *args: Any, **kwargs: Any) -> Any:
        if msg.message_id == POISON:
            attempts.append(msg.message_id)
            raise RuntimeError("a template that breaks on this mail")
        return original(session, work, msg, *args, **kwargs)

    monkeypatch.setattr(actions_module, "_auto_reply", auto_reply)
    with store.sessions.begin() as session:
        outcomes = ingest_batch(session, prepared(mails(), ctx), ctx)
    assert attempts == [POISON, POISON]
    kinds = [o.kind for o in outcomes]
    assert kinds == [OutcomeKind.NEW_TICKET, OutcomeKind.REPLY, OutcomeKind.NEW_TICKET,
                     OutcomeKind.NEW_TICKET, OutcomeKind.REPLY]
    poison = outcomes[2]
    acknowledged = [outcomes[0].ticket_id, outcomes[3].ticket_id]
    with store.sessions() as session:
        queued = session.scalars(select(schema.outbox.c.ticket_id)
                                 .where(schema.outbox.c.kind == "auto_reply")).all()
        assert sorted(queued) == sorted(acknowledged)
        failed = session.scalars(select(schema.events.c.ticket_id)
                                 .where(schema.events.c.kind == "actions.failed")).all()
        assert failed == [poison.ticket_id]
        assert count(session, schema.tickets) == 3
        assert count(session, schema.quarantine) == 0


def test_a_batch_that_stores_cleanly_uses_one_savepoint(store: Store, clock: Clock) -> None:
    """The common case pays for one savepoint, not one a mail and one for its actions: the
    batch's, and those that guard the insert of each new contact against another daemon."""
    ctx = shipped_rules_context(store, clock)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.upper().startswith("SAVEPOINT"):
            statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        with store.sessions.begin() as session:
            outcomes = ingest_batch(session, prepared(mails(), ctx), ctx)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert all(isinstance(o, IngestOutcome) for o in outcomes)
    assert [o.kind for o in outcomes].count(OutcomeKind.NEW_TICKET) == 3
    new_contacts = 3
    assert len(statements) == 1 + new_contacts
