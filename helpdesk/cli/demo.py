"""`helpdesk demo`: a temporary help desk fed with the sample mails we ship."""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

import click

from helpdesk.cli import AppContext, pass_app
from helpdesk.cli.output import table
from helpdesk.delivery import views
from helpdesk.flow.ingest import ingest
from helpdesk.settings import load_settings
from helpdesk.store import db as store_db
from helpdesk.store import listing
from helpdesk.thread import format_tag
from helpdesk.values import Origin, OutcomeKind

DEMO_CONFIG = """\
[helpdesk]
name = "Example Corp IT"
support_address = "support@example.com"
domain = "example.com"

[database]
url = "sqlite:///{db}"

[rules]
dir = "{rules}"

[templates]
dir = "{templates}"

[security]
# Agent powers by mail (#commands, notes, relay) need our MX's
# Authentication-Results with DKIM, SPF or DMARC pass (config.example.toml).
trusted_authserv_id = "mx.example.com"

[[team]]
name = "support"
address = "it-support@example.com"

[[team]]
name = "networking"
address = "network-team@example.com"

[[team]]
name = "infrastructure"
address = "infra@example.com"

[[team]]
name = "identity-and-access"
address = "iam@example.com"

[[team]]
name = "security"
address = "security@example.com"
"""

# In a source checkout the example rules and templates sit beside the package;
# a wheel carries copies of them in helpdesk/examples/ (see pyproject.toml).
CHECKOUT = Path(__file__).resolve().parents[2]
PACKAGED = Path(__file__).resolve().parents[1] / "examples"


def example_dir(name: str) -> Path | None:
    """The shipped example `rules` or `templates` folder, from a checkout or the wheel."""
    for base in (CHECKOUT, PACKAGED):
        if (base / name).is_dir():
            return base / name
    return None

DESCRIBE: dict[OutcomeKind, str] = {
    OutcomeKind.NEW_TICKET: "opened ticket {ref}",
    OutcomeKind.REPLY: "added to ticket {ref}",
    OutcomeKind.DUPLICATE: "duplicate of a message on {ref}",
    OutcomeKind.QUARANTINED: "quarantined (#{qid}): {error}",
}


def sample_mails() -> list[tuple[str, bytes]]:
    """The demo mails shipped in the package, in file-name order."""
    folder = resources.files("helpdesk") / "demo_mail"
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".eml")), key=lambda e: e.name)
    return [(e.name, e.read_bytes()) for e in entries]


@click.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo help desk in this directory instead of a temporary one.",
)
@pass_app
def demo(app: AppContext, keep: Path | None) -> None:
    """Ingest the shipped sample mails into a fresh SQLite store and show the tickets."""
    workdir = keep or Path(tempfile.mkdtemp(prefix="helpdesk-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = (workdir / "demo.db").resolve()
    db_path.unlink(missing_ok=True)
    config = workdir / "helpdesk.toml"
    rules = example_dir("rules") or workdir / "rules"
    templates = example_dir("templates") or workdir / "templates"
    config.write_text(
        DEMO_CONFIG.format(
            db=db_path.as_posix(), rules=rules.as_posix(), templates=templates.as_posix()
        ),
        encoding="utf-8",
    )
    try:
        _run_demo(app, config)
    finally:
        app.close()
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if keep is not None:
        click.echo(f"\nThe demo help desk is kept in {workdir}; try:\n"
                   f"  helpdesk --config {config} tickets show 1")


def _run_demo(app: AppContext, config: Path) -> None:
    settings = load_settings(config, {})
    app.use_settings(settings)
    store_db.upgrade(app.engine)
    ctx = app.ingest_context()
    prefix = settings.helpdesk.tag_prefix
    click.echo(click.style(f"Demo help desk for {settings.helpdesk.support_address}", bold=True))
    for name, raw in sample_mails():
        with app.transaction() as session:
            outcome = ingest(session, raw, Origin(source="demo", path=name), ctx)
        ref = format_tag(outcome.ticket_id, prefix) if outcome.ticket_id else "-"
        text = DESCRIBE[outcome.kind].format(
            ref=ref, qid=outcome.quarantine_id, error=outcome.error
        )
        if outcome.mail_class != "human":
            text += f" ({outcome.mail_class.replace('_', '-')})"
        extras = [*outcome.mails_queued, *(f"no auto-reply: {s}" for s in outcome.suppressed)]
        if outcome.rules_fired:
            extras.insert(0, "rules " + ", ".join(outcome.rules_fired))
        click.echo(f"  {name:<28} {text}")
        for extra in extras:
            click.echo(f"  {'':<28}   {extra}")
    click.echo()
    with app.transaction() as session:
        rows = listing.list_tickets(session, listing.TicketFilter(limit=100))
    table(
        ["REF", "STATUS", "TEAM", "PRIO", "REQUESTER", "MSGS", "SUBJECT"],
        [[format_tag(r.id, prefix), r.status, r.team, r.priority, r.requester, r.message_count,
          r.subject] for r in reversed(rows)],
    )
    with app.reading() as conn:
        queued = views.list_outbox(conn, limit=100)
    if queued:
        click.echo("\nQueued in the outbox (sent by `helpdesk run` or `helpdesk outbox send`):")
        for item in reversed(queued):
            click.echo(f"  {item.kind:<11} to {', '.join(item.envelope_to)}")
