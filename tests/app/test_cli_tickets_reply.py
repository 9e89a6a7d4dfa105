"""`helpdesk tickets reply|note|merge` against a real store; the relay checked byte for byte."""

from __future__ import annotations

import email
import email.policy
import json
import shlex
import sys
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from helpdesk.cli import cli
from helpdesk.store.models import Message, OutboxItem, Ticket
from tests.conftest import Store
from tests.mailfactory import make_mail
from tests.servers.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
[helpdesk]
name = "Example IT"
support_address = "support@example.com"
secret = "not-so-secret"

[database]
url = "{url}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
timeout = 5.0

# The agents' mail in these tests is about the desk, not about trust.
[security]
trust_from_header = true

[rules]
dir = "{root}/rules"

[templates]
dir = "{root}/templates"

{teams}
[[agent]]
name = "Alice Admin"
addresses = ["alice@example.com", "alice@home.example"]
teams = ["networking"]

[[agent]]
name = "Bob Builder"
addresses = ["bob@example.com"]
"""

# The teams the shipped rules route to.
TEAMS = "".join(
    f'[[team]]\nname = "{name}"\naddress = "{name}@example.com"\n\n'
    for name in ("support", "networking", "infrastructure", "identity-and-access", "security")
)
ANSWER = "Please reinstall the VPN client from the portal.\nAlice"


def write_config(tmp_path: Path, store: Store, smtp_port: int = 25) -> Path:
    path = tmp_path / "helpdesk.toml"
    path.write_text(CONFIG.format(url=store.url, smtp_port=smtp_port, root=ROOT.as_posix(),
                                  teams=TEAMS))
    return path


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    return write_config(tmp_path, store)


def run(config: Path, *args: str, stdin: bytes | str | None = None,
        editor: str | None = None) -> Result:
    env = {"HELPDESK_DATABASE_URL": None, "VISUAL": None, "EDITOR": editor or "false"}
    return CliRunner().invoke(cli, ["--config", str(config), *args], input=stdin,
                              catch_exceptions=False, env=env)


def conversation(config: Path) -> None:
    """Ticket 1: Dana asks (copying Carl and agent Alice), then answers once more."""
    first = make_mail(subject="VPN drops every hour",
                      cc="Carl <carl@example.com>, Alice <alice@example.com>",
                      body="Hi,\nthe VPN drops every hour.\nDana\n")
    again = make_mail(subject="Re: [#1] VPN drops every hour",
                      message_id="<req-2@mail.example.com>",
                      in_reply_to="<req-1@mail.example.com>",
                      references="<req-1@mail.example.com>",
                      body="It just happened again at 10:00.\n\n> Hi,\n> the VPN drops\n")
    for raw in (first, again):
        assert run(config, "ingest", stdin=raw).exit_code == 0


def agent_replies(store: Store) -> list[OutboxItem]:
    with store.sessions() as session:
        return list(session.scalars(
            select(OutboxItem).where(OutboxItem.kind == "agent_reply").order_by(OutboxItem.id)))


def outbox_count(store: Store) -> int:
    with store.sessions() as session:
        return session.scalar(select(func.count(OutboxItem.id))) or 0


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body_text(raw: bytes) -> str:
    """The plain-text body of a composed mail, with newlines as in Python."""
    body = parsed(raw).get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


def addresses(message: EmailMessage, header: str) -> list[str]:
    return [a for _, a in getaddresses(message.get_all(header, []))]


# -- reply ---------------------------------------------------------------------------------


def test_reply_queues_the_relay_to_the_requester_thread(config: Path, store: Store) -> None:
    """The relay goes To the requester, Cc the copied people (never an agent), on her thread."""
    conversation(config)
    result = run(config, "tickets", "reply", "1", "--as", "Alice@Example.com", "-m", ANSWER)
    assert result.exit_code == 0, result.output
    [item] = agent_replies(store)
    assert result.output == (f"[#1] reply queued as outbox item {item.id}: "
                             "to dana.reyes@example.com, cc carl@example.com\n")
    assert item.envelope_to == ["dana.reyes@example.com", "carl@example.com"]
    mail = parsed(item.raw)
    assert addresses(mail, "To") == ["dana.reyes@example.com"]
    assert addresses(mail, "Cc") == ["carl@example.com"]
    assert addresses(mail, "From") == ["support@example.com"]
    assert str(mail["In-Reply-To"]) == "<req-2@mail.example.com>"
    assert str(mail["References"]).split() == ["<req-1@mail.example.com>",
                                               "<req-2@mail.example.com>"]
    assert "[#1]" in str(mail["Subject"])
    assert ANSWER in body_text(item.raw)
    with store.sessions() as session:
        ticket = session.get_one(Ticket, 1)
        assert ticket.status == "open"
        assert ticket.first_response_at is not None
        stored = session.scalars(select(Message).where(Message.kind == "agent_reply")).one()
        assert (stored.direction, stored.message_id) == ("out", item.message_id)


def test_reply_json_and_from_a_file(config: Path, store: Store, tmp_path: Path) -> None:
    """--file reads the text; --json tells what was queued."""
    conversation(config)
    path = tmp_path / "answer.txt"
    path.write_text(ANSWER + "\n\n")
    result = run(config, "tickets", "reply", "1", "--as", "alice@home.example",
                 "--file", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    [item] = agent_replies(store)
    assert data == {"ticket_id": 1, "reference": "[#1]", "outbox_id": item.id,
                    "message_id": item.message_id, "from": "Alice Admin",
                    "to": "dana.reyes@example.com", "cc": ["carl@example.com"]}
    assert body_text(item.raw).startswith(ANSWER + "\n\n-- \n")


@pytest.fixture
def fake_editor(tmp_path: Path) -> tuple[str, Path]:
    """An $EDITOR that keeps what it was shown and writes the reply above it."""
    seen = tmp_path / "seen.txt"
    script = tmp_path / "editor.py"
    script.write_text(
        "import pathlib, sys\n"
        "path = pathlib.Path(sys.argv[1])\n"
        "shown = path.read_text()\n"
        f"pathlib.Path({str(seen)!r}).write_text(shown)\n"
        f"path.write_text({ANSWER!r} + '\\n' + shown)\n"
    )
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}", seen


def test_reply_from_the_editor_quotes_the_last_customer_mail(
    config: Path, store: Store, fake_editor: tuple[str, Path]
) -> None:
    """$EDITOR shows the last customer mail quoted below the marker; only the text above goes."""
    conversation(config)
    editor, seen = fake_editor
    result = run(config, "tickets", "reply", "1", "--as", "alice@example.com", editor=editor)
    assert result.exit_code == 0, result.output
    shown = seen.read_text()
    marker = "# ------------------------ >8 ------------------------"
    assert shown.startswith("\n\n" + marker + "\n")
    assert "# Reply as Alice Admin to [#1] VPN drops every hour" in shown
    assert "> It just happened again at 10:00." in shown
    assert "> Hi," not in shown  # the new text of her mail, not its quoted history
    text = body_text(agent_replies(store)[0].raw)
    assert text.startswith(ANSWER + "\n\n-- \n")
    assert marker not in text
    assert "happened again" not in text


def test_unchanged_or_empty_editor_aborts(
    config: Path, store: Store, tmp_path: Path
) -> None:
    """An editor closed without saving, or with nothing above the marker, queues nothing."""
    conversation(config)
    before = outbox_count(store)
    result = run(config, "tickets", "reply", "1", "--as", "alice@example.com", editor="true")
    assert (result.exit_code, result.output) == (1, "Error: empty reply: nothing was changed\n")
    blank = tmp_path / "blank.py"
    blank.write_text("import pathlib, sys\np = pathlib.Path(sys.argv[1])\n"
                     "p.write_text('   \\n' + p.read_text())\n")
    result = run(config, "tickets", "reply", "1", "--as", "alice@example.com",
                 editor=f"{shlex.quote(sys.executable)} {shlex.quote(str(blank))}")
    assert result.exit_code == 1
    assert outbox_count(store) == before
    with store.sessions() as session:
        assert session.get_one(Ticket, 1).status == "new"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--as", "nobody@example.com", "-m", "hi"), 1, "no agent nobody@example.com"),
        (("--as", "dana.reyes@example.com", "-m", "hi"), 1, "no agent dana.reyes@example.com"),
        (("--as", "alice@example.com", "-m", "  \n"), 1, "empty reply"),
        (("--as", "alice@example.com", "-m", "hi", "--file", "-"), 2, "not both"),
        (("-m", "hi"), 2, "Missing option '--as'"),
    ],
)
def test_reply_refusals(
    config: Path, store: Store, args: tuple[str, ...], code: int, message: str
) -> None:
    """Unknown agents, empty text and contradictory options queue nothing."""
    conversation(config)
    before = outbox_count(store)
    result = run(config, "tickets", "reply", "1", *args)
    assert result.exit_code == code
    assert message in result.output
    assert outbox_count(store) == before


def test_reply_as_disabled_agent_or_to_unknown_ticket_exits_1(config: Path, store: Store) -> None:
    """A disabled agent cannot reply; neither can anyone to a ticket that does not exist."""
    conversation(config)
    assert run(config, "agents", "disable", "alice@example.com").exit_code == 0
    result = run(config, "tickets", "reply", "1", "--as", "alice@example.com", "-m", "hi")
    assert (result.exit_code, "agent alice@example.com is disabled" in result.output) == (1, True)
    result = run(config, "tickets", "reply", "7", "--as", "bob@example.com", "-m", "hi")
    assert (result.exit_code, "no ticket 7" in result.output) == (1, True)
    assert agent_replies(store) == []


def test_reply_with_nobody_to_tell_changes_nothing(config: Path, store: Store) -> None:
    """A ticket without requester or copied people: exit 1, and no response is recorded."""
    with store.sessions.begin() as session:
        session.add(Ticket(subject="internal", status="new", priority="normal"))
    result = run(config, "tickets", "reply", "1", "--as", "alice@example.com", "-m", "hi")
    assert result.exit_code == 1
    assert "nothing was queued" in result.output
    with store.sessions() as session:
        ticket = session.get_one(Ticket, 1)
        assert (ticket.status, ticket.first_response_at) == ("new", None)


def test_reply_is_delivered_by_outbox_send(store: Store, tmp_path: Path) -> None:
    """`outbox send` hands the relay to a real SMTP server, to the requester and Carl only."""
    sink = SmtpSink()
    sink.start()
    try:
        config = write_config(tmp_path, store, sink.port)
        conversation(config)
        assert run(config, "tickets", "reply", "1", "--as", "alice@example.com",
                   "-m", ANSWER).exit_code == 0
        assert run(config, "outbox", "send").exit_code == 0
        relayed = [m for m in sink.messages if b"reinstall the VPN client" in m.data]
        assert len(relayed) == 1
        assert relayed[0].recipients == ["dana.reyes@example.com", "carl@example.com"]
        assert relayed[0].sender == "support@example.com"
    finally:
        sink.stop()


# -- note ----------------------------------------------------------------------------------


def test_note_is_stored_and_never_sent(config: Path, store: Store) -> None:
    """A note is shown on the ticket as a `note` from the agent and queues no mail."""
    conversation(config)
    before = outbox_count(store)
    result = run(config, "tickets", "note", "1", "--as", "bob@example.com",
                 "-m", "Dana's laptop has the old client.")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("[#1] note ")
    assert result.output.endswith(" added by bob@example.com\n")
    assert outbox_count(store) == before
    shown = json.loads(run(config, "tickets", "show", "1", "--json").output)
    note = shown["messages"][-1]
    assert (note["kind"], note["direction"], note["from"], note["text"]) == (
        "note", "in", "bob@example.com", "Dana's laptop has the old client.")
    assert note["message_id"].startswith("note.")
    assert note["message_id"].endswith("@example.com")
    assert shown["events"][-1]["kind"] == "note.added"
    assert shown["status"] == "new"  # a note is not a response


def test_note_from_stdin_json(config: Path) -> None:
    """`--file -` reads the note from stdin; --json prints the stored message."""
    conversation(config)
    result = run(config, "tickets", "note", "1", "--as", "alice@example.com", "--file", "-",
                 "--json", stdin="Escalated to the VPN vendor.\n")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["reference"], data["kind"], data["text"]) == (
        "[#1]", "note", "Escalated to the VPN vendor.")


def test_note_by_unknown_agent_exits_1(config: Path) -> None:
    """Only an existing, active agent writes notes."""
    conversation(config)
    result = run(config, "tickets", "note", "1", "--as", "dana.reyes@example.com", "-m", "x")
    assert result.exit_code == 1
    assert "no agent dana.reyes@example.com" in result.output


# -- merge ---------------------------------------------------------------------------------


def test_merge_then_mail_with_the_old_tag_lands_on_the_new_ticket(config: Path) -> None:
    """After `merge 1 2`, ticket 1 is closed and a reply tagged [#1] is added to ticket 2."""
    conversation(config)
    other = make_mail(subject="VPN again", sender="Sam <sam@example.org>",
                      message_id="<sam-1@example.org>")
    run(config, "ingest", stdin=other)
    result = run(config, "tickets", "merge", "1", "2")
    assert (result.exit_code, result.output) == (0, (
        "[#1] merged into [#2] and closed; copied participants alice@example.com, "
        "carl@example.com, dana.reyes@example.com\n"))
    late = make_mail(subject="Re: [#1] VPN drops every hour",
                     message_id="<req-3@mail.example.com>", body="Any news?\n")
    assert run(config, "ingest", "--json", stdin=late).exit_code == 0
    first = json.loads(run(config, "tickets", "show", "1", "--json").output)
    second = json.loads(run(config, "tickets", "show", "2", "--json").output)
    assert (first["status"], first["merged_into"]) == ("closed", 2)
    assert [m["message_id"] for m in second["messages"] if m["direction"] == "in"] == [
        "sam-1@example.org", "req-3@mail.example.com"]
    assert "ticket.merged" in [e["kind"] for e in second["events"]]


def test_merge_json(config: Path) -> None:
    """--json prints both tickets and what was copied."""
    conversation(config)
    run(config, "ingest", stdin=make_mail(subject="VPN again", sender="sam@example.org",
                                          message_id="<sam-1@example.org>"))
    data = json.loads(run(config, "tickets", "merge", "2", "1", "--json").output)
    assert (data["merged"]["id"], data["merged"]["status"], data["merged"]["merged_into"]) == (
        2, "closed", 1)
    assert (data["into"]["id"], data["participants_added"]) == (1, ["sam@example.org"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("1", "1"), "cannot merge ticket 1 into itself"),
        (("3", "2"), "ticket 2 is itself merged into ticket 1; merge into ticket 1 instead"),
        (("2", "3"), "ticket 2 is already merged into ticket 1"),
        (("3", "9"), "no ticket 9"),
    ],
)
def test_merge_refusals_exit_1(config: Path, args: tuple[str, str], message: str) -> None:
    """Merging into itself, into a merged ticket, twice, or into nothing is exit 1."""
    for i in range(3):
        run(config, "ingest", stdin=make_mail(subject=f"Issue {i}",
                                              message_id=f"<m{i}@example.com>"))
    assert run(config, "tickets", "merge", "2", "1").exit_code == 0
    result = run(config, "tickets", "merge", *args)
    assert result.exit_code == 1
    assert message in result.output


def test_reply_and_note_on_a_merged_ticket_exit_1(config: Path, store: Store) -> None:
    """Work on a merged ticket is refused with the ticket to use instead."""
    conversation(config)
    run(config, "ingest", stdin=make_mail(subject="VPN again", sender="sam@example.org",
                                          message_id="<sam-1@example.org>"))
    run(config, "tickets", "merge", "1", "2")
    for command in ("reply", "note"):
        result = run(config, "tickets", command, "1", "--as", "alice@example.com", "-m", "x")
        assert result.exit_code == 1
        assert "ticket 1 was merged into ticket 2; use that one" in result.output
    assert agent_replies(store) == []
