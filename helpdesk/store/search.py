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

from sqlalchemy import bindparam, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from helpdesk.errors import HelpdeskError, InvalidInput
from helpdesk.store.models import UTCDateTime
from helpdesk.values import TicketStatus

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


def search(
    session: Session, query: SearchQuery, *, statuses: Sequence[str] = (), limit: int = 20
) -> list[SearchHit]:
    """The best `limit` tickets for `query`, best first, each with its best message."""
    postgres = session.get_bind().dialect.name == "postgresql"
    q = websearch_text(query) if postgres else fts5_expression(query)
    params = {"q": q, "limit": limit,
              "statuses": list(statuses) or [s.value for s in TicketStatus]}
    try:
        rows = session.execute(_PG_RANKED if postgres else _SQLITE_RANKED, params).all()
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


# Each ticket once, with its best message: rank the matching messages, keep the best per
# ticket, then the best tickets; snippets are made for those few messages only. Mail we
# wrote ourselves (acknowledgements, notifications, forwards) repeats the customer's words
# or boilerplate, so only incoming mail, notes and agents' replies count. Weights: subject
# 8, new text 4, full text 1, sender 4 (SQLite's bm25 per column; PostgreSQL's A/B/D/C).
_SQLITE_RANKED = text("""
SELECT ticket_id, message_row_id, score, subject, status, priority, updated_at FROM (
  SELECT m.ticket_id, m.id AS message_row_id, hits.score, t.subject, t.status, t.priority,
         t.updated_at,
         row_number() OVER (PARTITION BY m.ticket_id ORDER BY hits.score DESC, m.id DESC) AS n
  FROM (SELECT rowid AS id, -bm25(messages_fts, 8.0, 4.0, 1.0, 4.0, 4.0) AS score
        FROM messages_fts WHERE messages_fts MATCH :q) AS hits
  JOIN messages m ON m.id = hits.id
  JOIN tickets t ON t.id = m.ticket_id
  WHERE (m.direction = 'in' OR m.kind = 'agent_reply') AND t.status IN :statuses
) AS best WHERE n = 1
ORDER BY score DESC, ticket_id DESC
LIMIT :limit
""").bindparams(bindparam("statuses", expanding=True)).columns(updated_at=UTCDateTime())
_SQLITE_SNIPPETS = text("""
SELECT rowid, snippet(messages_fts, -1, '**', '**', '…', 16)
FROM messages_fts WHERE messages_fts MATCH :q AND rowid IN :ids
""").bindparams(bindparam("ids", expanding=True))

_PG_RANKED_SQL = """
SELECT ticket_id, message_row_id, score, subject, status, priority, updated_at FROM (
  SELECT m.ticket_id, m.id AS message_row_id, ts_rank(m.search, q.q) AS score,
         t.subject, t.status, t.priority, t.updated_at,
         row_number() OVER (PARTITION BY m.ticket_id
                            ORDER BY ts_rank(m.search, q.q) DESC, m.id DESC) AS n
  FROM (SELECT websearch_to_tsquery('simple', :q) AS q) AS q
  JOIN messages m ON m.search @@ q.q
  JOIN tickets t ON t.id = m.ticket_id
  WHERE (m.direction = 'in' OR m.kind = 'agent_reply') AND t.status = ANY(:statuses)
) AS best WHERE n = 1
ORDER BY score DESC, ticket_id DESC
LIMIT :limit
"""
_PG_RANKED = text(_PG_RANKED_SQL).columns(updated_at=UTCDateTime())
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
            limit: int = 20) -> list[str]:
    """PostgreSQL's plan for `search`, with timings (EXPLAIN ANALYZE): for benchmarks and to
    check that the GIN index is used."""
    params = {"q": websearch_text(query), "limit": limit,
              "statuses": list(statuses) or [s.value for s in TicketStatus]}
    plan = session.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + _PG_RANKED_SQL), params)
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
