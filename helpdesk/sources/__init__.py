"""Edges that bring mail in: IMAP, Maildir and LMTP (layer 3).

Every source hands raw bytes to a `Sink` that ingests and commits, and
acknowledges the message only after the sink returned (see `base`).
"""

from helpdesk.sources.base import Backoff, Sink, SourceStats, ingest_sink

__all__ = ["Backoff", "Sink", "SourceStats", "ingest_sink"]
