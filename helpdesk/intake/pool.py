"""Worker processes for the pure stage, each mail under a time limit that can really stop it.

Why processes (issue 12 §11): a runaway regular expression or parser holds the
GIL, so a thread with a time limit can neither stop it nor keep the daemon's
other threads (mailboxes, the sender, signal handling) running beside it. A
worker process can be killed. The daemon and `helpdesk ingest` send each mail's
bytes to a worker (`helpdesk.intake.worker`), which runs `prepare` and sends the
`Prepared` result back, its large attachments without their bytes (the store
decodes them from the raw mail it holds: `prepare.detach_payloads`).

* A mail that takes longer than `time_limit` seconds: its worker is killed and
  replaced, and the mail comes back as `Prepared.failed(...)`, to be
  quarantined with its raw bytes; the other mails go on.
* A worker that dies under a mail (the kernel's OOM killer, a crash in C code)
  gets the mail once more in a fresh worker; if that one dies too, the mail is
  quarantined the same way.
* `close()` kills the workers. A mail in hand then raises `PoolClosed` in its
  caller, which acknowledges nothing: the mail comes again after the restart.
  So a stop is honoured at once, whatever a worker is computing.
* Workers ignore SIGINT and SIGTERM: a Ctrl-C or a systemd stop reaches the
  whole process group, and a worker must not die under a mail before the
  daemon decides what happens to it. They end when their pipe closes, and ask
  the kernel to kill them when their parent dies (PR_SET_PDEATHSIG).

Start methods: "fork" for a single-threaded command (`helpdesk ingest`, a few
milliseconds per worker); "forkserver" for the daemon, whose threads make a
plain fork unsafe.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import structlog

from helpdesk.intake.worker import PrepareFunction, prepare_and_search, serve
from helpdesk.mail.prepare import PrepareConfig, Prepared

log = structlog.get_logger()

__all__ = ["PoolClosed", "PreparePool"]

# How often a caller waiting for a worker looks at whether the pool is closing.
_CLOSE_CHECK = 0.2
# A worker is replaced after this many mails, so that the memory a huge mail
# left fragmented in it goes back to the system.
DEFAULT_MAX_TASKS = 2000


class PoolClosed(Exception):
    """The pool was closed while a mail was in hand: acknowledge nothing, it comes again."""


class _WorkerLost(Exception):
    """The worker process died under a mail."""


class _Worker:
    """One worker process and our end of its pipe."""

    def __init__(self, context: Any, function: PrepareFunction) -> None:
        ours, theirs = context.Pipe(duplex=True)
        self.process = context.Process(target=serve, args=(theirs, function), daemon=True,
                                       name="helpdesk-prepare")
        self.process.start()
        theirs.close()
        self.conn: Connection = ours
        self.tasks = 0

    def run(self, raw: bytes, config: PrepareConfig, envelope_sender: str | None, limit: float,
            closing: threading.Event) -> Prepared | None:
        """The result, or None when the time limit ran out (the worker is then dead)."""
        self.tasks += 1
        try:
            self.conn.send((config, envelope_sender))
            self.conn.send_bytes(raw)
        except (BrokenPipeError, OSError) as exc:
            raise _WorkerLost(str(exc)) from exc
        deadline = time.monotonic() + limit
        while True:
            if closing.is_set():
                raise PoolClosed("the pool was closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                return None
            try:
                if self.conn.poll(min(remaining, _CLOSE_CHECK)):
                    result: Prepared = self.conn.recv()
                    return result
            except (EOFError, OSError) as exc:
                if closing.is_set():
                    raise PoolClosed("the pool was closed") from exc
                raise _WorkerLost(self.describe_death()) from exc

    def describe_death(self) -> str:
        self.process.join(1.0)
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.process.join(2.0)

    def close(self) -> None:
        # Closing our end makes an idle worker's recv() fail, and it returns.
        with contextlib.suppress(Exception):
            self.conn.close()
        self.process.join(0.5)
        if self.process.is_alive():
            self.kill()


class PreparePool:
    """`size` worker processes running `prepare`; thread-safe (see the module docstring)."""

    def __init__(
        self,
        size: int,
        *,
        time_limit: float,
        start_method: str = "forkserver",
        max_tasks: int = DEFAULT_MAX_TASKS,
        function: PrepareFunction | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one worker")
        # What the workers run: `prepare_and_search`, looked up now (tests give their own).
        self.function = function or prepare_and_search
        self.size = size
        self.time_limit = time_limit
        self.max_tasks = max_tasks
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The server imports the pure stage once; every worker forks from it.
            self._context.set_forkserver_preload(["helpdesk.intake.worker"])
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._all: set[_Worker] = set()
        for _ in range(size):
            self._idle.put(None)  # a slot: its worker is started on first use
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="prepare")
        self.timeouts = 0
        self.lost = 0
        # Monotonic time a mail last came back from a worker: a sign of life.
        self.last_progress = time.monotonic()

    def start_all(self) -> PreparePool:
        """Start every worker now (a forking command does it before it starts threads)."""
        workers = [self._take() for _ in range(self.size)]
        for worker in workers:
            self._idle.put(worker)
        return self

    # -- using it ----------------------------------------------------------------

    def prepare(self, raw: bytes, config: PrepareConfig,
                envelope_sender: str | None = None) -> Prepared:
        """Prepare one mail in a worker; `PoolClosed` if the pool closes meanwhile."""
        for attempt in (1, 2):
            worker = self._take()
            try:
                result = worker.run(raw, config, envelope_sender, self.time_limit,
                                    self._closing)
            except _WorkerLost as exc:
                self._discard(worker)
                self.lost += 1
                log.warning("prepare.worker_lost", attempt=attempt, reason=str(exc), size=len(raw))
                if attempt == 2:
                    return Prepared.failed(
                        f"the worker process preparing it died twice ({exc})",
                        "a crash or the kernel's out-of-memory killer; see the system log",
                    )
                continue
            except BaseException:
                self._discard(worker)
                raise
            if result is None:
                self._discard(worker)
                self.timeouts += 1
                return Prepared.failed(
                    f"processing took longer than {self.time_limit:g} s and was stopped",
                    "[intake] message_time_limit",
                )
            self._give_back(worker)
            self.last_progress = time.monotonic()
            return result
        raise AssertionError("unreachable")

    def prepare_many(self, raws: Sequence[bytes], config: PrepareConfig,
                     envelope_senders: Sequence[str | None] | None = None) -> list[Prepared]:
        """Prepare several mails on all workers at once; results in the order given."""
        senders = envelope_senders or [None] * len(raws)
        if len(raws) == 1:
            return [self.prepare(raws[0], config, senders[0])]
        futures = [self._threads.submit(self.prepare, raw, config, sender)
                   for raw, sender in zip(raws, senders, strict=True)]
        results: list[Prepared] = []
        try:
            for future in futures:
                results.append(future.result())
        finally:
            for future in futures:
                future.cancel()
        return results

    def close(self) -> None:
        """Kill the workers; a caller waiting on one gets `PoolClosed`. Idempotent."""
        self._closing.set()
        with self._lock:
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.kill()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> PreparePool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the idle queue ----------------------------------------------------------

    def _take(self) -> _Worker:
        while True:
            if self._closing.is_set():
                raise PoolClosed("the pool was closed")
            try:
                slot = self._idle.get(timeout=_CLOSE_CHECK)
            except queue.Empty:
                continue
            if slot is not None and slot.process.is_alive():
                return slot
            if slot is not None:
                self._forget(slot)
            try:
                return self._start()
            except BaseException:
                self._idle.put(None)
                raise

    def _start(self) -> _Worker:
        worker = _Worker(self._context, self.function)
        with self._lock:
            if self._closing.is_set():
                worker.kill()
                raise PoolClosed("the pool was closed")
            self._all.add(worker)
        return worker

    def _give_back(self, worker: _Worker) -> None:
        if worker.tasks >= self.max_tasks:
            self._forget(worker)
            worker.close()
            self._idle.put(None)
        else:
            self._idle.put(worker)

    def _discard(self, worker: _Worker) -> None:
        self._forget(worker)
        worker.kill()
        self._idle.put(None)

    def _forget(self, worker: _Worker) -> None:
        with self._lock:
            self._all.discard(worker)
