"""The IMAP source (see `source.py` for its contract, `passes.py` for one pass)."""

from helpdesk.sources.imap.protocol import FAILED_KEYWORD, PROCESSED_KEYWORD, FolderMissing
from helpdesk.sources.imap.source import ImapSource

__all__ = ["FAILED_KEYWORD", "PROCESSED_KEYWORD", "FolderMissing", "ImapSource"]
