"""The `helpdesk` command: `helpdesk <noun> <verb>`.

The root group loads settings lazily (so `--help` needs no config), keeps one
`AppContext` per invocation, and maps our errors to exit codes in one place:
0 success, 1 not found or invalid input, 2 usage, 75 (EX_TEMPFAIL) when the
store is unavailable so an MTA retries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from helpdesk import __version__, context, directory
from helpdesk.errors import (
    ConfigError,
    HelpdeskError,
    InvalidInput,
    NotFound,
    SchemaOutdated,
    StoreUnavailable,
)
from helpdesk.ingest import IngestContext
from helpdesk.logs import configure_logging
from helpdesk.rules import RuleError
from helpdesk.settings import Settings, load_settings
from helpdesk.store.db import check_schema, make_engine, make_session_factory
from helpdesk.templates import TemplateError

EX_TEMPFAIL = 75


@dataclass
class AppContext:
    """Per-invocation state: where the config is, and the store once opened."""

    config_path: Path | None
    json_output: bool = False
    _settings: Settings | None = None
    _engine: Engine | None = None
    _factory: sessionmaker[Session] | None = field(default=None, repr=False)
    _configured: context.Configured | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path, os.environ)
        return self._settings

    def use_settings(self, settings: Settings) -> None:
        """Replace the loaded settings (the demo brings its own)."""
        self._settings = settings
        self._engine = None
        self._factory = None
        self._configured = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings.database.url)
        return self._engine

    def sessions(self, *, check: bool = True) -> sessionmaker[Session]:
        """The session factory; verifies the schema and syncs the directory first (only when
        the configuration's teams or agents changed since the last sync)."""
        if self._factory is None:
            if check:
                check_schema(self.engine)
            self._factory = make_session_factory(self.engine)
            if check:
                with self._factory.begin() as session:
                    directory.ensure_synced(session, self.settings.teams, self.settings.agents)
        return self._factory

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on error."""
        with self.sessions().begin() as session:
            yield session

    def configured(self) -> context.Configured:
        """Rules and templates; a broken file is an error naming it."""
        if self._configured is None:
            with self.transaction() as session:
                self._configured = context.load_configured(session, self.settings)
        return self._configured

    def ingest_context(self, *, with_rules: bool = True) -> IngestContext:
        """What ingest needs; rules and their mail only when `with_rules`."""
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


class HelpdeskGroup(click.Group):
    """The root group; maps helpdesk's errors to exit codes in this one place."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except StoreUnavailable as exc:
            raise TempFailure(f"store unavailable, try again later: {exc}") from exc
        except ConfigError as exc:
            raise Failure(f"invalid configuration\n{exc}") from exc
        except RuleError as exc:
            raise Failure(f"invalid rules\n{exc}") from exc
        except TemplateError as exc:
            raise Failure(f"invalid templates\n{exc}") from exc
        except (NotFound, InvalidInput, SchemaOutdated, HelpdeskError) as exc:
            raise Failure(str(exc)) from exc


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
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    configure_logging("auto", level)
    app = AppContext(config_path=config_path)
    ctx.obj = app
    ctx.call_on_close(app.close)


def _register() -> None:
    # Imported here so each command module can import `cli` and `pass_app`.
    from helpdesk.cli import (
        agents,
        db,
        demo,
        ingest,
        mailbox,
        outbox,
        quarantine,
        rules,
        run,
        stats,
        teams,
        tickets,
    )

    cli.add_command(db.db)
    cli.add_command(demo.demo)
    cli.add_command(ingest.ingest)
    cli.add_command(mailbox.mailbox)
    cli.add_command(run.run)
    cli.add_command(outbox.outbox)
    cli.add_command(quarantine.quarantine)
    cli.add_command(rules.rules)
    cli.add_command(tickets.tickets)
    cli.add_command(agents.agents)
    cli.add_command(teams.teams)
    cli.add_command(stats.stats)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `helpdesk` console script."""
    cli.main(args=argv, prog_name="helpdesk")
