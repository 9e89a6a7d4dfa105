"""Smoke test of the benchmarks users and issues quote: they run and print every figure line.

`bench/ingest.py --quick` and `bench/daemon.py --quick` as whole processes
(a throwaway Dovecot, an aiosmtpd relay and a PostgreSQL cluster of their
own). It checks that each figure's row is in the final table with a number
in its "now" column, never what the number is: speed is printed by the
benches, not asserted (team guide).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import dovecot, missing_server, postgres

ROOT = Path(__file__).resolve().parent.parent

INGEST_ROWS = (
    "sqlite: parse only, one process, in the no-rules run (msg/s)",
    "in-process `ingest --maildir` 200, no rules (msg/s)",
    "... / parse only in the same process",
    "... the command's set-up left out (msg/s)",
    "in-process `ingest --maildir` 200, shipped rules (msg/s)",
    "whole process `helpdesk ingest --maildir` 200, no rules (msg/s)",
    "whole process `helpdesk ingest --maildir` 200, shipped rules (msg/s)",
    "peak memory, whole process tree, shipped rules: sum of VmRSS (MB)",
    "runs whose counts differ from this side's first run",
)
DAEMON_ROWS = (
    "(a) IMAP backlog 30, shipped rules, sqlite: to the last commit (msg/s)",
    "IMAP backlog 30, no rules (msg/s)",
    "shipped rules / no rules",
    "shipped rules, to the relay's last acknowledgement (msg/s)",
    "first mail after start: arrival -> commit (ms)",
    "(b) 3 arrivals one by one: arrival -> commit p50 (ms)",
    "arrival -> ack accepted by the relay p95 (ms)",
    "(c) tickets reply -> relay accepted it, median (s)",
    "arrivals and replies lost (not seen in 30 s)",
    "(d) peak memory, daemon tree, backlog 30: sum of VmRSS (MB)",
    "(d) peak memory, daemon tree, backlog 60: sum of VmRSS (MB)",
    "flat: peak VmRSS at 60 / at 30",
    "(e) PostgreSQL backlog 20, 1 daemon, 1 mailbox, 1 worker (msg/s)",
    "the same, relay unreachable (sender idle) (msg/s)",
    "sending / sender idle",
    "1 daemon, 2 workers / 1 worker",
    "2 daemons / 1, one mailbox",
    "2 daemons / 1, two mailboxes",
    "backlog mails lost or stored twice",
    "outbox rows not accepted by the relay, or accepted twice",
    "processes still there 3 s after their daemon exited",
)
# A table row: its label, two or more spaces, the target ("-", ">= 1,000", "< 200", "= 0"),
# the verdict, then the "now" column.
_ROW = r"{label}\s{{2,}}(?:-|[<>=]{{1,2}} [\d,.]+(?: \w+)?)\s+(?:PASS|MISS|-)\s+(?P<now>\S+)"


def _run(script: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert done.returncode == 0, f"{script} --quick failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _missing_rows(output: str, labels: tuple[str, ...]) -> list[str]:
    """Labels without a table row whose "now" column holds a number."""
    table = output[output.rindex("\nfigure "):]
    missing = []
    for label in labels:
        found = re.search(_ROW.format(label=re.escape(label)), table)
        if found is None or not re.fullmatch(r"-?[\d,]+(\.\d+)?", found.group("now")):
            missing.append(label)
    return missing


@pytest.mark.slow
@pytest.mark.postgres
def test_quick_benches_print_every_figure() -> None:
    if not dovecot.available():
        missing_server("dovecot not installed")
    if postgres.find_bindir() is None:
        missing_server("PostgreSQL not installed")
    ingest = _run("ingest.py")
    assert _missing_rows(ingest, INGEST_ROWS) == [], ingest
    daemon = _run("daemon.py")
    assert _missing_rows(daemon, DAEMON_ROWS) == [], daemon


def test_compose_bench_prints_every_figure() -> None:
    """`bench/compose.py`, a few loops: each line with its microseconds and the old path's."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "compose.py"), "--loops", "20",
                           "--rounds", "1"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    for label in ("compose, ASCII acknowledgement", "compose, German, long subject, emoji",
                  "render + compose + Message-ID", "compose, 2 attachments (170 KB)"):
        assert re.search(rf"^{re.escape(label)} +\d+ us/mail", done.stdout, re.M), done.stdout
    assert len(re.findall(r"faster than (the old path|set_content) \( *\d+ us\)",
                          done.stdout)) == 3, done.stdout
