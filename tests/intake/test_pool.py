"""The prepare pool: a time limit that really stops a runaway mail; crashes survived; stop."""

from __future__ import annotations

import json
import multiprocessing.forkserver
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpdesk.intake import PoolClosed, PreparePool
from helpdesk.mail.parse import attach
from helpdesk.mail.prepare import PrepareConfig, prepare
from tests.intake.workloads import crash_on_marker, runaway_on_marker
from tests.mailfactory import make_mail

CONFIG = PrepareConfig(own_addresses=frozenset({"support@example.com"}),
                       loop_id="support@example.com")
METHODS = pytest.mark.parametrize("method", ["fork", "forkserver"])


def mail(body: str = "Hello", subject: str = "Printer broken") -> bytes:
    return make_mail(subject=subject, body=body)


@METHODS
def test_results_equal_prepare_in_this_process(method: str) -> None:
    """A worker returns what `prepare` returns here, for many mails at once, in order."""
    raws = [mail(f"request {i}", subject=f"Subject {i}") for i in range(12)]
    with PreparePool(2, time_limit=30, start_method=method) as pool:
        results = pool.prepare_many(raws, CONFIG)
    expected = [prepare(raw, CONFIG) for raw in raws]
    assert [r.msg for r in results] == [e.msg for e in expected]
    assert [r.verdict for r in results] == [e.verdict for e in expected]
    assert all(r.seconds > 0 for r in results)


@METHODS
def test_a_runaway_mail_is_stopped_at_the_limit_and_the_next_one_goes_on(method: str) -> None:
    """A mail that spins with the GIL held is killed at the time limit; the pool goes on."""
    with PreparePool(1, time_limit=0.5, start_method=method,
                     function=runaway_on_marker) as pool:
        pool.prepare(mail("warm up"), CONFIG)  # the worker is up: time the mail alone
        started = time.monotonic()
        stopped = pool.prepare(mail("RUNAWAY"), CONFIG)
        elapsed = time.monotonic() - started
        after = pool.prepare(mail("an ordinary request"), CONFIG)
    assert stopped.problem == "processing took longer than 0.5 s and was stopped"
    assert stopped.msg is None
    assert 0.5 <= elapsed < 5.0
    assert after.problem is None
    assert after.msg is not None
    assert "ordinary request" in after.msg.text
    assert pool.timeouts == 1


def test_a_runaway_mail_does_not_freeze_this_process() -> None:
    """While a worker spins on one mail, this process's threads keep running (no GIL held)."""
    ticks = 0
    done = threading.Event()

    def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.01)

    thread = threading.Thread(target=ticker)
    with PreparePool(1, time_limit=1.0, start_method="fork",
                     function=runaway_on_marker) as pool:
        thread.start()
        pool.prepare(mail("RUNAWAY"), CONFIG)
        done.set()
    thread.join()
    # 1 s at 10 ms a tick: a held GIL would leave a handful at most.
    assert ticks > 40


@METHODS
def test_a_mail_that_kills_its_worker_twice_is_failed_not_fatal(method: str) -> None:
    """A worker dying under a mail: retried once in a fresh worker, then failed; the pool lives."""
    with PreparePool(1, time_limit=30, start_method=method, function=crash_on_marker) as pool:
        failed = pool.prepare(mail("CRASH"), CONFIG)
        after = pool.prepare(mail("fine"), CONFIG)
    assert failed.problem is not None
    assert "died twice" in failed.problem
    assert "SIGKILL" in failed.problem
    assert after.problem is None
    assert pool.lost == 2


def test_a_worker_that_dies_once_is_replaced_and_the_mail_prepared() -> None:
    """One crash (the OOM killer hitting a worker) costs a retry, not the mail."""
    # Short, so that the header carrying it is not encoded.
    flag = Path(tempfile.gettempdir()) / f"hd-{uuid.uuid4().hex[:10]}"
    try:
        with PreparePool(1, time_limit=30, start_method="fork",
                         function=crash_on_marker) as pool:
            result = pool.prepare(make_mail(extra={"X-Test": f"CRASH-ONCE:{flag}"}), CONFIG)
        assert flag.exists()
    finally:
        flag.unlink(missing_ok=True)
    assert result.problem is None
    assert pool.lost == 1


@METHODS
def test_close_stops_a_caller_waiting_on_a_runaway_at_once(method: str) -> None:
    """close() (SIGTERM in the daemon) ends the wait with PoolClosed, well before the limit."""
    pool = PreparePool(1, time_limit=60, start_method=method, function=runaway_on_marker)
    pool.prepare(mail("warm up"), CONFIG)
    errors: list[BaseException] = []

    def waiting() -> None:
        try:
            pool.prepare(mail("RUNAWAY"), CONFIG)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiting)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    pool.close()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2.0
    assert len(errors) == 1
    assert isinstance(errors[0], PoolClosed)
    with pytest.raises(PoolClosed):
        pool.prepare(mail(), CONFIG)


def test_workers_are_replaced_after_max_tasks() -> None:
    """A worker is retired after max_tasks mails (memory a huge mail fragmented goes back)."""
    with PreparePool(1, time_limit=30, start_method="fork", max_tasks=3) as pool:
        pids = set()
        for i in range(7):
            pool.prepare(mail(f"m{i}"), CONFIG)
            pids |= {w.process.pid for w in pool._all}
    assert len(pids) == 3


def test_large_attachments_come_back_without_their_bytes() -> None:
    """Issue 12 item 10: a worker sends a large attachment back detached, so its bytes are
    not pickled and piped; decoded again from the raw mail they are exactly prepare's."""
    blob = bytes(range(256)) * 1024
    raw = make_mail(attachment=("disk.bin", blob))
    with PreparePool(1, time_limit=30, start_method="fork") as pool:
        result = pool.prepare(raw, CONFIG)
    assert result.msg is not None
    (part,) = result.msg.attachments
    assert (part.detached, part.content, part.size) == (True, b"", len(blob))
    assert len(pickle.dumps(result)) < len(blob) // 10
    expected = prepare(raw, CONFIG).msg
    assert expected is not None
    assert attach(part, raw) == expected.attachments[0]


def test_the_workers_import_no_store_settings_templates_or_logging() -> None:
    """What the forkserver preloads (`helpdesk.intake.worker`, in every worker's memory) leaves
    out SQLAlchemy, pydantic, Jinja2, structlog, our store and the rule files: the pure stage
    needs none of them, and each is megabytes in each of the daemon's worker processes."""
    with PreparePool(1, time_limit=30, start_method="forkserver") as pool:
        pool.prepare(mail(), CONFIG)
    # The forkserver's preload list is kept by the multiprocessing module itself.
    assert multiprocessing.forkserver._forkserver._preload_modules == ["helpdesk.intake.worker"]
    probe = ("import json, sys\nimport helpdesk.intake.worker\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('sqlalchemy', 'pydantic', 'jinja2', 'alembic', 'structlog', 'rich') or "
             "m.startswith(('helpdesk.store', 'helpdesk.settings', 'helpdesk.flow', "
             "'helpdesk.desk', 'helpdesk.rules.schema', 'helpdesk.rules.files', "
             "'helpdesk.intake.pool')))))\n")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
