"""Ingest: one raw message becomes one ticket entry, inside the caller's transaction.

`ingest()` parses, dedupes, threads and stores: the raw bytes, the ticket
change, the participants and the audit events, all in the session the caller
opened, so that they commit together (design.md §1). It never raises for bad
input: what cannot be parsed or stored is quarantined with its error. It does
raise `StoreUnavailable` when the database itself fails (locked, gone), so that
the caller leaves the message unacknowledged and retries later.

Layout: `context` is what ingest knows about the desk, `entry` takes one mail
(or a batch) from raw bytes to a stored entry, a duplicate or the quarantine,
`filing` puts a new mail on its ticket (who wrote it, which ticket, what it
changes, rules and notifications), and `rows` holds the prebuilt statements
and the rows they write.
"""

from helpdesk.flow.ingest.context import IngestContext
from helpdesk.flow.ingest.entry import ingest, ingest_batch, log_ingested
from helpdesk.flow.ingest.rows import MAX_MESSAGE_ID

__all__ = ["MAX_MESSAGE_ID", "IngestContext", "ingest", "ingest_batch", "log_ingested"]
