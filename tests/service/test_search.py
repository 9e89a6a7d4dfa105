"""Full-text search (`tickets.search`): SQLite FTS5, PostgreSQL tsvector, and the query syntax."""

from __future__ import annotations

import importlib.util
import random
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import OperationalError

from helpdesk.delivery import outbox
from helpdesk.desk import tickets
from helpdesk.errors import HelpdeskError, InvalidInput
from helpdesk.flow.ingest import IngestContext, ingest
from helpdesk.store import schema, search
from helpdesk.store.db import head_revision, upgrade
from helpdesk.values import Address, MessageKind, Origin, OutgoingMail
from tests.conftest import Clock, Store
from tests.mailfactory import make_mail

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MIGRATION = Path(search.__file__).parent / "migrations" / "versions" / "0007_full_text_search.py"


# -- the query syntax (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(("query", "fts5", "websearch"), [
    ("Drucker", '("Drucker")', '"drucker"'),
    ('printer "3rd floor"', '("printer" AND "3rd floor")', '"printer" "3rd floor"'),
    ("vpn or wifi dropped", '(("vpn" OR "wifi") AND "dropped")', '"vpn" or "wifi" "dropped"'),
    ("printer -toner", '("printer") NOT "toner"', '"printer" -"toner"'),
    ('printer -"paper jam"', '("printer") NOT "paper jam"', '"printer" -"paper jam"'),
    # Syntax characters of either engine are only text: quoted, never operators.
    ('a"b c*', '("a" AND "b c*")', '"a" "b c*"'),
    ("NEAR(x y) AND ^z", '("NEAR(x" AND "y)" AND "AND" AND "^z")',
     '"near(x" "y)" "and" "^z"'),
    ("-- ! vpn ''", '("vpn")', '"vpn"'),
    ('"unterminated phrase', '("unterminated phrase")', '"unterminated phrase"'),
    ("or vpn or", '("vpn")', '"vpn"'),
    ("ÄNDERUNG", '("ÄNDERUNG")', '"änderung"'),
])
def test_query_syntax_is_read_once_for_both_engines(query: str, fts5: str,
                                                    websearch: str) -> None:
    """Words, phrases, `or` and `-word` mean the same on SQLite and PostgreSQL."""
    parsed = search.parse_query(query)
    assert search.fts5_expression(parsed) == fts5
    assert search.websearch_text(parsed) == websearch


@pytest.mark.parametrize("query", ["", "   ", "-toner", '-"paper jam" -x', "or", "!!"])
def test_a_query_with_nothing_to_find_is_refused(query: str) -> None:
    """Only exclusions or punctuation: InvalidInput, on both engines alike."""
    with pytest.raises(InvalidInput, match="nothing to search for"):
        search.parse_query(query)


# -- searching the store -------------------------------------------------------------------


def add(store: Store, clock: Clock, *, subject: str, body: str, message_id: str,
        sender: str = "Dana Reyes <dana@example.com>", in_reply_to: str | None = None) -> int:
    with store.sessions.begin() as session:
        outcome = ingest(session, make_mail(subject=subject, body=body, sender=sender,
                                            message_id=message_id, in_reply_to=in_reply_to),
                         Origin("file"), IngestContext(clock=clock))
    assert outcome.ticket_id is not None
    return outcome.ticket_id


def find(store: Store, query: str, **kw: object) -> list[search.SearchHit]:
    with store.sessions.begin() as session:
        return tickets.search(session, query, **kw)  # type: ignore[arg-type]


def ids(hits: list[search.SearchHit]) -> list[int]:
    return [h.ticket_id for h in hits]


@pytest.fixture
def desk(store: Store, clock: Clock) -> dict[str, int]:
    """Tickets in German, Swedish, Danish, Finnish and English."""
    return {
        "de": add(store, clock, subject="Drucker im 3. Stock druckt nicht",
                  body="Hallo,\nder Drucker zeigt ÄNDERUNG DER PAPIERGRÖSSE an.\nGrüße\n",
                  sender="Jürgen Müller <juergen.mueller@example.de>", message_id="<de@x>"),
        "sv": add(store, clock, subject="Skrivaren fungerar inte",
                  body="Skrivaren på våning 3 skriver ut tomma sidor.\n",
                  sender="Åsa Öberg <asa@example.se>", message_id="<sv@x>"),
        "da": add(store, clock, subject="Printeren på øverste etage",
                  body="Printeren siger papirstop hele tiden.\n", sender="<mads@example.dk>",
                  message_id="<da@x>"),
        "fi": add(store, clock, subject="Tulostin ei toimi",
                  body="Tulostin näyttää virheen E-104.\n", sender="<aino@example.fi>",
                  message_id="<fi@x>"),
        # English; the printer is mentioned only in the quoted history of the second mail.
        "en": add(store, clock, subject="VPN drops every hour",
                  body="The VPN drops every hour since Monday.\n", message_id="<en@x>",
                  sender="Sam Lee <sam@example.org>"),
    }


def test_words_in_every_language_are_found(store: Store, desk: dict[str, int]) -> None:
    """German, Nordic and Finnish words match as written, case-insensitively, umlauts kept."""
    assert ids(find(store, "drucker")) == [desk["de"]]
    assert ids(find(store, "änderung papiergrösse")) == [desk["de"]]  # upper case in the mail
    assert ids(find(store, "Müller")) == [desk["de"]]
    assert ids(find(store, "våning")) == [desk["sv"]]
    assert ids(find(store, "ÖBERG")) == [desk["sv"]]
    assert ids(find(store, "øverste")) == [desk["da"]]
    assert ids(find(store, "näyttää")) == [desk["fi"]]
    # The same letters mean the same on both engines: å is not a, ø is not o.
    assert find(store, "vaning") == []
    assert find(store, "overste") == []


def test_sender_address_name_and_domain_are_searched(store: Store, desk: dict[str, int]) -> None:
    """A sender is found by whole address, name, local part and domain."""
    assert ids(find(store, "sam@example.org")) == [desk["en"]]
    assert ids(find(store, "Lee")) == [desk["en"]]
    assert ids(find(store, "sam")) == [desk["en"]]
    assert ids(find(store, "example.fi")) == [desk["fi"]]


def test_phrases_alternatives_and_exclusions(store: Store, desk: dict[str, int]) -> None:
    """`"a phrase"` keeps the order, `or` widens, `-word` excludes."""
    assert ids(find(store, '"every hour"')) == [desk["en"]]
    assert find(store, '"hour every"') == []
    assert sorted(ids(find(store, "skrivaren or tulostin"))) == sorted([desk["sv"], desk["fi"]])
    assert ids(find(store, "printeren -papirstop")) == []
    assert ids(find(store, "vpn -printer")) == [desk["en"]]


def test_ranking_and_snippets(store: Store, clock: Clock) -> None:
    """A ticket about the word beats one that quotes it; the snippet marks the word."""
    quoted = add(store, clock, subject="Monitor flickers", message_id="<m1@x>",
                 body="My monitor flickers.\n")
    add(store, clock, subject="Re: Monitor flickers", message_id="<m2@x>", in_reply_to="<m1@x>",
        body="Thanks, that helped.\n\nOn Monday IT wrote:\n> Is the toner cartridge seated?\n")
    about = add(store, clock, subject="Toner cartridge empty", message_id="<t1@x>",
                body="The toner cartridge in room 12 is empty, please replace the toner.\n")
    hits = find(store, "toner")
    assert ids(hits) == [about, quoted]
    assert hits[0].score > hits[1].score > 0
    assert "**toner**" in hits[0].snippet.lower()
    assert "**toner**" in hits[1].snippet.lower()
    assert "seated" in hits[1].snippet  # words around the match, from the quoted text


def test_each_ticket_appears_once_with_its_best_message(store: Store, clock: Clock) -> None:
    """Three mails about the same word on one ticket: one result."""
    first = add(store, clock, subject="Laptop battery", message_id="<b1@x>",
                body="The battery is swollen.\n")
    for n in (2, 3):
        add(store, clock, subject="Re: Laptop battery", message_id=f"<b{n}@x>",
            in_reply_to="<b1@x>", body="The battery is still swollen.\n")
    assert ids(find(store, "swollen battery")) == [first]


def test_status_filter_and_limit(store: Store, clock: Clock, desk: dict[str, int]) -> None:
    """--status narrows to tickets in those states; --limit caps the list."""
    with store.sessions.begin() as session:
        tickets.set_status(session, desk["sv"], "resolved", actor="cli", now=clock.now)
    assert set(ids(find(store, "skrivaren or tulostin or drucker"))) == {
        desk["sv"], desk["fi"], desk["de"]}
    assert set(ids(find(store, "skrivaren or tulostin", statuses=["new", "open"]))) == {
        desk["fi"]}
    assert ids(find(store, "skrivaren or tulostin", statuses=["resolved"])) == [desk["sv"]]
    assert len(find(store, "skrivaren or tulostin or drucker", limit=2)) == 2


def test_common_words_rank_the_newest_matches_rare_words_all_mail(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows over the newest mail widen until they hold enough matches: a common word is
    ranked among its newest matches, a rare one (or one narrowed by status) over all mail."""
    monkeypatch.setattr(search, "WINDOWS", (3, 6))
    monkeypatch.setattr(search, "ENOUGH", 2)
    oldest = add(store, clock, subject="Printer printer printer", message_id="<p0@x>",
                 body="The printer, the printer: unicorn.\n")
    newer = [add(store, clock, subject=f"Request {n}", message_id=f"<p{n}@x>",
                 body=f"Something about a printer, number {n}.\n") for n in range(1, 9)]
    # The newest three messages hold enough matches: the best-ranked (oldest) is not looked at.
    assert set(ids(find(store, "printer"))) == set(newer[-3:])
    # A word only the oldest mail has is found by widening to all mail.
    assert ids(find(store, "unicorn")) == [oldest]
    # Narrowed by status to where only old mail qualifies: the windows widen to find it.
    with store.sessions.begin() as session:
        tickets.set_status(session, oldest, "pending", actor="cli", now=clock.now)
    assert ids(find(store, "printer", statuses=["pending"])) == [oldest]
    monkeypatch.setattr(search, "WINDOWS", ())
    assert ids(find(store, "printer"))[0] == oldest  # ranked over all mail, it is the best


def test_new_mail_is_found_right_after_ingest(store: Store, clock: Clock,
                                              desk: dict[str, int]) -> None:
    """The index follows every insert at once: no ingest code has to remember it."""
    assert find(store, "kostenstelle") == []
    add(store, clock, subject="Re: Drucker im 3. Stock druckt nicht", message_id="<de-2@x>",
        in_reply_to="<de@x>", body="Bitte die Kostenstelle 4711 belasten.\n",
        sender="Jürgen Müller <juergen.mueller@example.de>")
    (hit,) = find(store, "kostenstelle")
    assert hit.ticket_id == desk["de"]
    assert "**Kostenstelle**" in hit.snippet


def test_internal_notes_count_our_automatic_mail_does_not(store: Store, clock: Clock,
                                                          desk: dict[str, int]) -> None:
    """Agents find their notes; our acknowledgements and notifications are not hits."""
    with store.sessions.begin() as session:
        tickets.add_note(session, desk["fi"], author=Address("alice@example.com"),
                         text="Ordered a new fuser unit.", domain="example.com")
        outbox.enqueue(session, OutgoingMail(
            kind=MessageKind.AUTO_REPLY, ticket_id=desk["en"],
            from_=Address("support@example.com"), to=(Address("sam@example.org"),),
            subject="[#5] We have received your request", body="A fuser will be ordered."),
            outbox.Signer("example.com", b"k", "support@example.com"))
    assert ids(find(store, "fuser")) == [desk["fi"]]
    assert find(store, "received your request") == []


def test_changed_and_deleted_mail_follow_the_index(store: Store, desk: dict[str, int]) -> None:
    """An edited message is found by its new words only; a deleted ticket's mail is gone."""
    messages = schema.messages
    with store.sessions.begin() as session:
        session.execute(messages.update().where(messages.c.ticket_id == desk["sv"])
                        .values(text="Kopiatorn är trasig.", new_text="Kopiatorn är trasig."))
        session.execute(schema.tickets.delete().where(schema.tickets.c.id == desk["fi"]))
    assert ids(find(store, "kopiatorn")) == [desk["sv"]]
    assert find(store, "våning") == []
    assert ids(find(store, "skrivaren")) == [desk["sv"]]  # still in the subject
    assert find(store, "tulostin") == []
    if store.backend == "sqlite":
        with store.engine.begin() as conn:  # FTS5's own check of the index against the table
            conn.execute(text("INSERT INTO messages_fts(messages_fts, rank) "
                              "VALUES('integrity-check', 1)"))


def test_the_migration_indexes_mail_stored_before_it(store: Store, clock: Clock) -> None:
    """A store that had mail before revision 0007 finds it after the upgrade."""
    from alembic import command

    from helpdesk.store.db import alembic_config

    command.downgrade(alembic_config(store.engine), "0006")
    store.engine.dispose()
    # Mail stored before full-text search (0007), written as that schema had it: the
    # models and ingest describe the newest schema.
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO tickets (id, subject, status, priority, created_at, updated_at) "
            "VALUES (1, 'Beamer im Konferenzraum', 'new', 'normal', :t, :t)"), {"t": clock.now})
        conn.execute(text(
            "INSERT INTO messages (ticket_id, direction, kind, message_id, message_id_synthetic,"
            " content_hash, in_reply_to, \"references\", from_address, from_name, to_addresses,"
            " cc_addresses, subject, received_at, text, new_text, raw, size, defects,"
            " mail_class, origin_source, thread_index) VALUES (1, 'in', 'customer', 'old@x',"
            " false, 'x', '', '', 'dana@example.com', '', '', '', 'Beamer im Konferenzraum',"
            " :t, 'Der Beamer geht nicht.', 'Der Beamer geht nicht.', :raw, 0, '', 'human',"
            " 'file', '')"), {"t": clock.now, "raw": b"Subject: Beamer\r\n\r\nx\r\n"})
    assert upgrade(store.engine) == ("0006", head_revision())
    (hit,) = find(store, "beamer")
    assert "**Beamer**" in hit.snippet


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_postgres_uses_the_gin_index(store: Store) -> None:
    """A search over all mail goes through ix_messages_search: its condition is the indexed
    column itself, with or without a status filter.

    On a few thousand rows scanning is cheaper, so the planner is told to avoid plain
    scans; a condition the index cannot serve (another expression, another configuration)
    would still have to scan. (The windows over the newest mail may also walk the primary
    key when a word is common; that is their point.) The figures at scale are
    bench/scale.py's.
    """
    rng = random.Random(8)
    words = [f"w{n}" for n in range(2000)]
    with store.engine.begin() as conn:
        conn.execute(insert(schema.tickets), [
            {"id": i, "subject": "s", "status": "open", "priority": "normal",
             "created_at": NOW, "updated_at": NOW} for i in range(1, 501)])
        conn.execute(insert(schema.messages), [
            {"ticket_id": 1 + i % 500, "direction": "in", "kind": "customer",
             "message_id": f"m{i}@x", "content_hash": str(i), "subject": "s",
             "text": " ".join(rng.choices(words, k=60)), "new_text": "", "received_at": NOW}
            for i in range(6000)])
        conn.execute(text("ANALYZE messages"))
        conn.execute(text("ANALYZE tickets"))
    for statuses in ((), ("open",)):
        with store.sessions() as session:
            session.execute(text("SET LOCAL enable_seqscan = off"))
            session.execute(text("SET LOCAL enable_indexscan = off"))
            plan = "\n".join(search.explain(session, search.parse_query("w7"),
                                            statuses=statuses))
        assert "Bitmap Index Scan on ix_messages_search" in plan, plan


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_sqlite_without_fts5_gets_a_clear_message(store: Store,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FTS5 (or its table) search says what is missing, not a raw SQL error."""
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE messages_fts"))
    with pytest.raises(search.SearchUnavailable, match="index table messages_fts is missing"):
        find(store, "printer")

    def no_fts5(*args: object, **kw: object) -> None:
        raise OperationalError("SELECT", {}, Exception("no such module: fts5"))

    with store.engine.connect() as conn:
        monkeypatch.setattr(conn, "execute", no_fts5)
        with pytest.raises(search.SearchUnavailable, match="lacks; use a Python built with"):
            search.search(conn, search.parse_query("printer"))


def migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migration_0007", MIGRATION)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_migration_refuses_a_sqlite_without_fts5(monkeypatch: pytest.MonkeyPatch) -> None:
    """`db upgrade` on a Python whose SQLite lacks FTS5 stops with a clear reason."""
    module = migration()

    class NoFts5:
        def execute(self, statement: object) -> None:
            raise OperationalError(str(statement), {}, Exception("no such module: fts5"))

    monkeypatch.setattr(module.op, "get_bind", lambda: NoFts5(), raising=False)
    with pytest.raises(HelpdeskError, match="no FTS5 extension"):
        module._require_fts5()
