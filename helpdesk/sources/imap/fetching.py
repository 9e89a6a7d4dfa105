"""Fetching a folder's new messages in bounded batches, around whatever the server cannot return.

Issue 9 §1 and §3: one message the server cannot FETCH must not stop the
mailbox, and a batch must not hold several huge messages in memory at once:

* sizes come first (``RFC822.SIZE``, from the server's index, cheap, with
  ``INTERNALDATE``: when the mail reached the server, the start of the
  arrival-to-commit latency in the daemon's metrics), and bodies are fetched
  in batches bounded by count *and* total size;
* a failed batch FETCH falls back to one UID at a time, so the failure is
  pinned on the one message that causes it. A server may refuse with NO, or
  — having already announced the message's size — end the whole session
  with ``* BYE`` (Dovecot does, for a message file it cannot read): then the
  connection is opened again and the next UID fetched on the new one;
* a UID missing from a FETCH answer is fetched again on its own before it is
  called gone (another client may have expunged it — or the server skipped it);
* a message over `max_message_bytes` is never fetched whole: its header is.

A network failure (as opposed to the server refusing) propagates: the source
retries the pass with backoff, and no message is blamed for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from helpdesk.sources.imap.protocol import is_network_fault, reason

BODY = b"BODY[]"
HEADER = b"BODY[HEADER]"
SIZE = b"RFC822.SIZE"
INTERNALDATE = b"INTERNALDATE"


@dataclass
class Link:
    """The pass's connection: the client in use, and how to get a fresh one (reselected)."""

    current: Callable[[], Any]
    reconnect: Callable[[], Any]


@dataclass
class Fetched:
    """The answer for one batch: bodies by UID, failures with the server's words, and gone UIDs."""

    bodies: dict[int, bytes] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    gone: list[int] = field(default_factory=list)


def plan_batches(
    sized: Iterable[tuple[int, int]], *, count: int, total_bytes: int
) -> list[list[tuple[int, int]]]:
    """Split (uid, size) pairs, in order, into batches of at most `count` and `total_bytes`.

    A message larger than `total_bytes` on its own makes a batch of one.
    """
    batches: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    current_bytes = 0
    for uid, size in sized:
        if current and (len(current) >= count or current_bytes + size > total_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append((uid, size))
        current_bytes += size
    if current:
        batches.append(current)
    return batches


@dataclass
class Index:
    """What the server's index says about each UID: its size (0: unknown) and, where
    given, when it arrived (INTERNALDATE, RFC 3501 §2.3.3; whole seconds)."""

    sizes: dict[int, int] = field(default_factory=dict)
    arrived: dict[int, datetime] = field(default_factory=dict)


def fetch_index(link: Link, uids: Sequence[int]) -> Index:
    """RFC822.SIZE and INTERNALDATE of each UID; a UID the server did not answer for gets
    size 0 (unknown) and no arrival time."""
    # Both only help (the body fetch tells the size, the arrival time is for metrics).
    answer = _ask(link, uids, "RFC822.SIZE", "INTERNALDATE") or {}
    index = Index()
    for uid in uids:
        item = answer.get(uid) or {}
        index.sizes[uid] = _size(item)
        arrived = _arrival(item)
        if arrived is not None:
            index.arrived[uid] = arrived
    return index


def _size(item: Mapping[bytes, Any]) -> int:
    value = item.get(SIZE)
    return int(value) if isinstance(value, int) else 0


def _arrival(item: Mapping[bytes, Any]) -> datetime | None:
    value = item.get(INTERNALDATE)
    if not isinstance(value, datetime):
        return None
    # imapclient gives local time without a zone (its normalise_times default);
    # astimezone() reads a naive datetime as local time.
    return value.astimezone(UTC)


def fetch_bodies(link: Link, uids: Sequence[int]) -> Fetched:
    """BODY.PEEK[] of each UID (\\Seen stays as it was, RFC 3501 §6.4.5), one UID at a time
    for whatever the batch could not deliver."""
    result = Fetched()
    if not uids:
        return result
    answer = _ask(link, uids, "BODY.PEEK[]") or {}
    for uid in uids:
        body = _body(answer.get(uid), BODY)
        if body is not None:
            result.bodies[uid] = body
    for uid in uids:
        if uid not in result.bodies:
            _fetch_one(link, uid, result)
    return result


def _fetch_one(link: Link, uid: int, result: Fetched) -> None:
    try:
        answer = link.current().fetch([uid], ["BODY.PEEK[]"])
    except IMAPClientError as exc:
        if is_network_fault(exc):
            raise
        result.failed[uid] = reason(exc)
        if isinstance(exc, IMAPClientAbortError):
            link.reconnect()  # the server ended the session over this message
        return
    body = _body(answer.get(uid), BODY)
    if body is None:
        result.gone.append(uid)  # expunged by someone else meanwhile
    else:
        result.bodies[uid] = body


def fetch_headers(link: Link, uids: Sequence[int]) -> dict[int, bytes]:
    """The header of each UID (for messages too large to fetch whole); b"" where none came."""
    answer = _ask(link, uids, "BODY.PEEK[HEADER]") or {}
    return {uid: _body(answer.get(uid), HEADER) or b"" for uid in uids}


def _ask(link: Link, uids: Sequence[int], *items: str) -> dict[int, Any] | None:
    """FETCH `items` for `uids`; None when the server refused (the session reopened if it ended)."""
    try:
        answer: dict[int, Any] = link.current().fetch(list(uids), list(items))
    except IMAPClientError as exc:
        if is_network_fault(exc):
            raise
        if isinstance(exc, IMAPClientAbortError):
            link.reconnect()
        return None
    return answer


def _body(item: Mapping[bytes, Any] | None, key: bytes) -> bytes | None:
    if item is None or key not in item:
        return None
    value = item[key]
    return bytes(value) if value is not None else b""
