"""IMAP conversation helpers shared by the source: faults, untagged responses, folders.

Nothing here knows about ingest or the store; each function takes an
imapclient connection (or an exception) and returns plain values.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from helpdesk.errors import StoreUnavailable
from helpdesk.intake import PoolClosed
from helpdesk.store.models import MailboxState

SEEN = b"\\Seen"
DELETED = b"\\Deleted"
# A keyword (RFC 3501 §2.3.2) marks what we stored in "flag" mode. \Seen alone
# cannot: a person reading the mailbox sets it too.
PROCESSED_KEYWORD = b"$HelpdeskProcessed"
# Marks a message we quarantined but could not move to the failed folder.
FAILED_KEYWORD = b"$HelpdeskFailed"


class FolderMissing(Exception):
    """The folder to watch does not exist on the server."""

    def __init__(self, folder: str) -> None:
        super().__init__(f"folder {folder!r} does not exist on the server")
        self.folder = folder


class UidValidityChanged(Exception):
    """The folder's UIDVALIDITY changed in the middle of a pass: every UID in hand is void."""

    def __init__(self, before: int, now: int) -> None:
        super().__init__(f"UIDVALIDITY changed from {before} to {now} during a pass")


# The health a fault puts a mailbox in (`helpdesk mailbox list`), by log event.
HEALTH = {
    "store.unavailable": "store unavailable",
    "imap.login_failed": "login failed",
    "imap.folder_missing": "folder missing",
    "imap.connection_lost": "unreachable",
    "imap.command_failed": "server error",
    "imap.unexpected_error": "internal error",
}


def classify_fault(exc: BaseException) -> tuple[str, bool]:
    """The log event for a fault, and whether the IMAP connection must be dropped."""
    if isinstance(exc, StoreUnavailable):
        return "store.unavailable", False  # the IMAP side is fine; keep the connection
    if isinstance(exc, PoolClosed):
        return "daemon.stopping", False
    if isinstance(exc, LoginError):
        return "imap.login_failed", True
    if isinstance(exc, FolderMissing):
        return "imap.folder_missing", True
    if isinstance(exc, UidValidityChanged):
        return "imap.uidvalidity_changed", False  # the next pass starts over under the new one
    # socket.timeout, ssl.SSLError and ConnectionError are all OSError.
    if isinstance(exc, IMAPClientAbortError | OSError):
        return "imap.connection_lost", True
    if isinstance(exc, IMAPClientError):
        return "imap.command_failed", True
    return "imap.unexpected_error", True


def reason(exc: BaseException) -> str:
    """`Type: message` for logs; imapclient wraps server text as a bytes repr, undone here."""
    text = str(exc)
    quoted = re.fullmatch(r"b(['\"])(.*)\1", text, flags=re.DOTALL)
    if quoted:
        text = quoted.group(2)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__



def is_network_fault(exc: BaseException) -> bool:
    """The network or the socket failed, as opposed to the server refusing a command.

    A server that cannot deliver a message it started to send ends the session
    with ``* BYE`` and its reason (Dovecot: "FETCH failed: Internal error
    occurred" for a message file it cannot read); imaplib raises that as an
    abort carrying the server's words. Its own socket failures say "socket
    error" (EOF included) or are OSErrors.
    """
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, IMAPClientAbortError) and "socket error" in str(exc)


def chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def take_untagged(client: Any, *names: str) -> dict[str, list[Any]]:
    """Remove and return the untagged responses imaplib collected under `names`.

    imaplib keeps every untagged response it did not hand to a caller in
    `untagged_responses` (until the next SELECT); imapclient offers no public
    view of them.
    """
    collected = getattr(getattr(client, "_imap", None), "untagged_responses", None)
    if not isinstance(collected, dict):
        return {name: [] for name in names}
    return {name: list(collected.pop(name, None) or ()) for name in names}


def input_buffered(client: Any) -> bool:
    """Whether imaplib's reader holds server data nobody has read yet (it never waits).

    A non-blocking peek returns what is buffered, or reads what the socket
    (or the TLS layer) already has, or finds nothing.
    """
    peek = getattr(getattr(getattr(client, "_imap", None), "file", None), "peek", None)
    if peek is None:
        return False
    sock = client.socket()
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(peek(1))
    except OSError:  # nothing to read (TLS says so with SSLWantReadError)
        return False
    finally:
        sock.settimeout(timeout)


def announces_mail(response: tuple[Any, ...]) -> bool:
    # RFC 3501 §7.3.1/§7.3.2 (RFC 9051 drops RECENT): "* n EXISTS" is new mail;
    # a BYE means the server is going away and the pass will find out.
    return len(response) >= 2 and (
        response[1] in (b"EXISTS", b"RECENT") or response[0] == b"BYE"
    )


def logout(client: Any) -> None:
    """LOGOUT (RFC 3501 §6.1.3), else close: imaplib leaves the socket open when LOGOUT fails."""
    try:
        client.logout()
    except (IMAPClientError, OSError):
        close(client)


def close(client: Any) -> None:
    """Drop a connection without a LOGOUT round trip (it may be dead already)."""
    with contextlib.suppress(Exception):
        client.shutdown()


def folder_status(client: Any, flags: Sequence[bytes], name: str) -> dict[str, Any]:
    if any(flag.lower() == b"\\noselect" for flag in flags):
        return {"name": name, "selectable": False}
    status = client.folder_status(name, ["MESSAGES", "UNSEEN", "UIDNEXT", "UIDVALIDITY"])
    return {
        "name": name,
        "selectable": True,
        "messages": int(status[b"MESSAGES"]),
        "unseen": int(status[b"UNSEEN"]),
        "uidnext": int(status[b"UIDNEXT"]),
        "uidvalidity": int(status[b"UIDVALIDITY"]),
    }


def state_data(state: MailboxState) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "uidvalidity": state.uidvalidity,
        "last_uid": state.last_uid,
        "last_poll_at": iso(state.last_poll_at),
        "lease_holder": state.lease_holder,
        "lease_expires_at": iso(state.lease_expires_at),
        "health": state.health,
        "last_error": state.last_error,
        "problem_since": iso(state.problem_since),
        "counters": dict(state.counters or {}),
    }
