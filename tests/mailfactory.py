"""Build raw test mails the way real clients write them, without hand-typed MIME."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime


def make_mail(
    *,
    subject: str = "Printer on 3rd floor is jammed",
    sender: str = "Dana Reyes <dana.reyes@example.com>",
    to: str = "support@example.com",
    cc: str | None = None,
    body: str = "Hi,\n\nthe printer on the 3rd floor shows error E-104.\n\nDana\n",
    message_id: str | None = "<req-1@mail.example.com>",
    in_reply_to: str | None = None,
    references: str | None = None,
    date: datetime | None = None,
    extra: dict[str, str] | None = None,
    attachment: tuple[str, bytes] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime(2026, 3, 2, 8, 30, tzinfo=UTC))
    if message_id:
        msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in (extra or {}).items():
        msg[name] = value
    msg.set_content(body)
    if attachment:
        msg.add_attachment(attachment[1], maintype="application", subtype="octet-stream",
                           filename=attachment[0])
    return msg.as_bytes()


def delivered_via(raw: bytes, mailbox: str) -> bytes:
    """The same mail as a second mailbox receives it: new trace headers on top."""
    trace = (
        f"Return-Path: <dana.reyes@example.com>\r\n"
        f"Delivered-To: {mailbox}\r\n"
        f"Received: from mx2.example.com by imap.example.com; Mon, 2 Mar 2026 08:31:02 +0000\r\n"
    ).encode()
    return trace + raw
