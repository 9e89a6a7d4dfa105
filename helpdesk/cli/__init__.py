"""The `helpdesk` command: `helpdesk <noun> <verb>`.

The root group loads settings lazily (so `--help` needs no config), keeps one
`AppContext` per invocation, and maps our errors to exit codes in one place:
0 success, 1 not found or invalid input, 2 usage, 75 (EX_TEMPFAIL) when the
store is unavailable so an MTA retries.

Start-up is paid on every mail an MTA pipes to `helpdesk ingest`, so this
module imports only Click and the standard library: each subcommand's module
is imported when that subcommand runs (`COMMANDS` below), and the store,
settings, rules and templates when a command first asks for them. `--help`
lists the commands from the table without importing any of them.
"""

from __future__ import annotations

import gc
import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from helpdesk import __version__
from helpdesk.errors import ConfigError, ConfigProblem, HelpdeskError, StoreUnavailable

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import Session, sessionmaker

    from helpdesk import context
    from helpdesk.configfile import ReadingConfig
    from helpdesk.flow.ingest import IngestContext
    from helpdesk.settings import Settings

EX_TEMPFAIL = 75

# Every subcommand: its name, where it lives ("module:attribute") and its short
# help for `helpdesk --help`, which must not import the module. One line per
# command, so adding one is a one-line change; tests/app/test_cli_startup.py
# checks that each short help matches the command's own docstring.
COMMANDS: dict[str, tuple[str, str]] = {
    "agents": ("helpdesk.cli.agents:agents",
               "IT staff: who answers tickets, from which addresses, in which teams."),
    "config": ("helpdesk.cli.config:config",
               "The effective configuration, and a check of config, rules and templates."),
    "db": ("helpdesk.cli.db:db", "Manage the database schema."),
    "export": ("helpdesk.cli.export:export",
               "Export tickets: all of them, one (--ticket), or those active since a date "
               "(--since)."),
    "demo": ("helpdesk.cli.demo:demo",
             "Ingest the shipped sample mails into a fresh SQLite store and show the tickets."),
    "ingest": ("helpdesk.cli.ingest:ingest",
               "Turn mail into tickets: FILE ..., `-` or nothing for one message on stdin."),
    "mailbox": ("helpdesk.cli.mailbox:mailbox",
                "The mailboxes (IMAP) and Maildirs helpdesk watches."),
    "outbox": ("helpdesk.cli.outbox:outbox", "Outgoing mail: queued, sent and failed."),
    "quarantine": ("helpdesk.cli.quarantine:quarantine",
                   "Mail that could not become a ticket, kept with its error."),
    "rules": ("helpdesk.cli.rules:rules",
              "Routing and auto-reply rules (rules/*.toml) and their templates."),
    "run": ("helpdesk.cli.run:run",
            "Watch the configured mailboxes, ingest every message, send the outbox."),
    "status": ("helpdesk.cli.status:status",
               "The desk at a glance: mailboxes, daemons, outbox, relay, quarantine, oldest "
               "waiting ticket."),
    "stats": ("helpdesk.cli.stats:stats",
              "Open tickets by team and status, response and resolution times, and what causes "
              "work."),
    "teams": ("helpdesk.cli.teams:teams", "Teams of agents that tickets are routed to."),
    "tickets": ("helpdesk.cli.tickets:tickets", "Inspect and change tickets."),
}


@dataclass
class AppContext:
    """Per-invocation state: where the config is, and the store once opened."""

    config_path: Path | None
    json_output: bool = False
    _settings: Settings | None = None
    _engine: Engine | None = None
    _factory: sessionmaker[Session] | None = field(default=None, repr=False)
    _schema_checked: bool = False
    _directory_current: bool = False
    _configured: context.Configured | None = None
    # False until looked for; then the short path's login, or None (load the settings).
    _reading_config: ReadingConfig | bool | None = False

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from helpdesk.settings import load_settings

            self._settings = load_settings(self.config_path, os.environ)
        return self._settings

    def use_settings(self, settings: Settings) -> None:
        """Replace the loaded settings (the demo brings its own)."""
        self._settings = settings
        self._reading_config = None
        self._engine = None
        self._factory = None
        self._schema_checked = False
        self._directory_current = False
        self._configured = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from helpdesk.store.db import make_engine

            short = self._short_config()
            if short is not None:
                self._engine = make_engine(short.url, password=short.password)
            else:
                database = self.settings.database
                self._engine = make_engine(database.url, password=database.password_value)
        return self._engine

    @property
    def tag_prefix(self) -> str:
        """The prefix of ticket references, `[#1042]`, without loading the settings if need not."""
        short = self._short_config()
        return short.tag_prefix if short is not None else self.settings.helpdesk.tag_prefix

    def _short_config(self) -> ReadingConfig | None:
        """The database login read without validating the file, while no settings are loaded.

        Commands that only read need nothing else of the file; `configfile.reading_config`
        says None whenever the file needs the settings' checks, and then they run.
        """
        if self._settings is not None:
            return None
        if self._reading_config is False:
            from helpdesk.configfile import reading_config

            self._reading_config = reading_config(self.config_path, os.environ)
        assert not isinstance(self._reading_config, bool)
        return self._reading_config

    def sessions(self, *, check: bool = True) -> sessionmaker[Session]:
        """The session factory; verifies the schema and syncs the directory first (only when
        the configuration's teams or agents changed since the last sync)."""
        if self._factory is None:
            from helpdesk.desk import directory
            from helpdesk.store.db import make_session_factory

            if check:
                self._check_schema()
            self._factory = make_session_factory(self.engine)
            # Commits that queue mail NOTIFY the daemons' senders (PostgreSQL).
            from helpdesk.delivery.wakeup import install_commit_hooks

            install_commit_hooks(self._factory)
            if check:
                directory.mirror(self._factory, self.settings.teams, self.settings.agents)
        return self._factory

    def _check_schema(self) -> None:
        from helpdesk.store.db import StoreAccessDenied, check_schema

        if self._schema_checked:
            return
        try:
            check_schema(self.engine)
        except StoreAccessDenied as exc:
            self._settings_first()
            raise self.access_denied(exc) from exc
        except HelpdeskError:
            self._settings_first()
            raise
        self._schema_checked = True

    def _settings_first(self) -> None:
        """A broken configuration is the first thing to fix: say so before the store's problem."""
        if self._settings is None:
            self.settings  # noqa: B018 - raises ConfigError naming every bad key

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only Core connection (helpdesk.store.db.reading) for commands that only
        read: the ORM is not imported unless the directory must be mirrored first."""
        from helpdesk.store import db

        self._ready_to_read()
        with db.reading(self.engine) as conn:
            yield conn

    @contextmanager
    def reading_together(self, count: int) -> Iterator[list[Connection]]:
        """`reading`, as up to `count` connections on one snapshot (store.db.reading_together)."""
        from helpdesk.store import db

        self._ready_to_read()
        with db.reading_together(self.engine, count) as conns:
            yield conns

    def _ready_to_read(self) -> None:
        """The schema checked, and the directory mirrored when the configuration changed."""
        from helpdesk.desk import directory
        from helpdesk.store import db

        self._check_schema()
        if self._factory is None and not self._directory_current:
            short = self._short_config()
            with db.reading(self.engine) as conn:
                current = short is not None and directory.source_is_current(conn, short.digest)
            if not current:
                self._mirror_for_reading(short)
            self._directory_current = True

    def _mirror_for_reading(self, short: ReadingConfig | None) -> None:
        """The settings' way: validate the file, mirror it if the store does not, pair it."""
        from sqlalchemy.exc import SQLAlchemyError

        from helpdesk.desk import directory
        from helpdesk.store import db

        settings = self.settings
        with db.reading(self.engine) as conn:
            current = directory.is_current(conn, settings.teams, settings.agents)
        if not current:
            self.sessions()
        if short is None:
            return
        try:
            with self.engine.begin() as conn:  # Core: a reading command needs no ORM
                directory.remember_source(conn, short.digest, settings.teams, settings.agents)
        except SQLAlchemyError:
            pass  # a role that may only read: the next command validates the file again

    def access_denied(self, exc: HelpdeskError) -> ConfigError:
        """A refused database login as what it is: a problem in the configuration."""
        short = self._short_config()
        source = short.source if short is not None else self.settings.source
        return ConfigError(source, [ConfigProblem("database", str(exc))])

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on error."""
        with self.sessions().begin() as session:
            yield session

    def configured(self) -> context.Configured:
        """Rules and templates; a broken file is an error naming it."""
        if self._configured is None:
            from helpdesk import context
            with self.transaction() as session:
                self._configured = context.load_configured(session, self.settings)
        return self._configured

    def ingest_context(self, *, with_rules: bool = True) -> IngestContext:
        """What ingest needs; rules and their mail only when `with_rules`."""
        from helpdesk import context
        configured = self.configured() if with_rules else None
        with self.transaction() as session:
            return context.ingest_context(session, self.settings, configured)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


pass_app = click.make_pass_decorator(AppContext)


class Failure(click.ClickException):
    """Not found or invalid input: exit 1."""


class TempFailure(click.ClickException):
    """The store is unavailable: exit 75, so an MTA keeps the mail and retries."""

    exit_code = EX_TEMPFAIL


def failure_for(exc: HelpdeskError, app: AppContext | None = None) -> click.ClickException:
    """The exit (and its message) for one of our errors; the one place that decides."""
    # Imported here: loading them is only worth it when there is an error to name.
    from helpdesk.rules import RuleError
    from helpdesk.store.db import StoreAccessDenied
    from helpdesk.templates import TemplateError

    if isinstance(exc, StoreAccessDenied):
        # A wrong or missing password does not pass by waiting: exit 1 with the
        # reason, not 75 ("try again later").
        exc = app.access_denied(exc) if app is not None else ConfigError(None, [
            ConfigProblem("database", str(exc))])
    if isinstance(exc, StoreUnavailable):
        return TempFailure(f"store unavailable, try again later: {exc}")
    if isinstance(exc, ConfigError):
        return Failure(f"invalid configuration\n{exc}")
    if isinstance(exc, RuleError):
        return Failure(f"invalid rules\n{exc}")
    if isinstance(exc, TemplateError):
        return Failure(f"invalid templates\n{exc}")
    return Failure(str(exc))


def short_help(text: str, limit: int) -> str:
    """`text` cut at a word to fit `limit` characters, as Click shortens a command's help."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 3, 1)].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "..."


class HelpdeskGroup(click.Group):
    """The root group: commands from `COMMANDS`, imported when invoked; errors mapped here."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, _, attribute = entry[0].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{entry[0]} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Click's own version asks every command for its help, importing them all.
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, self._short_help(name, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def _short_help(self, name: str, limit: int) -> str:
        if name in self.commands:
            return self.commands[name].get_short_help_str(limit)
        return short_help(COMMANDS[name][1], limit)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HelpdeskError as exc:
            raise failure_for(exc, ctx.find_object(AppContext)) from exc


@click.group(cls=HelpdeskGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="HELPDESK_CONFIG",
    help="Configuration file (default: ./helpdesk.toml, then /etc/helpdesk/helpdesk.toml).",
)
@click.option("-v", "--verbose", count=True, help="Log more (repeat for debug).")
@click.version_option(__version__, prog_name="helpdesk")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int) -> None:
    """An e-mail help desk: every message to support@ becomes a threaded ticket."""
    import logging

    from helpdesk.logs import configure_when_used

    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    configure_when_used("auto", level)
    app = AppContext(config_path=config_path)
    ctx.obj = app
    ctx.call_on_close(app.close)


# The cycle collector's default (a pass every 700 new objects) costs a command 5-10%
# of its life: start-up creates some 150,000 objects (imports, settings, rules,
# templates) that all survive, and every pass walks the young ones again, 40-70 ms
# of a 0.65 s `helpdesk ingest < one.eml` (issue 13). A pass every 200,000 objects
# leaves a short command none; a long one is still collected, in fewer, larger
# passes. `helpdesk run` goes back to the default (see `run.collect_as_a_daemon`).
COMMAND_GC_THRESHOLD = 200_000
DEFAULT_GC_THRESHOLDS = gc.get_threshold()


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the `helpdesk` console script."""
    from helpdesk.cli.quick_exit import leave

    gc.set_threshold(COMMAND_GC_THRESHOLD, *DEFAULT_GC_THRESHOLDS[1:])
    try:
        cli.main(args=argv, prog_name="helpdesk")
    except SystemExit as exc:
        leave(exc.code)
    leave(0)
