"""Run `helpdesk ingest --json FILE...` in this process and report what it cost, as JSON.

Used by test_hostile_mail.py in a child process, so that its peak RSS is the
ingest's own (not pytest's), a runaway input can be killed at the time bound,
and an address-space limit keeps a memory blow-up from hurting the machine.

    python -m tests.hostile.runner CONFIG FILE...
"""

from __future__ import annotations

import json
import resource
import sys
import time

from click.testing import CliRunner


def main(argv: list[str]) -> None:
    from helpdesk.cli import cli  # imported before the baseline: its import is not the mail's

    config, *files = argv
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu, wall = time.process_time(), time.perf_counter()
    result = CliRunner().invoke(cli, ["--config", config, "ingest", "--json", *files],
                                env={"HELPDESK_DATABASE_URL": None})
    report = {
        "exit_code": result.exit_code,
        "output": result.output,
        "error": repr(result.exception) if result.exception else None,
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
        "baseline_kb": baseline_kb,
        "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
