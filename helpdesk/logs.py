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

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import threading
from collections.abc import Sequence
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Literal, TextIO

if TYPE_CHECKING:
    import structlog

LogFormat = Literal["auto", "console", "json"]

FOREIGN_EVENT = "library.logged"


def again_to_stdout(fmt: LogFormat, level: int) -> None:
    """`configure_logging` to standard output with the crash hooks: the daemon's logging,
    in a process of its own (the sender's)."""
    configure_logging(fmt, level, stream=sys.stdout, hooks=True)


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
    _cancel_deferred()  # before the import below, which would run it
    import structlog

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
    handler.addFilter(_ForeignFilter(_threshold(level)))
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
    import structlog

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


# -- configured when first used --------------------------------------------------------


def configure_when_used(fmt: LogFormat = "auto", level: int = logging.INFO,
                        stream: TextIO | None = None) -> None:
    """`configure_logging`, put off until something logs: structlog is imported, or a
    library logs what the configured handler would show.

    Why: importing structlog (and rich, where it is installed) is a tenth of the
    start-up of a reading command such as `tickets list`, which logs nothing. Whatever
    logs first has logging configured before its record is rendered, so no event is
    ever printed by structlog's unconfigured defaults.
    """
    if "structlog" in sys.modules:
        configure_logging(fmt, level, stream)
        return
    global _pending
    _cancel_deferred()
    pending = _Deferred(fmt, level, stream)
    _pending = pending
    sys.meta_path.insert(0, pending.finder)
    root = logging.getLogger()
    root.handlers[:] = [pending.handler]
    root.setLevel(level)
    # Python warnings become records on `py.warnings` and so configure logging too.
    logging.captureWarnings(False)
    logging.captureWarnings(True)


_pending: _Deferred | None = None


def _cancel_deferred() -> None:
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        pending.cancel()


class _Deferred:
    """One deferred configuration, done at most once, by whichever trigger comes first."""

    def __init__(self, fmt: LogFormat, level: int, stream: TextIO | None) -> None:
        self.args = (fmt, level, stream)
        self.lock = threading.Lock()
        self.done = False
        self.finder = _OnImport(self)
        self.handler = _FirstRecord(self, _threshold(level))

    def cancel(self) -> None:
        with self.lock:
            self.done = True
        _unhook(self.finder)

    def configure(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
        _unhook(self.finder)
        fmt, level, stream = self.args
        configure_logging(fmt, level, stream)


def _unhook(finder: importlib.abc.MetaPathFinder) -> None:
    with contextlib.suppress(ValueError):  # gone already (the other trigger came first)
        sys.meta_path.remove(finder)


class _OnImport(importlib.abc.MetaPathFinder):
    """Finds structlog as the other finders do, and configures logging once it has loaded."""

    def __init__(self, deferred: _Deferred) -> None:
        self.deferred = deferred

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "structlog":
            return None
        _unhook(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and isinstance(spec.loader, importlib.abc.Loader):
            spec.loader = _ThenConfigure(spec.loader, self.deferred)
        return spec


class _ThenConfigure(importlib.abc.Loader):
    """structlog's own loader, followed by the deferred configuration."""

    def __init__(self, loader: importlib.abc.Loader, deferred: _Deferred) -> None:
        self.loader = loader
        self.deferred = deferred

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.deferred.configure()

    def __getattr__(self, name: str) -> object:  # resource readers and the like
        return getattr(self.loader, name)


class _FirstRecord(logging.Handler):
    """Stands in for the real handler: the first record it would show configures logging."""

    def __init__(self, deferred: _Deferred, threshold: int) -> None:
        super().__init__()
        self.deferred = deferred
        self.addFilter(_ForeignFilter(threshold))

    def emit(self, record: logging.LogRecord) -> None:
        self.deferred.configure()
        for handler in logging.getLogger().handlers:
            if handler is not self and record.levelno >= handler.level:
                handler.handle(record)


def _threshold(level: int) -> int:
    """Libraries' records shown from this level on (see configure_logging)."""
    return logging.INFO if level <= logging.DEBUG else logging.WARNING
