"""`helpdesk config show|check`: the configuration as helpdesk sees it, and a check of it all.

`config show` is `postconf -n`: the keys the file (or the environment) sets,
with the values in effect; `--defaults` adds every other key with its
built-in default. Secrets (passwords, the signing key, a password inside the
database URL) are shown as `***`.

`config check` is `postfix check` for help desks: the configuration, the rule
files and the templates together, every template rendered with a sample
ticket so that a misspelt name (`{{ ticket.subjetc }}`) is caught with its
file and line before a mail needs it. Exit 1 with every problem listed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, SecretStr

from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import emit_json
from helpdesk.errors import ConfigError, HelpdeskError
from helpdesk.settings import (
    DATABASE_PASSWORD_ENV,
    DATABASE_URL_ENV,
    SECRET_ENV,
    SMTP_PASSWORD_ENV,
    Settings,
    mailbox_password_env,
)
from helpdesk.settings.fields import _redact_url

SECRET_SHOWN = "***"  # noqa: S105 - what a secret is shown as, not one
# The sections in the order config.example.toml documents them; (settings
# attribute, TOML name, whether it is an array of tables).
SECTIONS: tuple[tuple[str, str, bool], ...] = (
    ("helpdesk", "helpdesk", False),
    ("database", "database", False),
    ("mailboxes", "mailbox", True),
    ("maildirs", "maildir", True),
    ("lmtp", "lmtp", False),
    ("intake", "intake", False),
    ("daemon", "daemon", False),
    ("metrics", "metrics", False),
    ("smtp", "smtp", False),
    ("threading", "threading", False),
    ("security", "security", False),
    ("auto_reply", "auto_reply", False),
    ("bounces", "bounces", False),
    ("outbox", "outbox", False),
    ("rules", "rules", False),
    ("templates", "templates", False),
    ("teams", "team", True),
    ("agents", "agent", True),
)


@click.group()
def config() -> None:
    """The effective configuration, and a check of config, rules and templates."""


# --- show ---------------------------------------------------------------------


def plain(value: object) -> object:
    """A settings value as JSON and TOML know it; secrets as `***`."""
    if isinstance(value, SecretStr):
        return SECRET_SHOWN
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple | frozenset | set):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def section_values(model: BaseModel, *, defaults: bool) -> dict[str, object]:
    """The keys of one section in effect: those set (file, environment), or all of them."""
    values: dict[str, object] = {}
    for name in type(model).model_fields:
        if defaults or name in model.model_fields_set:
            value = getattr(model, name)
            if name == "url" and isinstance(value, str):
                value = _redact_url(value)
            values[name] = plain(value)
    return values


def effective(settings: Settings, *, defaults: bool) -> dict[str, Any]:
    """The configuration as a TOML-shaped document: tables and arrays of tables."""
    document: dict[str, Any] = {}
    for attribute, name, is_array in SECTIONS:
        value = getattr(settings, attribute)
        if is_array:
            entries = [section_values(entry, defaults=defaults) for entry in value]
            if entries:
                document[name] = entries
        elif value is not None:  # [lmtp] exists only when configured
            shown = section_values(value, defaults=defaults)
            if shown:
                document[name] = shown
    return document


def environment_sources(settings: Settings, environ: dict[str, str]) -> dict[str, str]:
    """Keys whose value came from the environment, and the variable it came from."""
    named = {
        "database.url": DATABASE_URL_ENV,
        "database.password": DATABASE_PASSWORD_ENV,
        "smtp.password": SMTP_PASSWORD_ENV,
        "helpdesk.secret": SECRET_ENV,
    }
    for mailbox in settings.mailboxes:
        named[f'mailbox "{mailbox.name}".password'] = mailbox_password_env(mailbox.name)
    return {key: var for key, var in named.items() if environ.get(var)}


def toml_literal(value: object) -> str:
    """A value as it would be written in the TOML file."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    return str(value)


def lines(document: dict[str, Any]) -> Iterator[tuple[str, object]]:
    """(`section.key` or `mailbox "name".key`, value) in document order."""
    for section, content in document.items():
        if isinstance(content, list):
            for index, entry in enumerate(content, start=1):
                name = entry.get("name")
                label = f'{section} "{name}"' if isinstance(name, str) else f"{section}[{index}]"
                for key, value in entry.items():
                    yield f"{label}.{key}", value
        else:
            for key, value in content.items():
                yield f"{section}.{key}", value


@config.command("show")
@click.option("--defaults", is_flag=True, help="Every key, with the built-in defaults too.")
@click.option("--json", "as_json", is_flag=True, help="Print the configuration as JSON.")
@pass_app
def show(app: AppContext, defaults: bool, as_json: bool) -> None:
    """Print the configuration in effect (file + environment + defaults); secrets as ***."""
    settings = app.settings
    document = effective(settings, defaults=defaults)
    from_env = environment_sources(settings, dict(os.environ))
    if as_json:
        emit_json({"source": str(settings.source) if settings.source else None,
                   "settings": document, "environment": from_env})
        return
    origin = settings.source or "no file: built-in defaults"
    click.echo(f"# {origin}")
    for key, value in lines(document):
        note = f"  # ${from_env[key]}" if key in from_env else ""
        click.echo(f"{key} = {toml_literal(value)}".rstrip() + note)


# --- check --------------------------------------------------------------------


def check_problems(app: AppContext) -> tuple[list[dict[str, str]], list[str]]:
    """Every problem of the configuration, the rules and the templates; and what was fine."""
    try:
        settings = app.settings
    except ConfigError as exc:
        where = str(exc.path) if exc.path else "configuration"
        found = [{"area": "config", "message": f"{where}: {p}"} for p in exc.problems]
        return found, ["rules and templates not checked: the configuration must load first"]
    from helpdesk.context import BUILTIN_TEMPLATES
    from helpdesk.rules import RuleError, load_rules
    from helpdesk.templates import TemplateError, check_templates, load_templates

    problems: list[dict[str, str]] = []
    good = [f"configuration {settings.source or '(built-in defaults)'}: OK"]
    template_dir = settings.templates.dir
    names: set[str] = set()
    if template_dir.exists():
        names = {p.stem for p in template_dir.glob("*.txt") if p.is_file()}
        try:
            load_templates(template_dir)
        except TemplateError as exc:
            problems += [{"area": "templates", "message": str(p)} for p in exc.problems]
        else:
            rendered = check_templates(template_dir)
            problems += [{"area": "templates", "message": str(p)} for p in rendered]
            if not rendered:
                good.append(f"{len(names)} templates ({template_dir}), each rendered with a "
                            "sample ticket: OK")
    teams, agents = _known_names(app, settings)
    try:
        rule_set = load_rules(settings.rules.dir, teams=teams, agents=agents,
                              templates=names | BUILTIN_TEMPLATES)
    except RuleError as exc:
        problems += [{"area": "rules", "message": str(p)} for p in exc.problems]
    else:
        good.append(f"{len(rule_set)} rules and {len(rule_set.timers)} timers in "
                    f"{len(rule_set.files)} files ({settings.rules.dir}): OK")
    return problems, good


def _known_names(app: AppContext, settings: Settings) -> tuple[set[str], set[str]]:
    """Teams and agents rules may name: the config's, and the store's when it is reachable."""
    teams = {t.name for t in settings.teams}
    agents = {a for agent in settings.agents for a in agent.addresses}
    try:
        from sqlalchemy import select

        from helpdesk.store.models import AgentAddress, Team

        with app.transaction() as session:
            teams |= set(session.scalars(select(Team.name)))
            agents |= set(session.scalars(select(AgentAddress.address)))
    except HelpdeskError:
        # No database yet (a CI job linting the files): the config's names count.
        pass
    return teams, agents


@config.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@pass_app
def check(app: AppContext, as_json: bool) -> None:
    """Check the configuration, rules and templates together; exit 1 listing every problem."""
    problems, good = check_problems(app)
    if as_json:
        emit_json({"ok": not problems, "problems": problems, "checked": good})
    else:
        for line in good:
            click.echo(line)
        for problem in problems:
            click.echo(f"{problem['area']}: {problem['message']}", err=True)
        if problems:
            click.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found",
                       err=True)
    if problems:
        raise click.exceptions.Exit(1)
