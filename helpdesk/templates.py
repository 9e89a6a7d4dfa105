"""Mail templates: admins' Jinja2 text, rendered in a sandbox, with a built-in fallback.

A template is `templates/<name>.txt`: the first line `Subject: ...`, one
blank line, then the body; both parts are Jinja2. `load_templates(dir)`
compiles every `*.txt` at load time and raises one `TemplateError` listing
every problem of every file (file, line, what is wrong), so that a reload
(SIGHUP) can keep the previous set when the new one is broken.

`TemplateSet.render(name, context)` raises `TemplateRenderError` for any
failure at render time: an undefined name (`StrictUndefined` makes a typo an
error instead of an empty string), a sandbox violation, an exception in a
filter. The caller then sends `fallback(name, context)`, which never raises,
and records an event. The rendered subject is one line: line breaks and other
control characters become spaces, so no template or data can add a header.

The environment: Jinja2's `ImmutableSandboxedEnvironment` (admins write the
templates; they must not reach Python internals or mutate the context), no
autoescaping (this is text mail, not HTML), `trim_blocks` and
`lstrip_blocks` (a line holding only `{% if %}` leaves no blank line), the
trailing newline kept, and `*` and `**` capped so that a template cannot
build a gigabyte string or number. Templates cannot include other files.

The context (`build_context` builds it from plain values; `templates/README.md`
documents it for admins). Strings are "" when unknown, never None:

    helpdesk   {name, support_address, reopen_days}
    ticket     {id, reference ("[#1042]"), subject, status, priority, team,
                assignee, tags (list), created_at ("2024-05-01 09:30 UTC")}
    message    {from, from_name, subject, text, new_text, date, attachments
                (list of file names)} - all empty when there is no message
    requester  {name, address}
    team       {name, address} or None
    agent      {name, address} or None
"""

from __future__ import annotations

import functools
import re
import traceback
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpdesk.errors import HelpdeskError
from helpdesk.values import Address, ParsedMessage, Priority, TicketStatus, TicketView

if TYPE_CHECKING:
    # Jinja2 is imported when templates are first loaded, not with this module:
    # commands that never render mail (`tickets list`) should not pay for it.
    from jinja2 import Template
    from jinja2.runtime import Context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "RenderedTemplate",
    "TemplateError",
    "TemplateProblem",
    "TemplateRenderError",
    "TemplateSet",
    "build_context",
    "check_templates",
    "fallback",
    "load_templates",
    "sample_context",
]

_SUBJECT_LINE = 1
_BODY_LINE = 3  # the body starts after the Subject line and one blank line
_SUBJECT_RE = re.compile(r"subject:[ \t]*(.*)", re.IGNORECASE)
# Jinja2 names the code of a template compiled from a string "<template>";
# its rewritten tracebacks carry the template's own line numbers.
_TEMPLATE_FILENAME = "<template>"
_MAX_SEQUENCE = 100_000  # characters or items one `*` may produce
_MAX_POWER_BITS = 100_000  # bits one `**` may produce


# --------------------------------------------------------------------------
# Results and errors


@dataclass(frozen=True, slots=True)
class RenderedTemplate:
    """A rendered mail: a one-line subject and the body text."""

    subject: str
    body: str


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """One thing wrong in a template file; `line` is None when it concerns the whole file."""

    path: Path
    line: int | None
    problem: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.problem}"


class TemplateError(HelpdeskError):
    """Templates failed to load; lists every problem of every file, one per line."""

    def __init__(self, problems: Sequence[TemplateProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class TemplateRenderError(HelpdeskError):
    """A template could not be rendered with a given context; send the fallback instead."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.message = message
        super().__init__(f"template {name!r}: {message}")


# --------------------------------------------------------------------------
# The environment


@functools.cache
def _sandbox_class() -> type[ImmutableSandboxedEnvironment]:
    """The sandbox, with `*` and `**` bounded (Jinja2's documented operator hook)."""
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                _check_repeat(left, right, SecurityError)
                _check_repeat(right, left, SecurityError)
            elif _int_power_bits(left, right) > _MAX_POWER_BITS:
                raise SecurityError(f"{left} ** {right} is too large for a template")
            return super().call_binop(context, operator, left, right)

    return _Sandbox


def _check_repeat(sequence: object, count: object, error: type[Exception]) -> None:
    if not isinstance(sequence, str | list | tuple) or not isinstance(count, int):
        return
    if len(sequence) * count > _MAX_SEQUENCE:
        raise error(f"repeating a sequence {count} times is too large for a template")


def _int_power_bits(base: object, exponent: object) -> int:
    """About how many bits `base ** exponent` has, for integers; 0 otherwise."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        return abs(base).bit_length() * exponent
    return 0


def _environment() -> ImmutableSandboxedEnvironment:
    from jinja2 import StrictUndefined

    return _sandbox_class()(
        autoescape=False,  # text mail: HTML escaping would show "&amp;" to the reader
        undefined=StrictUndefined,  # a typo is an error (then the fallback), not a blank
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# --------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, slots=True)
class _Compiled:
    path: Path
    subject: Template
    body: Template


class TemplateSet:
    """The compiled templates of one directory, by name (the file name without `.txt`)."""

    def __init__(self, templates: Mapping[str, _Compiled] | None = None) -> None:
        self._templates = dict(templates or {})

    @property
    def names(self) -> frozenset[str]:
        """The names rules may use: file names without `.txt`."""
        return frozenset(self._templates)

    def render(self, name: str, context: Mapping[str, object]) -> RenderedTemplate:
        """Render template `name`; any failure raises `TemplateRenderError`."""
        compiled = self._templates.get(name)
        if compiled is None:
            raise TemplateRenderError(name, "no such template")
        variables = dict(context)
        subject = _render_part(name, compiled.subject, variables, _SUBJECT_LINE)
        body = _render_part(name, compiled.body, variables, _BODY_LINE)
        return RenderedTemplate(subject=_one_line(subject), body=body)


def load_templates(directory: Path) -> TemplateSet:
    """Compile every `*.txt` in `directory`; raise `TemplateError` listing all problems."""
    if not directory.is_dir():
        raise TemplateError([TemplateProblem(directory, None, "not a directory")])
    environment = _environment()
    compiled: dict[str, _Compiled] = {}
    problems: list[TemplateProblem] = []
    for path in sorted(p for p in directory.glob("*.txt") if p.is_file()):
        result = _compile_file(environment, path)
        if isinstance(result, _Compiled):
            compiled[path.stem] = result
        else:
            problems.extend(result)
    if problems:
        raise TemplateError(problems)
    return TemplateSet(compiled)


def _compile_file(
    environment: ImmutableSandboxedEnvironment, path: Path
) -> _Compiled | list[TemplateProblem]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [TemplateProblem(path, None, f"cannot be read: {exc.strerror or exc}")]
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [TemplateProblem(path, line, "not valid UTF-8")]
    split = _split(path, text.replace("\r\n", "\n"))
    if isinstance(split, TemplateProblem):
        return [split]
    subject = _compile_part(environment, path, split[0], _SUBJECT_LINE)
    body = _compile_part(environment, path, split[1], _BODY_LINE)
    if isinstance(subject, TemplateProblem) or isinstance(body, TemplateProblem):
        return [part for part in (subject, body) if isinstance(part, TemplateProblem)]
    return _Compiled(path, subject, body)


def _split(path: Path, text: str) -> tuple[str, str] | TemplateProblem:
    """(subject source, body source) of a template file's text."""
    lines = text.split("\n")
    match = _SUBJECT_RE.fullmatch(lines[0])
    if match is None:
        return TemplateProblem(
            path, _SUBJECT_LINE, f"the first line must be 'Subject: ...' (found {lines[0][:60]!r})"
        )
    if len(lines) < 2 or lines[1].strip():
        return TemplateProblem(
            path, _SUBJECT_LINE + 1, "one blank line must separate the Subject line from the body"
        )
    body = "\n".join(lines[2:])
    if not body.strip():
        return TemplateProblem(path, _BODY_LINE, "the body is empty")
    return match.group(1), body


def _compile_part(
    environment: ImmutableSandboxedEnvironment, path: Path, source: str, first_line: int
) -> Template | TemplateProblem:
    from jinja2 import TemplateSyntaxError

    try:
        return environment.from_string(source)
    except TemplateSyntaxError as exc:
        line = first_line + (exc.lineno or 1) - 1
        return TemplateProblem(path, line, exc.message or str(exc))


# --------------------------------------------------------------------------
# Rendering


def _render_part(name: str, template: Template, variables: dict[str, Any], first_line: int) -> str:
    try:
        return template.render(variables)
    except Exception as exc:  # any failure of admin code means "use the fallback"
        line = _template_line(exc)
        where = f"line {first_line + line - 1}: " if line is not None else ""
        raise TemplateRenderError(name, f"{where}{type(exc).__name__}: {exc}") from exc


def _template_line(exc: BaseException) -> int | None:
    """The template line of the innermost template frame of `exc`'s traceback."""
    found = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == _TEMPLATE_FILENAME:
            found = lineno
    return found


def _one_line(text: str) -> str:
    """Controls and line separators become spaces, runs of white space one space."""
    spaced = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text)
    return " ".join(spaced.split())


# --------------------------------------------------------------------------
# Checking (`helpdesk config check`)


def check_templates(
    directory: Path, context: Mapping[str, object] | None = None
) -> list[TemplateProblem]:
    """Every problem of every template in `directory`, found by compiling and rendering it.

    Compiling finds syntax errors; rendering each template with `context` (by
    default `sample_context()`, which has every documented name) finds what
    only shows when a mail is written: a misspelt name (`ticket.subjetc`), a
    filter that does not exist, a sandbox violation. The environment's
    undefined is `StrictUndefined` here whatever the one used for sending is,
    so a name that is not in the context is always a problem, with its line.
    """
    from jinja2 import StrictUndefined

    if not directory.is_dir():
        return [TemplateProblem(directory, None, "not a directory")]
    environment = _environment()
    environment.undefined = StrictUndefined
    variables = dict(context if context is not None else sample_context())
    problems: list[TemplateProblem] = []
    for path in sorted(p for p in directory.glob("*.txt") if p.is_file()):
        compiled = _compile_file(environment, path)
        if not isinstance(compiled, _Compiled):
            problems.extend(compiled)
            continue
        for template, first_line in ((compiled.subject, _SUBJECT_LINE),
                                     (compiled.body, _BODY_LINE)):
            try:
                _render_part(path.stem, template, variables, first_line)
            except TemplateRenderError as exc:
                line = _template_line(exc.__cause__) if exc.__cause__ else None
                where = first_line + line - 1 if line is not None else None
                cause = exc.__cause__
                what = f"{type(cause).__name__}: {cause}" if cause else exc.message
                problems.append(TemplateProblem(path, where, what))
    return problems


def sample_context() -> dict[str, object]:
    """A context with every documented name filled in, for checking templates."""
    ticket = TicketView(
        id=1042, status=TicketStatus.OPEN, subject="VPN drops every hour",
        requester="dana.reyes@example.org", team="networking",
        assignee="alice@example.org", priority=Priority.HIGH, tags=frozenset({"vpn"}),
    )
    when = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    message = ParsedMessage(
        message_id="sample@example.org", message_id_synthetic=False,
        subject="VPN drops every hour", from_=Address("dana.reyes@example.org", "Dana Reyes"),
        date=when, text="Hello,\nthe VPN drops every hour.\n\n> quoted\n",
        new_text="Hello,\nthe VPN drops every hour.\n",
    )
    return build_context(
        helpdesk_name="IT Help Desk", support_address="support@example.org", ticket=ticket,
        created_at=when, message=message,
        requester=Address("dana.reyes@example.org", "Dana Reyes"),
        team=Address("netops@example.org", "networking"),
        agent=Address("alice@example.org", "Alice Moreau"),
    )


# --------------------------------------------------------------------------
# The context


def build_context(
    *,
    helpdesk_name: str,
    support_address: str,
    ticket: TicketView,
    reference: str | None = None,
    created_at: datetime | None = None,
    message: ParsedMessage | None = None,
    requester: Address | None = None,
    team: Address | None = None,
    agent: Address | None = None,
    reopen_days: int = 14,
) -> dict[str, object]:
    """The template context (module docstring) from plain values.

    `reference` is the tag people see (`helpdesk.thread.format_tag`; "[#<id>]"
    when omitted). `requester` defaults to the ticket's requester address.
    `team` is the team's name and forward address; `agent` the agent who acts.
    `reopen_days` is how long a reply reopens a resolved ticket, for the text.
    """
    person = requester or Address(ticket.requester or "")
    return {
        "helpdesk": {
            "name": helpdesk_name,
            "support_address": support_address,
            "reopen_days": reopen_days,
        },
        "ticket": {
            "id": ticket.id,
            "reference": reference or f"[#{ticket.id}]",
            "subject": ticket.subject,
            "status": str(ticket.status),
            "priority": str(ticket.priority),
            "team": ticket.team or "",
            "assignee": ticket.assignee or "",
            "tags": sorted(ticket.tags),
            "created_at": _when(created_at),
        },
        "message": _message_context(message),
        "requester": _person(person),
        "team": _person(team) if team is not None else None,
        "agent": _person(agent) if agent is not None else None,
    }


def _message_context(message: ParsedMessage | None) -> dict[str, object]:
    sender = message.from_ if message is not None and message.from_ else Address("")
    return {
        "from": sender.address,
        "from_name": sender.name,
        "subject": message.subject if message else "",
        "text": message.text if message else "",
        "new_text": message.new_text if message else "",
        "date": _when(message.date if message else None),
        "attachments": [a.filename for a in message.attachments] if message else [],
    }


def _person(address: Address) -> dict[str, str]:
    return {"name": address.name, "address": address.address}


def _when(moment: datetime | None) -> str:
    """Like "2024-05-01 09:30 UTC" (the zone as the datetime carries it), or ""."""
    if moment is None:
        return ""
    return moment.strftime("%Y-%m-%d %H:%M %Z").strip()


# --------------------------------------------------------------------------
# Fallback texts


def fallback(name: str, context: Mapping[str, object]) -> RenderedTemplate:
    """The built-in text for template `name`; never raises, whatever the context holds."""
    facts = _Facts(context)
    write = _FALLBACKS.get(name, _generic)
    try:
        return write(facts)
    except Exception:  # noqa: BLE001 - the fallback is the last resort and must not fail
        return _generic(_Facts({}))


class _Facts:
    """Read-only, failure-proof access to a context for the fallback texts."""

    def __init__(self, context: Mapping[str, object]) -> None:
        self._context = context

    def get(self, section: str, key: str, default: str = "") -> str:
        try:
            part = self._context.get(section)
            value = part.get(key) if isinstance(part, Mapping) else None
            text = _one_line_safe(value)
        except Exception:  # noqa: BLE001 - a hostile __str__ or a non-mapping context
            return default
        return text or default

    def text(self, section: str, key: str) -> str:
        """A multi-line value (a message body), or ""."""
        try:
            part = self._context.get(section)
            value = part.get(key) if isinstance(part, Mapping) else None
            return value if isinstance(value, str) else ""
        except Exception:  # noqa: BLE001 - see get()
            return ""

    def greeting(self) -> str:
        name = self.get("requester", "name")
        return f"Hello {name}," if name else "Hello,"

    def reference(self) -> str:
        return self.get("ticket", "reference")

    def subject(self, template: str) -> str:
        """`template` with {ref} and {subject} filled in, as one line."""
        filled = template.replace("{ref}", self.reference())
        return _one_line(filled.replace("{subject}", self.get("ticket", "subject")))

    def signature(self) -> str:
        return self.get("helpdesk", "name", "IT Help Desk")


def _one_line_safe(value: object) -> str:
    if value is None or isinstance(value, Mapping | list | tuple):
        return ""
    return _one_line(str(value))


def _keep_reference(facts: _Facts) -> str:
    reference = facts.reference()
    if not reference:
        return "To add information, reply to this mail."
    return f"To add information, reply to this mail and keep {reference} in the subject."


def _acknowledge(facts: _Facts) -> RenderedTemplate:
    body = (
        f"{facts.greeting()}\n\n"
        f"we have received your request {facts.reference()}:\n\n"
        f"    {facts.get('ticket', 'subject', '(no subject)')}\n\n"
        "A member of our team will look at it and answer you by e-mail.\n"
        f"{_keep_reference(facts)}\n\n"
        f"Kind regards,\n{facts.signature()}\n"
    )
    # The requester's own subject, so that Gmail threads the answer with the request.
    return RenderedTemplate(facts.subject("Re: {ref} {subject}"), body)


def _password_reset(facts: _Facts) -> RenderedTemplate:
    body = (
        f"{facts.greeting()}\n\n"
        "you can reset your password yourself in the self-service portal.\n"
        "You will need your second factor (authenticator app or phone).\n\n"
        "If that does not work, reply to this mail and we will help you.\n"
        f"Your ticket {facts.reference()} is pending until we hear from you.\n\n"
        f"Kind regards,\n{facts.signature()}\n"
    )
    return RenderedTemplate(facts.subject("{ref} How to reset your password"), body)


def _team_forward(facts: _Facts) -> RenderedTemplate:
    requester = facts.get("requester", "address", "(unknown)")
    body = (
        f"Ticket {facts.reference()} from {requester}\n"
        f"Subject: {facts.get('message', 'subject') or facts.get('ticket', 'subject')}\n\n"
        "Reply to this mail to answer the requester.\n\n"
        f"{facts.text('message', 'text')}\n"
    )
    return RenderedTemplate(facts.subject("{ref} {subject}"), body)


def _agent_reply(facts: _Facts) -> RenderedTemplate:
    agent = facts.get("agent", "name") or facts.get("agent", "address")
    sign = f"{agent}\n{facts.signature()}" if agent else facts.signature()
    body = (
        f"{facts.text('message', 'new_text') or facts.text('message', 'text')}\n\n"
        f"-- \n{sign}\n{_keep_reference(facts)}\n"
    )
    return RenderedTemplate(facts.subject("Re: {ref} {subject}"), body)


def _resolved(facts: _Facts) -> RenderedTemplate:
    body = (
        f"{facts.greeting()}\n\n"
        f"your request {facts.reference()} is resolved.\n"
        "If the problem is not solved, reply to this mail and the ticket is reopened.\n\n"
        f"Kind regards,\n{facts.signature()}\n"
    )
    return RenderedTemplate(facts.subject("{ref} Resolved: {subject}"), body)


def _escalated(facts: _Facts) -> RenderedTemplate:
    requester = facts.get("requester", "address", "(unknown)")
    body = (
        f"Ticket {facts.reference()} has had no answer within its target time and was "
        f"escalated. Its priority is now {facts.get('ticket', 'priority')}.\n\n"
        f"Requester: {requester}\n"
        f"Subject:   {facts.get('ticket', 'subject')}\n"
        f"Opened:    {facts.get('ticket', 'created_at')}\n\n"
        "Reply to this mail to answer the requester; keep "
        f"{facts.reference()} in the subject.\n\n-- \n{facts.signature()}\n"
    )
    return RenderedTemplate(facts.subject("{ref} Escalated: {subject}"), body)


def _generic(facts: _Facts) -> RenderedTemplate:
    body = (
        f"{facts.greeting()}\n\n"
        f"this is an update on your request {facts.reference()}.\n"
        f"{_keep_reference(facts)}\n\n"
        f"Kind regards,\n{facts.signature()}\n"
    )
    return RenderedTemplate(facts.subject("{ref} {subject}"), body)


_FALLBACKS: dict[str, Callable[[_Facts], RenderedTemplate]] = {
    "acknowledge": _acknowledge,
    "password-reset": _password_reset,
    "team-forward": _team_forward,
    "agent-reply": _agent_reply,
    "resolved": _resolved,
    "escalated": _escalated,
}
