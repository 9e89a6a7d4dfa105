"""`helpdesk ingest` of one piped mail, handed to the running daemon over its LMTP socket.

An MTA pipe starts one process per mail, and a process that opens the store
itself pays for importing SQLAlchemy, validating the settings and loading the
rules and templates: most of a second (issue 13). When the daemon listens on
`[lmtp] socket`, the pipe only hands the mail over and waits for the daemon's
answer, which comes after the daemon's commit: the standard library's LMTP
client and a raw look at the config file for the socket, nothing else. When
nobody listens there, or the daemon does not take the recipient, `ingest`
stores the mail itself as before; the exit codes are the same either way.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from helpdesk.configfile import MAX_MESSAGE_BYTES, find_config
from helpdesk.errors import ConfigError

__all__ = ["Answer", "Target", "hand_over", "outcome_of", "target"]

# Seconds the daemon may take to answer one step; it answers DATA after its commit.
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Target:
    """Where the daemon listens, and the size limit it applies."""

    socket: Path
    max_message_bytes: int


@dataclass(frozen=True)
class Answer:
    """The daemon's reply to the mail (to DATA, or to the step that refused it)."""

    code: int
    text: str


def target(config: Path | None, environ: Mapping[str, str]) -> Target | None:
    """The daemon's LMTP socket from the config file, read raw; None without one.

    Anything wrong with the file is left for the settings to report: the
    caller then takes the usual path, which validates it.
    """
    try:
        path = find_config(config, environ)
        if path is None:
            return None
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (ConfigError, OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    lmtp, intake = data.get("lmtp"), data.get("intake")
    socket = lmtp.get("socket") if isinstance(lmtp, dict) else None
    if not isinstance(socket, str) or not socket:
        return None
    limit = intake.get("max_message_bytes") if isinstance(intake, dict) else None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        limit = MAX_MESSAGE_BYTES
    return Target(path.parent / socket, limit)


def hand_over(where: Target, raw: bytes, sender: str | None, recipient: str) -> Answer | None:
    """Deliver `raw` over LMTP; None when the mail was not handed over and may be stored here.

    None: nobody listens, the daemon does not take the envelope (a sender it
    cannot parse, a recipient not ours), or it refused the mail for good (5xx:
    nothing stored); `ingest` then decides itself, as it always did.
    Once DATA was sent, a lost connection is a temporary failure (451): the
    daemon may have stored it, and dedupe recognises the mail when it comes again.
    """
    if not where.socket.is_socket():
        return None  # no daemon here: spare the pipe importing smtplib and ssl
    import smtplib

    try:
        client = smtplib.LMTP(str(where.socket), timeout=TIMEOUT_S)
    except OSError:
        return None
    sent = False
    try:
        client.ehlo_or_helo_if_needed()
        for command, argument in ((client.mail, sender or ""), (client.rcpt, recipient)):
            code, text = command(argument)
            if code >= 500:
                return None  # an envelope the daemon will not take: store it here
            if code != 250:
                return Answer(code, text.decode("utf-8", "replace"))
        sent = True
        code, text = client.data(raw)
        # Refused for good (too large, a line too long...): nothing was stored, and
        # storing it here decides as `ingest` always did.
        return Answer(code, text.decode("utf-8", "replace")) if code < 500 else None
    except smtplib.SMTPDataError as exc:
        return None if exc.smtp_code >= 500 else Answer(exc.smtp_code, str(exc.smtp_error))
    except (OSError, smtplib.SMTPException) as exc:
        if not sent:
            return None
        return Answer(451, f"the daemon did not answer: {exc}")
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


_QUEUED = re.compile(r"queued as ticket \d+, (?P<what>a new ticket|a reply)")


def outcome_of(answer: Answer) -> str:
    """Which count a 250 answer adds to: new_tickets, replies, duplicates or quarantined."""
    found = _QUEUED.search(answer.text)
    if found:
        return "new_tickets" if found["what"] == "a new ticket" else "replies"
    if "already stored" in answer.text:
        return "duplicates"
    return "quarantined"
