"""`helpdesk export [--ticket N | --since DATE] --format mbox|json [-o FILE]`."""

from __future__ import annotations

import io
import json
import mailbox
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from helpdesk.cli import export as export_cli
from helpdesk.mail.mbox import mbox_entry, unquote
from helpdesk.store import schema
from helpdesk.store.models import Message, OutboxItem
from tests.app.test_cli_tickets_reply import run, write_config
from tests.conftest import Store
from tests.mailfactory import make_mail

# RFC 4155: "From " sender, then the date as asctime writes it (day of month padded).
FROM_LINE = re.compile(
    rb"^From \S+ (Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    rb" [ \d]\d \d\d:\d\d:\d\d \d{4}$")
# A body with lines a reader would take for separators, already quoted ones, and CRLF ends.
TRICKY = ("Hi,\n\nFrom what I can see the printer is offline.\n>From the log:\n"
          ">>From line two\nFromage is not a separator.\n\nDana\n")


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    """Shipped rules (so the requester gets an acknowledgement), two tickets, a note."""
    path = write_config(tmp_path, store)
    first = make_mail(subject="Printer offline", body=TRICKY,
                      attachment=("log.txt", b"From here on\n")).replace(b"\n", b"\r\n")
    mails = [
        first,
        make_mail(subject="Re: [#1] Printer offline", message_id="<req-2@mail.example.com>",
                  in_reply_to="<req-1@mail.example.com>", body="Still offline.\n"),
        make_mail(subject="VPN drops", sender="Sam <sam@example.org>", message_id="<vpn@x>"),
    ]
    for raw in mails:
        assert run(path, "ingest", stdin=raw).exit_code == 0
    assert run(path, "tickets", "note", "1", "--as", "alice@example.com",
               "-m", "Called Dana.").exit_code == 0
    return path


def stored(store: Store, ticket_id: int) -> list[tuple[str, bytes]]:
    """(Message-ID, raw bytes) of the ticket's mails in arrival order; outgoing as sent."""
    with store.sessions() as session:
        rows = session.execute(select(Message.message_id, Message.raw, Message.direction)
                               .where(Message.ticket_id == ticket_id, Message.raw.is_not(None))
                               .order_by(Message.id)).all()
        sent = {i.message_id: i.raw for i in session.scalars(select(OutboxItem))}
    assert any(direction == "out" for _, _, direction in rows)
    return [(mid, sent[mid] if direction == "out" else raw) for mid, raw, direction in rows]


def split_mbox(data: bytes) -> list[tuple[bytes, bytes]]:
    """(From_ line, unquoted body) of each message, the mboxrd way."""
    parts = re.split(rb"(?m)^(From [^\n]*)\n", data)
    assert parts[0] == b""
    return [(parts[i], unquote(parts[i + 1])) for i in range(1, len(parts), 2)]


def test_mbox_holds_each_mail_as_received_or_sent(config: Path, store: Store,
                                                  tmp_path: Path) -> None:
    """Every mail of the ticket in order, From_ lines well formed, >From quoting reversible,
    the bytes those received or sent (line ends as LF); notes are not mail."""
    out = tmp_path / "ticket-1.mbox"
    result = run(config, "export", "--ticket", "1", "--format", "mbox", "-o", str(out))
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    expected = stored(store, 1)
    entries = split_mbox(data)
    assert len(entries) == len(expected) == 4  # two from Dana, the acknowledgement, a notice
    for (from_line, body), (_, raw) in zip(entries, expected, strict=True):
        assert FROM_LINE.match(from_line), from_line
        assert body == raw.replace(b"\r\n", b"\n") + b"\n"  # the blank line that ends it
    assert b"\n>From what I can see" in data
    assert b"\n>>From the log:" in data
    assert b"\n>>>From line two" in data
    assert b"\nFromage is not" in data
    # A standard reader sees the same messages in the same order.
    box = mailbox.mbox(str(out))
    assert [m["Message-ID"].strip("<>") for m in box] == [mid for mid, _ in expected]
    box.close()
    assert run(config, "export", "--ticket", "1", "--format", "mbox").stdout_bytes == data


def test_mbox_of_everything_is_ticket_by_ticket(config: Path, store: Store) -> None:
    """Without --ticket every ticket is exported, in ticket order."""
    data = run(config, "export", "--format", "mbox").stdout_bytes
    ids = [re.search(rb"(?mi)^Message-ID: <([^>]+)>", body).group(1).decode()  # type: ignore[union-attr]
           for _, body in split_mbox(data)]
    assert ids == [mid for t in (1, 2) for mid, _ in stored(store, t)]


def test_json_has_tickets_messages_events_and_attachment_metadata(config: Path) -> None:
    """One JSON document: tickets with their messages (notes too), events, outgoing mail and
    attachments' metadata, never their bytes."""
    result = run(config, "export", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["format"], data["version"]) == ("helpdesk-export", 1)
    first, second = data["tickets"]
    assert (first["id"], first["subject"], second["id"]) == (1, "Printer offline", 2)
    assert [m["kind"] for m in first["messages"]] == [
        "customer", "auto_reply", "customer", "system", "note"]
    (attachment,) = first["messages"][0]["attachments"]
    assert attachment["filename"] == "log.txt"
    assert attachment["size"] == len(b"From here on\n")
    assert "content" not in attachment
    assert first["messages"][0]["references"] == []
    assert "ticket.created" in [e["kind"] for e in first["events"]]
    assert [p["address"] for p in first["participants"]] == ["dana.reyes@example.com"]
    assert [d["kind"] for d in first["outgoing"]] == ["auto_reply", "system"]
    assert first["messages"][0]["text"].startswith("Hi,")


def test_since_and_one_ticket(config: Path, store: Store) -> None:
    """--since takes the tickets active since then; --ticket one; both at once is a usage error."""
    with store.engine.begin() as conn:
        conn.execute(update(schema.tickets).where(schema.tickets.c.id == 1)
                     .values(updated_at=datetime(2020, 1, 1, tzinfo=UTC)))
    since = json.loads(run(config, "export", "--since", "2021-01-01", "--format", "json").output)
    assert [t["id"] for t in since["tickets"]] == [2]
    one = json.loads(run(config, "export", "--ticket", "1", "--format", "json").output)
    assert [t["id"] for t in one["tickets"]] == [1]
    assert run(config, "export", "--ticket", "1", "--since", "2021-01-01",
               "--format", "json").exit_code == 2
    missing = run(config, "export", "--ticket", "9", "--format", "mbox")
    assert (missing.exit_code, "no ticket 9" in missing.output) == (1, True)


def test_an_interrupted_export_leaves_no_file(config: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """-o FILE appears only when the export is complete."""
    def broken(*args: object, **kwargs: object) -> object:
        yield from ()
        raise OSError("disk full")

    monkeypatch.setattr(export_cli.queries, "raw_mails", broken)
    out = tmp_path / "all.mbox"
    with pytest.raises(OSError, match="disk full"):
        run(config, "export", "--format", "mbox", "-o", str(out))
    assert list(tmp_path.glob("*.mbox*")) == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_for_big_exports() -> None:
    """Click's bar is drawn on a terminal for a big export; in a pipe or log nothing."""
    for stream, total, drawn in ((Terminal(), 500, True), (io.StringIO(), 500, False),
                                 (Terminal(), 3, False)):
        with export_cli._progress(total, stream) as advance:  # type: ignore[arg-type]
            advance(total)
        assert ("Exporting tickets" in stream.getvalue()) is drawn


def test_no_progress_text_in_a_pipe(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on a terminal, a big export prints its data and nothing else."""
    monkeypatch.setattr(export_cli, "PROGRESS_FROM", 1)
    result = run(config, "export", "--format", "json")
    assert "Exporting" not in result.output
    json.loads(result.stdout)


@pytest.mark.parametrize(("raw", "quoted"), [
    (b"From: a@b\r\n\r\nFrom me\r\n", b"From: a@b\n\n>From me\n"),
    (b"Subject: x\n\n>From\n>>From x\nFrom y", b"Subject: x\n\n>From\n>>>From x\n>From y\n"),
])
def test_mboxrd_quoting(raw: bytes, quoted: bytes) -> None:
    """Lines that start with >*From get one more >; the reader's unquote gives them back."""
    entry = mbox_entry(raw, sender="a@b", when=datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    head, body = entry.split(b"\n", 1)
    assert head == b"From a@b Mon Mar  2 09:00:00 2026"
    assert body == quoted + b"\n"
    assert unquote(body[:-1]) == raw.replace(b"\r\n", b"\n") + (b"" if raw.endswith(b"\n")
                                                               else b"\n")
