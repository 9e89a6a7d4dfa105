"""Mail templates: loading with pointed errors, sandboxed rendering, the built-in fallback."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from helpdesk.templates import (
    RenderedTemplate,
    TemplateError,
    TemplateRenderError,
    TemplateSet,
    build_context,
    fallback,
    load_templates,
)
from helpdesk.thread import format_tag
from helpdesk.values import (
    Address,
    AttachmentPart,
    ParsedMessage,
    Priority,
    TicketStatus,
    TicketView,
)

SHIPPED = Path(__file__).resolve().parents[2] / "templates"
SHIPPED_NAMES = {"acknowledge", "password-reset", "team-forward", "agent-reply", "resolved",
                 "escalated"}


def full_context() -> dict[str, object]:
    message = ParsedMessage(
        message_id="m1@example.com",
        message_id_synthetic=False,
        subject="Printer on floor 3 jammed",
        from_=Address("dana@example.com", "Dana Scully"),
        date=datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
        text="Hi,\nthe printer is jammed again.\n\n> older text",
        new_text="Hi,\nthe printer is jammed again.",
        attachments=(AttachmentPart("jam.jpg", "image/jpeg", b"...", "0" * 64),),
    )
    ticket = TicketView(
        id=1042,
        status=TicketStatus.OPEN,
        subject="Printer on floor 3 jammed",
        requester="dana@example.com",
        team="hardware",
        assignee="alice@it.example.com",
        priority=Priority.HIGH,
        tags=frozenset({"printer", "floor-3"}),
    )
    return build_context(
        helpdesk_name="ACME IT Help Desk",
        support_address="support@acme.example",
        ticket=ticket,
        reference=format_tag(1042),
        created_at=datetime(2024, 5, 1, 9, 31, tzinfo=UTC),
        message=message,
        requester=Address("dana@example.com", "Dana Scully"),
        team=Address("hardware@acme.example", "Hardware"),
        agent=Address("alice@it.example.com", "Alice Admin"),
        reopen_days=10,
    )


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    return path


def one_template(tmp_path: Path, text: str, name: str = "t") -> TemplateSet:
    write(tmp_path, name, text)
    return load_templates(tmp_path)


def load_error(directory: Path) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        load_templates(directory)
    return caught.value


# --------------------------------------------------------------------------
# The shipped templates


@pytest.fixture(scope="module")
def shipped() -> TemplateSet:
    return load_templates(SHIPPED)


def test_shipped_templates_load(shipped: TemplateSet) -> None:
    """Every template in templates/ compiles; README.md is not a template."""
    assert shipped.names == SHIPPED_NAMES


@pytest.mark.parametrize("name", sorted(SHIPPED_NAMES))
def test_shipped_templates_render_with_a_full_context(shipped: TemplateSet, name: str) -> None:
    """Each renders a one-line subject with the reference and a body with no gaps."""
    rendered = shipped.render(name, full_context())

    assert "[#1042]" in rendered.subject
    assert "\n" not in rendered.subject
    assert "[#1042]" in rendered.body
    assert rendered.body.endswith("\n")
    assert "None" not in rendered.body
    assert "{{" not in rendered.body
    assert "{%" not in rendered.body
    assert "\n\n\n" not in rendered.body


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("acknowledge", ["Hello Dana Scully,", "Printer on floor 3 jammed", "reply to this mail"]),
        ("password-reset", ["https://password.example.com", "second factor", "pending"]),
        (
            "team-forward",
            [
                "Dana Scully <dana@example.com>",
                "the printer is jammed again",
                "jam.jpg",
                "Hardware",
            ],
        ),
        ("agent-reply", ["the printer is jammed again", "\n-- \nAlice Admin\nACME IT Help Desk"]),
        ("resolved", ["resolved", "within\n10 days", "support@acme.example"]),
        ("escalated", ["no answer within its target time", "for Hardware", "now high",
                       "Dana Scully <dana@example.com>", "Assignee:  alice@it.example.com",
                       "\n-- \nACME IT Help Desk\n"]),
    ],
)
def test_shipped_templates_say_what_they_must(
    shipped: TemplateSet, name: str, expected: list[str]
) -> None:
    """Each shipped template carries the facts its purpose needs."""
    body = shipped.render(name, full_context()).body

    for text in expected:
        assert text in body


def test_agent_reply_relays_only_the_new_text(shipped: TemplateSet) -> None:
    """The requester gets the agent's new words, not the quoted history."""
    body = shipped.render("agent-reply", full_context()).body

    assert "older text" not in body


@pytest.mark.parametrize("name", sorted(SHIPPED_NAMES))
def test_shipped_templates_render_without_team_agent_or_message(
    shipped: TemplateSet, name: str
) -> None:
    """A context with no team, agent or mail (a CLI notice) still renders."""
    context = build_context(
        helpdesk_name="IT",
        support_address="support@acme.example",
        ticket=TicketView(id=7, status=TicketStatus.NEW, subject="VPN", requester="x@y.example"),
    )

    rendered = shipped.render(name, context)

    assert "[#7]" in rendered.subject


# --------------------------------------------------------------------------
# Load errors


def test_syntax_error_in_body_names_file_and_line(tmp_path: Path) -> None:
    """A body error is reported at its line in the file, after Subject and blank line."""
    path = write(tmp_path, "broken", "Subject: ok\n\nline 3\nline 4\n{{ ticket.id ) }}\nline 6\n")

    error = load_error(tmp_path)

    assert [(p.path, p.line) for p in error.problems] == [(path, 5)]
    assert "')'" in error.problems[0].problem
    assert str(error) == f"{path}:5: {error.problems[0].problem}"


def test_unclosed_block_is_reported_where_the_template_ends(tmp_path: Path) -> None:
    """An {% if %} without {% endif %} names the last line and what is missing."""
    path = write(tmp_path, "broken", "Subject: ok\n\nline 3\n{% if x %}\nline 5\n")

    error = load_error(tmp_path)

    assert [(p.path, p.line) for p in error.problems] == [(path, 5)]
    assert "endif" in error.problems[0].problem


def test_syntax_error_in_subject_is_on_line_one(tmp_path: Path) -> None:
    """A subject error is reported at line 1."""
    path = write(tmp_path, "broken", "Subject: {{ ticket.reference }\n\nbody\n")

    error = load_error(tmp_path)

    assert [(p.path, p.line) for p in error.problems] == [(path, 1)]


def test_unknown_filter_is_a_load_error(tmp_path: Path) -> None:
    """A misspelt filter is caught when loading, not when a mail is due."""
    path = write(tmp_path, "t", "Subject: x\n\nline 3\n{{ ticket.subject|uper }}\n")

    error = load_error(tmp_path)

    assert [(p.path, p.line) for p in error.problems] == [(path, 4)]
    assert "uper" in error.problems[0].problem


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("Hello {{ name }}\n\nbody\n", 1, "Subject: ..."),
        ("", 1, "Subject: ..."),
        ("Betreff: x\n\nbody\n", 1, "Betreff"),
        ("Subject: x\nbody right away\n", 2, "blank line"),
        ("Subject: x", 2, "blank line"),
        ("Subject: x\n\n\n", 3, "body is empty"),
    ],
)
def test_malformed_head_is_reported(tmp_path: Path, text: str, line: int, words: str) -> None:
    """A missing Subject line, blank line or body is named with its line."""
    path = write(tmp_path, "bad", text)

    error = load_error(tmp_path)

    assert [(p.path, p.line) for p in error.problems] == [(path, line)]
    assert words in error.problems[0].problem


def test_every_problem_of_every_file_is_listed(tmp_path: Path) -> None:
    """Loading reports all broken files at once, one problem per line."""
    write(tmp_path, "a-good", "Subject: fine\n\nfine\n")
    missing = write(tmp_path, "b-no-subject", "no subject here\n")
    both = write(tmp_path, "c-two-errors", "Subject: {% if %}\n\n{{ x | }}\n")

    error = load_error(tmp_path)

    assert [(p.path, p.line) for p in error.problems] == [(missing, 1), (both, 1), (both, 3)]
    assert len(str(error).splitlines()) == 3


def test_invalid_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    """A file that is not UTF-8 is named with the line of the first bad byte."""
    path = tmp_path / "latin.txt"
    path.write_bytes(b"Subject: x\n\nGr\xfc\xdfe\n")

    error = load_error(tmp_path)

    assert [(p.path, p.line, p.problem) for p in error.problems] == [(path, 3, "not valid UTF-8")]


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    """A templates directory that does not exist is reported, not silently empty."""
    error = load_error(tmp_path / "nowhere")

    assert error.problems[0].problem == "not a directory"


def test_crlf_files_and_a_bom_load(tmp_path: Path) -> None:
    """Files saved by Windows editors (CRLF, BOM) are read like any other."""
    (tmp_path / "win.txt").write_bytes(b"\xef\xbb\xbfSubject: hi {{ n }}\r\n\r\nbody {{ n }}\r\n")

    rendered = load_templates(tmp_path).render("win", {"n": 1})

    assert rendered == RenderedTemplate("hi 1", "body 1\n")


# --------------------------------------------------------------------------
# Render errors


def test_undefined_variable_is_a_render_error(tmp_path: Path) -> None:
    """A misspelt name fails the render (StrictUndefined), naming template and line."""
    templates = one_template(tmp_path, "Subject: x\n\nline 3\n{{ ticket.subjetc }}\n", name="ack")

    with pytest.raises(TemplateRenderError) as caught:
        templates.render("ack", full_context())

    assert caught.value.name == "ack"
    assert caught.value.message.startswith("line 4: UndefinedError")
    assert "subjetc" in caught.value.message


def test_undefined_variable_in_subject_is_a_render_error(tmp_path: Path) -> None:
    """The subject is rendered strictly too."""
    templates = one_template(tmp_path, "Subject: {{ tikcet.id }}\n\nbody\n")

    with pytest.raises(TemplateRenderError, match="line 1: UndefinedError"):
        templates.render("t", full_context())


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "''.__class__.__mro__[1].__subclasses__()",
        "cycler.__init__.__globals__",
        "ticket.__class__",
        "message.attachments.append('x')",
        "ticket.update({'id': 1})",
    ],
)
def test_sandbox_blocks_python_internals(tmp_path: Path, expression: str) -> None:
    """Reaching Python internals or mutating the context is a render error."""
    templates = one_template(tmp_path, f"Subject: x\n\n{{{{ {expression} }}}}\n")

    with pytest.raises(TemplateRenderError, match="SecurityError"):
        templates.render("t", full_context())


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ('"%d"|format("x")', "TypeError"),
        ("1 // 0", "ZeroDivisionError"),
        ("range(10**9)|list", "OverflowError"),
        ('"x" * 10**9', "SecurityError"),
        ("2 ** 1000000", "SecurityError"),
    ],
)
def test_exceptions_in_filters_and_expressions_are_render_errors(
    tmp_path: Path, expression: str, error: str
) -> None:
    """Whatever a template's code raises becomes a TemplateRenderError."""
    templates = one_template(tmp_path, f"Subject: x\n\n{{{{ {expression} }}}}\n")

    with pytest.raises(TemplateRenderError, match=error):
        templates.render("t", full_context())


def test_templates_cannot_include_files(tmp_path: Path) -> None:
    """There is no loader: {% include %} cannot read anything."""
    write(tmp_path, "secret", "Subject: s\n\nsecret\n")
    templates = one_template(tmp_path, 'Subject: x\n\n{% include "secret.txt" %}\n')

    with pytest.raises(TemplateRenderError):
        templates.render("t", {})


def test_unknown_template_is_a_render_error(shipped: TemplateSet) -> None:
    """Asking for a template that does not exist fails like a broken one."""
    with pytest.raises(TemplateRenderError, match="no such template"):
        shipped.render("welcome", full_context())


# --------------------------------------------------------------------------
# Subject, whitespace and escaping


def test_subject_newlines_are_collapsed(tmp_path: Path) -> None:
    """Line breaks from data or template become spaces: no header injection."""
    templates = one_template(tmp_path, "Subject: {{ s }}\n\nbody\n")

    rendered = templates.render("t", {"s": "  Help\r\nBcc: victim@example.com\n\tplease\x00 "})

    assert rendered.subject == "Help Bcc: victim@example.com please"


def test_subject_from_a_multiline_template_is_one_line(tmp_path: Path) -> None:
    """Even a subject that renders a block with newlines comes out as one line."""
    subject = 'Subject: {% for t in tags %}{{ t }}{{ "\\r\\n" }}{% endfor %}\n'
    templates = one_template(tmp_path, subject + "\nb\n")

    assert templates.render("t", {"tags": ["a", "b"]}).subject == "a b"


def test_text_is_not_html_escaped(tmp_path: Path) -> None:
    """Plain-text mail shows <, > and & as they are."""
    templates = one_template(tmp_path, "Subject: {{ s }}\n\n{{ s }}\n")

    rendered = templates.render("t", {"s": "R&D <team>"})

    assert rendered == RenderedTemplate("R&D <team>", "R&D <team>\n")


def test_block_lines_leave_no_blank_lines(tmp_path: Path) -> None:
    """A line holding only {% if %} or {% endif %} disappears from the output."""
    templates = one_template(tmp_path, "Subject: x\n\na\n  {% if show %}\nb\n  {% endif %}\nc\n")

    assert templates.render("t", {"show": True}).body == "a\nb\nc\n"
    assert templates.render("t", {"show": False}).body == "a\nc\n"


# --------------------------------------------------------------------------
# Fallback


ALL_PURPOSES = sorted(SHIPPED_NAMES | {"something-else"})


class Hostile:
    """A value whose str() raises, as a broken object in a context might."""

    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize("name", ALL_PURPOSES)
@pytest.mark.parametrize(
    "context",
    [
        {},
        {"ticket": None, "requester": 5, "message": "text"},
        {
            "ticket": {"reference": Hostile(), "subject": Hostile()},
            "requester": {"name": Hostile()},
        },
        {"ticket": {"subject": "a\r\nBcc: x@example.com"}},
    ],
    ids=["empty", "wrong types", "hostile values", "injection"],
)
def test_fallback_never_raises(name: str, context: dict[str, object]) -> None:
    """Any context, even empty or hostile, gives a one-line subject and a body."""
    rendered = fallback(name, context)

    assert "\n" not in rendered.subject
    assert "\r" not in rendered.subject
    assert rendered.body.strip()


@pytest.mark.parametrize("name", ALL_PURPOSES)
def test_fallback_uses_the_context(name: str) -> None:
    """With a full context the fallback names the ticket and the help desk."""
    rendered = fallback(name, full_context())

    assert "[#1042]" in rendered.subject
    assert "[#1042]" in rendered.body or "the printer is jammed" in rendered.body
    assert "ACME IT Help Desk" in rendered.body or name == "team-forward"


def test_fallback_texts_follow_their_purpose() -> None:
    """Each known purpose has its own text, the rest a generic one."""
    context = full_context()

    assert "Re: [#1042]" in fallback("agent-reply", context).subject
    assert "the printer is jammed again" in fallback("agent-reply", context).body
    assert "pending" in fallback("password-reset", context).body
    assert "dana@example.com" in fallback("team-forward", context).body
    assert "resolved" in fallback("resolved", context).body
    assert "no answer within its target time" in fallback("escalated", context).body
    assert fallback("acknowledge", context).subject == "Re: [#1042] Printer on floor 3 jammed"
    assert fallback("unknown", context).body != fallback("acknowledge", context).body


# --------------------------------------------------------------------------
# The context


def test_build_context_has_the_documented_shape() -> None:
    """Plain values in, the documented sections and keys out."""
    context = full_context()

    assert context["helpdesk"] == {
        "name": "ACME IT Help Desk",
        "support_address": "support@acme.example",
        "reopen_days": 10,
    }
    assert context["ticket"] == {
        "id": 1042,
        "reference": "[#1042]",
        "subject": "Printer on floor 3 jammed",
        "status": "open",
        "priority": "high",
        "team": "hardware",
        "assignee": "alice@it.example.com",
        "tags": ["floor-3", "printer"],
        "created_at": "2024-05-01 09:31 UTC",
    }
    assert context["message"] == {
        "from": "dana@example.com",
        "from_name": "Dana Scully",
        "subject": "Printer on floor 3 jammed",
        "text": "Hi,\nthe printer is jammed again.\n\n> older text",
        "new_text": "Hi,\nthe printer is jammed again.",
        "date": "2024-05-01 09:30 UTC",
        "attachments": ["jam.jpg"],
    }
    assert context["requester"] == {"name": "Dana Scully", "address": "dana@example.com"}
    assert context["team"] == {"name": "Hardware", "address": "hardware@acme.example"}
    assert context["agent"] == {"name": "Alice Admin", "address": "alice@it.example.com"}


def test_build_context_defaults_are_empty_not_none() -> None:
    """Without mail, team or agent: empty strings, and None only for team and agent."""
    context = build_context(
        helpdesk_name="IT",
        support_address="support@acme.example",
        ticket=TicketView(id=5, status=TicketStatus.NEW, requester="x@y.example"),
    )

    assert context["ticket"]["reference"] == "[#5]"  # type: ignore[index]
    assert context["ticket"]["team"] == ""  # type: ignore[index]
    assert context["ticket"]["created_at"] == ""  # type: ignore[index]
    assert context["requester"] == {"name": "", "address": "x@y.example"}
    assert context["message"]["text"] == ""  # type: ignore[index]
    assert context["team"] is None
    assert context["agent"] is None


def test_check_templates_finds_runtime_errors_with_their_line(tmp_path: Path) -> None:
    """Rendering with a sample context finds undefined names, subject and body, by line."""
    from helpdesk.templates import check_templates

    assert check_templates(Path(__file__).resolve().parents[2] / "templates") == []
    (tmp_path / "a.txt").write_text("Subject: {{ ticket.refrence }}\n\nHello\n")
    (tmp_path / "b.txt").write_text("Subject: ok\n\nline one\n{{ agent.nmae }}\n")
    (tmp_path / "c.txt").write_text("Subject: ok\n\n{{ requester.name }} {{ team.address }}\n")
    problems = {(p.path.name, p.line): p.problem for p in check_templates(tmp_path)}
    assert list(problems) == [("a.txt", 1), ("b.txt", 4)]
    assert "refrence" in problems[("a.txt", 1)]
    assert "nmae" in problems[("b.txt", 4)]
