"""A large mail through both stages: what a worker leaves behind is stored whole (issue 12 §10).

A worker sends large attachments back without their bytes; the store decodes
them again from the raw mail, and writes large blobs into SQLite without
copies (helpdesk.store.blobs). Whatever the path, the stored raw mail, the
attachment rows and the mail the rules send on must hold every byte.
"""

from __future__ import annotations

import hashlib
from email.message import EmailMessage

from sqlalchemy import select

from helpdesk.desk import directory
from helpdesk.intake import PreparePool
from helpdesk.intake.committer import store_now
from helpdesk.mail.parse import parse
from helpdesk.store.blobs import LARGE_BLOB
from helpdesk.store.models import Attachment, Message, OutboxItem
from helpdesk.values import Origin, OutcomeKind
from tests.conftest import Clock, Store
from tests.service.test_pipeline import TEAMS, TeamSpec, make_ctx

BIG = bytes(range(256)) * (LARGE_BLOB // 256 * 2)  # 2 MB: streamed into SQLite
MEDIUM = bytes(range(255, -1, -1)) * 512  # 128 KB: detached, but bound as usual


def phishing_report() -> bytes:
    """A phishing report (the shipped rules forward it to security) with three attachments."""
    msg = EmailMessage()
    msg["From"] = "Dana Reyes <dana.reyes@example.com>"
    msg["To"] = "support@example.com"
    msg["Subject"] = "Suspicious email - phishing?"
    msg["Message-ID"] = "<large@example.com>"
    msg["Date"] = "Mon, 02 Mar 2026 08:30:00 +0000"
    msg.set_content("I got this phishing mail, please check.\n")
    msg.add_attachment(b"small", maintype="application", subtype="octet-stream",
                       filename="a-small.bin")
    msg.add_attachment(BIG, maintype="application", subtype="octet-stream", filename="b-big.bin")
    msg.add_attachment(MEDIUM, maintype="application", subtype="octet-stream",
                       filename="c-medium.bin")
    return msg.as_bytes()


def test_a_large_mail_from_a_worker_is_stored_and_forwarded_whole(store: Store,
                                                                  clock: Clock) -> None:
    """The raw mail and every attachment are stored byte for byte and in order, and the
    forward to the security team carries the attachments the worker did not send back."""
    with store.sessions.begin() as session:
        directory.sync(session, [TeamSpec(n, a) for n, a in TEAMS.items()], [])
    ctx = make_ctx(clock)
    raw = phishing_report()
    assert len(raw) > LARGE_BLOB
    with PreparePool(1, time_limit=60, start_method="fork") as pool:
        prepared = pool.prepare(raw, ctx.prepare)
    assert prepared.msg is not None
    assert [part.detached for part in prepared.msg.attachments] == [False, True, True]

    (outcome,) = store_now(store.sessions, [(raw, Origin("file", path="large.eml"), prepared)],
                           ctx)
    assert outcome.kind is OutcomeKind.NEW_TICKET

    # Compared by digest: a failing comparison of megabytes would take pytest minutes to show.
    with store.sessions() as session:
        message = session.get_one(Message, outcome.message_row_id)
        assert digest(message.raw) == digest(raw)
        rows = session.scalars(select(Attachment).where(
            Attachment.message_id == outcome.message_row_id).order_by(Attachment.id)).all()
        stored = [(a.filename, a.size, a.sha256, digest(a.content)) for a in rows]
        forward = session.scalars(select(OutboxItem).where(OutboxItem.kind == "forward")).one()
    expected = [(name, len(data), digest(data), digest(data))
                for name, data in (("a-small.bin", b"small"), ("b-big.bin", BIG),
                                   ("c-medium.bin", MEDIUM))]
    assert stored == expected
    sent = parse(forward.raw)
    assert [(a.filename, digest(a.content)) for a in sent.attachments] == [
        (name, content) for name, _, _, content in expected
    ]


def digest(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()
