"""Run `helpdesk ingest --json FILE...` in this process and report what it cost, as JSON.

Used by test_hostile_mail.py in a child process, so that its peak RSS is the
ingest's own (not pytest's), a runaway input can be killed at the time bound,
and an address-space limit keeps a memory blow-up from hurting the machine.
The limits are inherited by ingest's parse workers, whose CPU time and peak
RSS are counted in too.

    python -m tests.hostile.runner CONFIG FILE...
"""

from __future__ import annotations

import json
import resource
import sys
import time

from click.testing import CliRunner


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_rss_kb() -> int:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries that over
    exec from the process that forked us (pytest, with every shape built)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv: list[str]) -> None:
    # Imported before the baseline (the CLI imports lazily): imports are not the mail's.
    import alembic.command  # noqa: F401 - the schema check
    import sqlalchemy.dialects.sqlite  # noqa: F401

    import helpdesk.cli.ingest
    import helpdesk.context
    import helpdesk.flow.ingest
    import helpdesk.intake
    import helpdesk.mail.prepare
    import helpdesk.templates  # noqa: F401
    from helpdesk.cli import cli

    config, *files = argv
    baseline_kb = _peak_rss_kb()
    cpu, wall = _cpu(), time.perf_counter()
    result = CliRunner().invoke(cli, ["--config", config, "ingest", "--json", *files],
                                env={"HELPDESK_DATABASE_URL": None})
    # ingest parses in worker processes (helpdesk.intake), forked from this one:
    # closing the pool reaps them, so their CPU time and peak RSS count here.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = {
        "exit_code": result.exit_code,
        "output": result.output,
        "error": repr(result.exception) if result.exception else None,
        "cpu_s": _cpu() - cpu,
        "wall_s": time.perf_counter() - wall,
        "baseline_kb": baseline_kb,
        "peak_kb": max(_peak_rss_kb(), children.ru_maxrss),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
