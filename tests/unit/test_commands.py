"""parse_commands: the `#command` block at the top of an agent's mail."""

from __future__ import annotations

import pytest

from helpdesk.mail.commands import (
    DEFAULT_COMMANDS,
    MAX_ARGUMENT,
    MAX_COMMANDS,
    MAX_TAGS_PER_LINE,
    Command,
    parse_commands,
)

STATUSES = "new, open, pending, resolved, closed"
PRIORITIES = "low, normal, high, urgent"


@pytest.mark.parametrize(
    ("line", "name", "argument"),
    [
        ("#assign alice@example.com", "assign", "alice@example.com"),
        ("#team networking", "team", "networking"),
        ("#status pending", "status", "pending"),
        ("#status resolved", "status", "resolved"),
        ("#status closed", "status", "closed"),
        ("#priority high", "priority", "high"),
        ("#priority urgent", "priority", "urgent"),
        ("#tag vpn", "tag", "vpn"),
    ],
)
def test_every_command(line: str, name: str, argument: str) -> None:
    """Each default command is read with its name and argument."""
    block = parse_commands(f"{line}\n\nThe VPN profile was renewed.")
    assert block.commands == (Command(name=name, argument=argument, line=line),)
    assert block.unknown == ()
    assert block.remaining == "The VPN profile was renewed."
    assert block.is_note is False


def test_default_command_names() -> None:
    """The defaults are exactly the commands the issue names."""
    assert frozenset({"assign", "team", "status", "priority", "tag", "note"}) == DEFAULT_COMMANDS


def test_several_commands_and_exact_remaining_text() -> None:
    """A block of commands is removed; the text below is kept exactly, blank lines inside too."""
    text = (
        "\n\n#assign alice@example.com\n#status pending\n#tag vpn\n\n\n"
        "Hi Dana,\n\nplease restart the VPN client.\n\n> quoted #tag not a command\n"
    )
    block = parse_commands(text)
    assert [(c.name, c.argument) for c in block.commands] == [
        ("assign", "alice@example.com"),
        ("status", "pending"),
        ("tag", "vpn"),
    ]
    assert block.remaining == (
        "Hi Dana,\n\nplease restart the VPN client.\n\n> quoted #tag not a command\n"
    )


def test_names_and_vocabulary_are_case_insensitive() -> None:
    """`#STATUS Resolved` is `status resolved`; free arguments keep their case."""
    block = parse_commands("#STATUS Resolved\n#Priority HIGH\n#Team Networking\nThanks!")
    assert [(c.name, c.argument) for c in block.commands] == [
        ("status", "resolved"),
        ("priority", "high"),
        ("team", "Networking"),
    ]
    assert block.commands[0].line == "#STATUS Resolved"
    assert block.remaining == "Thanks!"


def test_unknown_command_is_reported_with_a_reason() -> None:
    """An unknown name at the top goes to `unknown`, the other commands still count."""
    block = parse_commands("#assign bob@example.com\n#escalate now\n\nBody")
    assert block.commands == (Command("assign", "bob@example.com", "#assign bob@example.com"),)
    assert len(block.unknown) == 1
    line, reason = block.unknown[0]
    assert line == "#escalate now"
    assert reason.startswith("unknown command #escalate")
    assert "#assign" in reason
    assert block.remaining == "Body"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("#status done", f"#status must be one of {STATUSES} (got 'done')"),
        ("#priority critical", f"#priority must be one of {PRIORITIES} (got 'critical')"),
        ("#status pending later", f"#status must be one of {STATUSES} (got 'pending later')"),
        ("#status pending quiet", f"#status must be one of {STATUSES} (got 'pending quiet')"),
        ("#assign", "#assign needs an argument"),
        ("#team", "#team needs an argument"),
    ],
)
def test_invalid_arguments(line: str, reason: str) -> None:
    """Arguments outside the fixed vocabularies, or missing ones, are rejected with a reason."""
    block = parse_commands(f"{line}\nBody")
    assert block.commands == ()
    assert block.unknown[0][0] == line
    assert block.unknown[0][1] == reason
    assert block.remaining == "Body"


def test_commands_only_at_the_top() -> None:
    """A command line below the first prose line is prose, and stays in the text."""
    text = "Hi Dana,\n#status resolved\nthanks"
    block = parse_commands(text)
    assert block.commands == ()
    assert block.unknown == ()
    assert block.remaining == text


def test_blank_line_ends_the_block() -> None:
    """After a command, a blank line ends the block; a later command line is text."""
    block = parse_commands("#status pending\n\n#priority high\nsee above")
    assert [c.name for c in block.commands] == ["status"]
    assert block.remaining == "#priority high\nsee above"


def test_note_on_the_first_line() -> None:
    """`#note` marks the mail as an internal note and is not a command."""
    block = parse_commands("#note\nCustomer called, will send logs tomorrow.\n")
    assert block.is_note is True
    assert block.commands == ()
    assert block.remaining == "Customer called, will send logs tomorrow.\n"


def test_note_with_commands_and_text_on_its_line() -> None:
    """`#note` may be combined with commands; text after it is kept as the note's first line."""
    block = parse_commands("#NOTE customer is a VIP\n#priority high\n\nDetails below.")
    assert block.is_note is True
    assert block.commands == (Command("priority", "high", "#priority high"),)
    assert block.remaining == "customer is a VIP\nDetails below."


def test_prose_hashtags_are_ignored() -> None:
    """`#1042`, `# heading` and `#hashtags` in prose are not commands."""
    text = "#1042 is broken again.\nSee #vpn and #wifi.\n#status resolved"
    block = parse_commands(text)
    assert block == parse_commands(text)  # deterministic, plain data
    assert block.commands == ()
    assert block.unknown == ()
    assert block.remaining == text
    assert parse_commands("# Heading\ntext").remaining == "# Heading\ntext"


def test_hashtag_word_at_the_top_is_unknown() -> None:
    """A `#word` line at the very top has command form, so the agent hears about it."""
    block = parse_commands("#urgent please look\nThe server is down.")
    assert block.unknown[0][0] == "#urgent please look"
    assert block.remaining == "The server is down."


def test_colon_after_the_name_and_crlf() -> None:
    """`#status: pending` is tolerated, and CRLF line ends do not leak into arguments."""
    block = parse_commands("#status: pending\r\n#priority:high\r\n#tag  vpn \r\n\r\nBody\r\n")
    assert [(c.name, c.argument) for c in block.commands] == [
        ("status", "pending"),
        ("priority", "high"),
        ("tag", "vpn"),
    ]
    assert block.remaining == "Body\r\n"


def test_known_restricts_the_names() -> None:
    """Only the names in `known` are commands; others, `#note` included, are unknown."""
    block = parse_commands("#tag vpn\n#note\nBody", known={"tag"})
    assert block.commands == (Command("tag", "vpn", "#tag vpn"),)
    assert block.is_note is False
    assert block.unknown[0][0] == "#note"


def test_empty_and_commands_only() -> None:
    """No text gives an empty block; a text of commands only leaves nothing."""
    assert parse_commands("") == parse_commands("\n\n")
    assert parse_commands("").remaining == ""
    block = parse_commands("#status closed")
    assert block.commands == (Command("status", "closed", "#status closed"),)
    assert block.remaining == ""


def test_status_resolved_quiet() -> None:
    """`#status resolved quiet` (any case and spacing) resolves without the notice."""
    block = parse_commands("#Status Resolved   QUIET\n\nDone.")
    assert block.commands == (Command("status", "resolved quiet", "#Status Resolved   QUIET"),)
    assert block.unknown == ()


def test_at_most_max_commands_are_read() -> None:
    """Lines after the first MAX_COMMANDS are counted, not read, and not left in the text."""
    lines = "".join(f"#tag t{i}\n" for i in range(MAX_COMMANDS + 7))
    block = parse_commands(lines + "#bogus\n\nThanks\n")
    assert [c.argument for c in block.commands] == [f"t{i}" for i in range(MAX_COMMANDS)]
    assert block.unknown == ()
    assert block.skipped == 8
    assert block.ok is False
    assert block.remaining == "Thanks\n"


def test_unknown_lines_count_towards_the_limit() -> None:
    """Broken lines are commands too: 20,000 of them give 50 answers, not 20,000."""
    block = parse_commands("#nope\n" * 20_000)
    assert len(block.unknown) == MAX_COMMANDS
    assert block.skipped == 20_000 - MAX_COMMANDS


def test_note_counts_wherever_it_is_in_a_long_block() -> None:
    """A #note after the limit still makes the mail a note: relaying it is the worse mistake."""
    block = parse_commands("#tag x\n" * (MAX_COMMANDS + 5) + "#note\nInternal.")
    assert block.is_note is True
    assert block.remaining == "Internal."


def test_overlong_arguments_and_tag_lists_are_refused() -> None:
    """An argument over MAX_ARGUMENT characters, or more than MAX_TAGS_PER_LINE tags, is unknown."""
    many = " ".join(f"t{i}" for i in range(MAX_TAGS_PER_LINE + 1))
    block = parse_commands(f"#team {'x' * (MAX_ARGUMENT + 1)}\n#tag {many}\n#tag a, b")
    assert [reason for _, reason in block.unknown] == [
        f"#team: the argument is longer than {MAX_ARGUMENT} characters",
        f"#tag names more than {MAX_TAGS_PER_LINE} tags; use several #tag lines",
    ]
    assert block.commands == (Command("tag", "a, b", "#tag a, b"),)
