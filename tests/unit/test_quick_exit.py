"""`helpdesk.cli.quick_exit.leave`: the exit of `sys.exit`, without the module teardown.

Each case runs in a fresh interpreter, since leaving ends the process.
"""

from __future__ import annotations

import atexit
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpdesk.cli import quick_exit

ROOT = Path(__file__).resolve().parents[2]

# An object whose finaliser runs only in the interpreter's teardown of modules,
# an `atexit` handler, many small writes still in stdout's buffer, and a thread
# that is still working (non-daemon) or not (daemon) when `leave` is called.
SCRIPT = """
import atexit, sys, threading, time
from helpdesk.cli.quick_exit import leave

class Teardown:
    def __del__(self):
        sys.stderr.write("torn down\\n")

kept = Teardown()
atexit.register(lambda: sys.stderr.write("atexit ran\\n"))
for line in range(5000):
    print(line)

def work():
    time.sleep(0.3)
    sys.stderr.write("thread done\\n")
    sys.stderr.flush()

if sys.argv[2] != "none":
    threading.Thread(target=work, daemon=sys.argv[2] == "daemon").start()
code = sys.argv[1]
leave(int(code) if code.lstrip("-").isdigit() else None if code == "None" else code)
"""


def run(code: str, thread: str = "none") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, code, thread], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                      "PYTHONPATH": str(ROOT)})


def test_the_exit_status_output_and_atexit_handlers_are_those_of_sys_exit() -> None:
    for code, status in (("0", 0), ("1", 1), ("2", 2), ("75", 75), ("None", 0)):
        done = run(code)
        assert done.returncode == status, done.stderr
        assert done.stdout.splitlines() == [str(n) for n in range(5000)]
        assert "atexit ran" in done.stderr


def test_the_modules_are_not_torn_down() -> None:
    """The point of it: the interpreter's teardown (the `__del__` above) never runs."""
    done = run("0")
    assert done.returncode == 0
    assert "torn down" not in done.stderr


def test_a_running_thread_is_waited_for_as_by_sys_exit() -> None:
    done = run("3", thread="worker")
    assert done.returncode == 3
    assert "thread done" in done.stderr
    assert "atexit ran" in done.stderr
    # A daemon thread is not waited for by the interpreter either: the quick exit holds.
    daemon = run("0", thread="daemon")
    assert daemon.returncode == 0
    assert "thread done" not in daemon.stderr
    assert "torn down" not in daemon.stderr


def test_a_message_instead_of_a_status_exits_1_with_the_message() -> None:
    done = run("bye")
    assert done.returncode == 1
    assert "bye" in done.stderr
    assert "atexit ran" in done.stderr


def test_output_that_cannot_be_flushed_is_left_to_the_ordinary_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A closed pipe: the interpreter's own exit reports it, as it always has."""

    class ClosedPipe(io.StringIO):
        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    ran: list[bool] = []
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: ran.append(True))
    monkeypatch.setattr(os, "_exit", lambda status: pytest.fail("os._exit was called"))
    with pytest.raises(SystemExit) as leaving:
        quick_exit.leave(4)
    assert leaving.value.code == 4
    assert ran == [True]
