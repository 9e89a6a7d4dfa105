"""The edges' fixtures (a fresh Dovecot, IMAP helpers, sources) for the fault scenarios."""

from tests.edges.conftest import dovecot, imap, make_source, sink

__all__ = ["dovecot", "imap", "make_source", "sink"]
