"""Logging set-up: structlog events, readable on a terminal, JSON otherwise.

Called once by the application layer (CLI or daemon); nothing below it
configures logging.

The JSON stream (journald, a log shipper) carries our events, one JSON object
a line, each named `noun.past_verb` with stable keys. Libraries log too
(aiosmtpd a line per LMTP command, imapclient its connections, Alembic its
"Context impl PostgresqlImpl."), in their own words and at INFO: those reach
the stream only from WARNING up (INFO too when we log at DEBUG), and as an
event of their own, `library.logged`, with the library's `logger` and its
text as `message`, so that a consumer filtering on `event` never meets prose.
Python warnings and, with `hooks=True` (the daemon), uncaught exceptions in
any thread become events as well, rather than raw text on stderr.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import Literal, TextIO

import structlog

LogFormat = Literal["auto", "console", "json"]

FOREIGN_EVENT = "library.logged"


class _ForeignFilter(logging.Filter):
    """Our events pass (structlog filtered them already); libraries' from `threshold` up."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        return hasattr(record, "_logger") or record.levelno >= self.threshold


def _as_foreign_event(
    _logger: object, _method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A library's log record as our event: `library.logged` with its logger and text."""
    record = event_dict.get("_record")
    event_dict["message"] = str(event_dict.get("event", ""))
    event_dict["event"] = FOREIGN_EVENT
    event_dict["logger"] = record.name if isinstance(record, logging.LogRecord) else "unknown"
    return event_dict


def configure_logging(
    fmt: LogFormat = "auto",
    level: int = logging.INFO,
    stream: TextIO | None = None,
    *,
    hooks: bool = False,
) -> None:
    """Route structlog and stdlib logging to `stream` (stderr by default).

    `hooks`: also log uncaught exceptions (main thread and worker threads) as
    `process.crashed` / `thread.crashed` events; for the long-running daemon.
    """
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _as_foreign_event],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    # Libraries' INFO is chatter about their own workings (a line per SMTP
    # command); it is worth seeing only when debugging us.
    handler.addFilter(_ForeignFilter(logging.INFO if level <= logging.DEBUG else logging.WARNING))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Off, then on: capturing only takes over `warnings.showwarning` when it is
    # off, and something (a test runner) may have put its own back meanwhile.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    if hooks:
        _log_uncaught_exceptions()


def _log_uncaught_exceptions() -> None:
    log = structlog.get_logger("helpdesk.crash")

    def in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
        log.error("thread.crashed", thread=name, exc_info=exc_info)

    def in_main(kind: type[BaseException], value: BaseException,
                trace: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, trace)
            return
        log.critical("process.crashed", exc_info=(kind, value, trace))

    threading.excepthook = in_thread
    sys.excepthook = in_main
