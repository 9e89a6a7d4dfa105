"""`helpdesk run`: the daemon in the foreground (systemd runs it so, too)."""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys

import click

from helpdesk.cli import DEFAULT_GC_THRESHOLDS, AppContext, pass_app
from helpdesk.daemon import STARTUP_FAILURE, Daemon
from helpdesk.errors import HelpdeskError
from helpdesk.logs import LogFormat, again_to_stdout, configure_logging


@click.command()
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default="auto",
    show_default=True,
    help="auto: readable on a terminal, JSON otherwise (journald).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info",
              show_default=True)
@pass_app
def run(app: AppContext, log_format: LogFormat, log_level: str) -> None:
    """Watch the configured mailboxes, ingest every message, send the outbox.

    Exits 0 on SIGTERM/SIGINT after finishing the message in hand, 3 when it
    cannot start (no mailbox configured, a broken rule file, an old schema).
    """
    level = getattr(logging, log_level.upper())
    configure_logging(log_format, level, stream=sys.stdout, hooks=True)
    try:
        settings = app.settings
    except HelpdeskError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(STARTUP_FAILURE)
    # The sender's process logs the same way, to the same standard output (it inherits
    # it, so "auto" comes out the same there).
    daemon = Daemon(settings, config_path=app.config_path, environ=os.environ,
                    log_setup=functools.partial(again_to_stdout, log_format, level))
    collect_as_a_daemon()
    code = daemon.run()
    if code == STARTUP_FAILURE:
        click.echo("Error: helpdesk could not start; see the log line above.", err=True)
    sys.exit(code)


def collect_as_a_daemon() -> None:
    """The cycle collector's default passes again, minus what start-up made.

    A command collects rarely (`helpdesk.cli.COMMAND_GC_THRESHOLD`); the daemon
    lives for months, so it gets the default back. What it has made so far
    (modules, settings, rules, templates) lives as long as it does: frozen, no
    full pass walks it again.
    """
    gc.freeze()
    gc.set_threshold(*DEFAULT_GC_THRESHOLDS)
