"""`helpdesk db upgrade|status`: the schema, through Alembic migrations."""

from __future__ import annotations

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
    before, after = store_db.upgrade(app.engine)
    where = store_db.describe_url(app.settings.database.url)
    if before == after:
        click.echo(f"{where}: already at revision {after}")
    else:
        click.echo(f"{where}: upgraded from {before or 'empty'} to revision {after}")


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
