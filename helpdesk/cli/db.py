"""`helpdesk db upgrade|status`: the schema, through Alembic migrations."""

from __future__ import annotations

import sys

import click

from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import emit_json, fields
from helpdesk.store import db as store_db


@click.group("db")
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@pass_app
def upgrade(app: AppContext) -> None:
    """Create the schema or bring it up to the newest revision."""
    steps = store_db.pending_revisions(app.engine)
    # On a big store one migration can take minutes: show which one runs, on a
    # terminal only (never in a pipe or a log).
    with click.progressbar(length=len(steps), label="Migrating", file=sys.stderr,
                           hidden=len(steps) < 2 or not sys.stderr.isatty(),
                           item_show_func=_revision) as bar:
        before, after = store_db.upgrade(app.engine, on_step=lambda rev: bar.update(1, rev))
    where = store_db.describe_url(app.settings.database.url)
    if before == after:
        click.echo(f"{where}: already at revision {after}")
    else:
        click.echo(f"{where}: upgraded from {before or 'empty'} to revision {after}")


def _revision(rev: str | None) -> str | None:
    return f"revision {rev}" if rev else None


@db.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """Show the database URL and its schema revision; exit 1 if it needs an upgrade."""
    current = store_db.current_revision(app.engine)
    head = store_db.head_revision()
    data = {
        "url": store_db.describe_url(app.settings.database.url),
        "revision": current,
        "head": head,
        "up_to_date": current == head,
    }
    if as_json:
        emit_json(data)
    else:
        fields([("database", data["url"]), ("revision", current or "empty"), ("needed", head)])
    if current != head:
        raise click.exceptions.Exit(1)
