"""Writing mail into an mbox file (RFC 4155), in the `mboxrd` flavour.

Each message starts with a `From ` line naming its sender and date in the
asctime form (`From dana@example.com Mon Mar  2 09:00:00 2026`). Body lines
that begin with `From `, or with `>`s and then `From `, get one more `>`
(mboxrd), so a reader that removes one `>` gets every line back exactly.
Lines end in LF as mbox readers expect; everything else is the message's
bytes as they are.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

# A line that a reader would take for a separator, already quoted or not.
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


def from_line(sender: str, when: datetime) -> bytes:
    """The separator line: the sender without white space (or MAILER-DAEMON) and a UTC date."""
    address = "".join(sender.split()) or "MAILER-DAEMON"
    date = time.asctime(when.astimezone(UTC).timetuple())
    return f"From {address} {date}\n".encode()


def mbox_entry(raw: bytes, *, sender: str, when: datetime) -> bytes:
    """One message as it goes into an mbox file: separator, quoted lines, a blank line."""
    body = raw.replace(b"\r\n", b"\n")
    body = _FROM_LINE.sub(rb">\1", body)
    if not body.endswith(b"\n"):
        body += b"\n"
    return from_line(sender, when) + body + b"\n"


def unquote(body: bytes) -> bytes:
    """The reverse of the mboxrd quoting of one message's lines (for readers and tests)."""
    return re.sub(rb"^>(>*From )", rb"\1", body, flags=re.MULTILINE)
