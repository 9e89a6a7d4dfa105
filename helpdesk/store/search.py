"""Full-text search over messages: subject, new text, full text and sender.

The index lives beside the `messages` table and is kept in step by the
database itself, so no write path has to remember it (migration 0007):

* SQLite: an FTS5 external-content table `messages_fts` (the text is read
  from `messages`, only the index is stored) maintained by triggers on
  insert, update and delete, tokenised with `unicode61` *without* removing
  diacritics, so that the Nordic å, ä, ö stay letters of their own as they
  do on PostgreSQL.
* PostgreSQL: a generated `tsvector` column `messages.search` with a GIN
  index, built with the `simple` configuration (no stemming, no stop words:
  German, Nordic and English mail all match word for word) after lower-casing
  with ICU where the server has it, so that `ÄNDERUNG` is found as
  `änderung` even in a database created with the C locale.

People type the same syntax on both engines, that of PostgreSQL's
`websearch_to_tsquery`: words (all must occur), `"a phrase"`, `or` between
two alternatives, `-word` to exclude. `parse_query` reads it once; each engine
gets its own rendering of the same parse, so both answer the same question.
The search objects are not in the models (they are engine-specific);
`include_object` keeps Alembic's comparison away from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, bindparam, func, select, text
from sqlalchemy.exc import OperationalError

from helpdesk.errors import HelpdeskError, InvalidInput
from helpdesk.store.schema import UTCDateTime, connection_of, messages

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

FTS_TABLE = "messages_fts"
PG_COLUMN = "search"
PG_INDEX = "ix_messages_search"
MARK = "**"  # around the matched words in snippets (written into the SQL below)

FTS5_MISSING = (
    "full-text search needs SQLite's FTS5 extension, which this Python's sqlite3 library "
    "lacks; use a Python built with a standard SQLite (Debian, Ubuntu, Fedora and python.org "
    "builds have it) or PostgreSQL"
)

INDEX_MISSING = (
    f"full-text search: the index table {FTS_TABLE} is missing from this store; migration "
    "0007 creates it (a hand-made change to the messages table may have dropped it)"
)


class SearchUnavailable(HelpdeskError):
    """The database cannot search (SQLite without FTS5)."""


# -- the query people type -----------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """A word or a phrase (several words in a row)."""

    text: str
    negated: bool = False


@dataclass(frozen=True)
class SearchQuery:
    """A parsed query: every clause must match; a clause is one or more alternatives."""

    clauses: tuple[tuple[Term, ...], ...]
    excluded: tuple[Term, ...]


def parse_query(query: str) -> SearchQuery:
    """Read websearch syntax; InvalidInput when nothing is left to look for."""
    clauses: list[list[Term]] = []
    excluded: list[Term] = []
    join_next = False
    for token, quoted, negated in _tokens(query):
        if not quoted and not negated and token.lower() == "or":
            join_next = bool(clauses)
            continue
        if not any(ch.isalnum() for ch in token):
            continue  # punctuation alone matches nothing on either engine
        term = Term(" ".join(token.split()), negated)
        if negated:
            excluded.append(term)  # an excluded word is never an alternative
        elif join_next:
            clauses[-1].append(term)
        else:
            clauses.append([term])
        join_next = False
    if not clauses:
        raise InvalidInput(
            f"nothing to search for in {query!r}: give at least one word that is not excluded")
    return SearchQuery(tuple(tuple(c) for c in clauses), tuple(excluded))


def _tokens(query: str) -> list[tuple[str, bool, bool]]:
    """(text, quoted, negated) for each word or "phrase"; an open quote runs to the end."""
    found: list[tuple[str, bool, bool]] = []
    i, n = 0, len(query)
    while i < n:
        if query[i].isspace():
            i += 1
            continue
        negated = query[i] == "-" and i + 1 < n and not query[i + 1].isspace()
        start = i + 1 if negated else i
        if start < n and query[start] == '"':
            end = query.find('"', start + 1)
            end = n if end < 0 else end
            found.append((query[start + 1:end], True, negated))
            i = end + 1
            continue
        end = start
        while end < n and not query[end].isspace() and query[end] != '"':
            end += 1
        found.append((query[start:end], False, negated))
        i = end
    return found


def fts5_expression(query: SearchQuery) -> str:
    """The query for an FTS5 MATCH: every term quoted, so no character of it is syntax."""
    def quoted(term: Term) -> str:
        return '"' + term.text.replace('"', '""') + '"'

    groups = [
        quoted(c[0]) if len(c) == 1 else "(" + " OR ".join(quoted(t) for t in c) + ")"
        for c in query.clauses
    ]
    expression = "(" + " AND ".join(groups) + ")"
    return expression + "".join(f" NOT {quoted(t)}" for t in query.excluded)


def websearch_text(query: SearchQuery) -> str:
    """The query for `websearch_to_tsquery`, lower-cased as the index is."""
    def quoted(term: Term) -> str:
        return ("-" if term.negated else "") + '"' + term.text.replace('"', " ").lower() + '"'

    clauses = [" or ".join(quoted(t) for t in c) for c in query.clauses]
    return " ".join(clauses + [quoted(t) for t in query.excluded])


# -- searching -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchHit:
    """A ticket that matched, the message that matched best, and a snippet of it."""

    ticket_id: int
    subject: str
    status: str
    priority: str
    updated_at: datetime
    message_row_id: int
    score: float  # higher is better; comparable within one result list only
    snippet: str


# Ranking costs time in proportion to the messages that match: a common word ("printer")
# matches a tenth of a big store. So the matches are ranked newest first, in widening
# windows of message ids, until a window holds ENOUGH of them (or the whole store has
# been looked at): a rare word is ranked over all mail, a common one over its newest few
# thousand matches, and a search stays quick on a million tickets. Narrow the words to
# reach older mail that a common word would bury.
WINDOWS = (20_000, 80_000, 320_000, 1_280_000)
ENOUGH = 2_000


def search(
    reader: Connection | Session, query: SearchQuery, *, statuses: Sequence[str] = (),
    limit: int = 20,
) -> list[SearchHit]:
    """The best `limit` tickets for `query`, best first, each with its best message.

    On a plain (read-only) connection, `tickets search` imports no ORM."""
    session = connection_of(reader)
    postgres = session.dialect.name == "postgresql"
    q = websearch_text(query) if postgres else fts5_expression(query)
    params: dict[str, object] = {"q": q, "limit": limit, "statuses": list(statuses)}
    try:
        newest = session.scalar(select(func.max(messages.c.id))) or 0
        for window in (*WINDOWS, None):
            floor = 0 if window is None else max(0, newest - window)
            key = (bool(statuses), floor > 0)
            rows = session.execute((_PG_RANKED if postgres else _SQLITE_RANKED)[key],
                                   {**params, "floor": floor}).all()
            if floor == 0 or (rows and rows[0].candidates >= ENOUGH):
                break
        ids = [r.message_row_id for r in rows]
        snippet_sql = _PG_SNIPPETS if postgres else _SQLITE_SNIPPETS
        snippets: dict[int, str] = {
            row_id: snippet for row_id, snippet in session.execute(
                snippet_sql, {"q": q, "ids": ids})} if ids else {}
    except OperationalError as exc:
        if "no such module: fts5" in str(exc.orig):
            raise SearchUnavailable(FTS5_MISSING) from exc
        if f"no such table: {FTS_TABLE}" in str(exc.orig):
            raise SearchUnavailable(INDEX_MISSING) from exc
        raise
    return [
        SearchHit(ticket_id=r.ticket_id, subject=r.subject, status=r.status,
                  priority=r.priority, updated_at=r.updated_at,
                  message_row_id=r.message_row_id, score=float(r.score),
                  snippet=" ".join(str(snippets.get(r.message_row_id, "")).split()))
        for r in rows
    ]


# `hits`: the matching messages above the window's floor that count, on tickets of the
# wanted statuses, with their score; `best`: each ticket's best message; then the best
# tickets, with the number of hits the window held. Mail we wrote ourselves
# (acknowledgements, notifications, forwards) repeats the customer's words or boilerplate,
# so only incoming mail, notes and agents' replies count. Weights: subject 8, new text 4,
# full text 1, sender 4 (SQLite's bm25 per column; PostgreSQL's A/B/D/C).
_SQLITE_RANKED_SQL = """
WITH hits AS (
  SELECT m.ticket_id, m.id, f.score
  FROM (SELECT rowid AS id, -bm25(messages_fts, 8.0, 4.0, 1.0, 4.0, 4.0) AS score
        FROM messages_fts WHERE messages_fts MATCH :q /*floor*/) AS f
  JOIN messages m ON m.id = f.id
  /*status*/
  WHERE (m.direction = 'in' OR m.kind = 'agent_reply')
), best AS (
  SELECT ticket_id, id, score,
         row_number() OVER (PARTITION BY ticket_id ORDER BY score DESC, id DESC) AS n
  FROM hits
)
SELECT b.ticket_id, b.id AS message_row_id, b.score, t.subject, t.status, t.priority,
       t.updated_at, (SELECT count(*) FROM hits) AS candidates
FROM best b JOIN tickets t ON t.id = b.ticket_id
WHERE b.n = 1
ORDER BY b.score DESC, b.ticket_id DESC
LIMIT :limit
"""
_SQLITE_SNIPPETS = text("""
SELECT rowid, snippet(messages_fts, -1, '**', '**', '…', 16)
FROM messages_fts WHERE messages_fts MATCH :q AND rowid IN :ids
""").bindparams(bindparam("ids", expanding=True))

_PG_RANKED_SQL = """
WITH q AS (SELECT websearch_to_tsquery('simple', :q) AS q), hits AS (
  SELECT m.ticket_id, m.id, ts_rank(m.search, q.q) AS score
  FROM q, messages m
  /*status*/
  WHERE m.search @@ q.q /*floor*/ AND (m.direction = 'in' OR m.kind = 'agent_reply')
), best AS (
  SELECT DISTINCT ON (ticket_id) ticket_id, id, score FROM hits
  ORDER BY ticket_id, score DESC, id DESC
)
SELECT b.ticket_id, b.id AS message_row_id, b.score, t.subject, t.status, t.priority,
       t.updated_at, (SELECT count(*) FROM hits) AS candidates
FROM best b JOIN tickets t ON t.id = b.ticket_id
ORDER BY b.score DESC, b.ticket_id DESC
LIMIT :limit
"""


def _variants(sql: str, *, status: str, floor: str) -> dict[tuple[bool, bool], str]:
    """The ranking SQL by (status filter?, window?). Only a status filter pays for joining
    the tickets (the count then counts hits on tickets of those statuses), and only a
    window has the id condition, so that a search over all mail is the index's alone."""
    return {(by_status, windowed): sql.replace("/*status*/", status if by_status else "")
            .replace("/*floor*/", floor if windowed else "")
            for by_status in (False, True) for windowed in (False, True)}


_SQLITE_RANKED = {
    key: text(sql).bindparams(*([bindparam("statuses", expanding=True)] if key[0] else []))
    .columns(updated_at=UTCDateTime())
    for key, sql in _variants(
        _SQLITE_RANKED_SQL, floor="AND rowid > :floor",
        status="JOIN tickets t ON t.id = m.ticket_id AND t.status IN :statuses").items()
}
_PG_RANKED_SQLS = _variants(
    _PG_RANKED_SQL, floor="AND m.id > :floor",
    status="JOIN tickets t ON t.id = m.ticket_id AND t.status = ANY(:statuses)")
_PG_RANKED = {key: text(sql).columns(updated_at=UTCDateTime())
              for key, sql in _PG_RANKED_SQLS.items()}
# ts_headline parses the text again, so it gets a bounded part of it, as the index does.
_PG_SNIPPETS = text("""
SELECT m.id,
       ts_headline('simple',
                   m.subject || ' · ' || left(m.text, 100000) || ' · ' || m.from_name
                     || ' <' || m.from_address || '>',
                   websearch_to_tsquery('simple', :q),
                   'StartSel="**", StopSel="**", MaxWords=24, MinWords=8, '
                   'MaxFragments=1, FragmentDelimiter=" … "')
FROM messages m WHERE m.id IN :ids
""").bindparams(bindparam("ids", expanding=True))


def explain(session: Session, query: SearchQuery, *, statuses: Sequence[str] = (),
            limit: int = 20, floor: int = 0) -> list[str]:
    """PostgreSQL's plan for one window of `search` (message ids above `floor`), with
    timings (EXPLAIN ANALYZE): for benchmarks and to check that the GIN index is used."""
    params = {"q": websearch_text(query), "limit": limit, "floor": floor,
              "statuses": list(statuses)}
    sql = _PG_RANKED_SQLS[(bool(statuses), floor > 0)]
    plan = session.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql), params)
    return [str(line) for line in plan.scalars()]


# -- schema support --------------------------------------------------------------------------


def include_object(obj: object, name: str | None, type_: str, reflected: bool,
                   compare_to: object) -> bool:
    """Alembic's filter: the search index objects exist only in the database, by design."""
    if not reflected or compare_to is not None or name is None:
        return True
    if type_ == "table":
        return not name.startswith(FTS_TABLE)
    if type_ == "column":
        return not (name == PG_COLUMN and getattr(getattr(obj, "table", None), "name", "")
                    == "messages")
    if type_ == "index":
        return name != PG_INDEX
    return True
