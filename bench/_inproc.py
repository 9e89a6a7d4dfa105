"""`helpdesk ingest --maildir` in one process, timed; bench/ingest.py runs it under each side.

Self-contained on purpose: it imports the standard library and the `helpdesk`
package of the interpreter that runs it, never this checkout's bench/, so the
old code is measured with the old code. It prints one JSON object on stdout.

1. parse only: `helpdesk.mail.parse.parse(raw)` over every mail of the
   Maildir, read into memory first (untimed), one process;
2. the CLI in this process: the `helpdesk` Click group's own `main()` with
   `--config C ingest --maildir D --json`, the very code the console script
   runs, minus the interpreter's start-up and the imports (both measured by
   bench/ingest.py's whole-process figure). Before it, untimed, the same
   command on an empty Maildir: it imports what the command imports lazily
   and mirrors the teams into the store, as any earlier command would have;
   then once more, timed: the command's set-up without mail. The timed
   invocation builds its context as the CLI does (settings, schema check,
   the rules and templates of the configuration's directories, the ingest
   context), then ingests: with the new code through its forked parsing
   workers and group commits, with the old one a transaction a mail.

    python bench/_inproc.py --config helpdesk.toml --maildir DIR --empty DIR [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import importlib.util
import io
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any

PROFILE_LINES = 30


def _cli(config: Path, maildir: Path) -> dict[str, Any]:
    """`helpdesk --config C ingest --maildir D --json` in this process; its JSON counts."""
    from helpdesk.cli import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["--config", str(config), "ingest", "--maildir", str(maildir), "--json"],
                 prog_name="helpdesk", standalone_mode=False)
    found: dict[str, Any] = json.loads(out.getvalue())
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--empty", type=Path, required=True, help="an empty Maildir")
    parser.add_argument("--profile", action="store_true", help="cProfile the timed run")
    args = parser.parse_args()

    import helpdesk
    from helpdesk.mail.parse import parse

    paths = sorted(p for sub in ("cur", "new") for p in (args.maildir / sub).iterdir())
    raws = [p.read_bytes() for p in paths]
    gc.collect()
    started = time.perf_counter()
    for raw in raws:
        parse(raw)
    parse_seconds = time.perf_counter() - started
    del raws

    _cli(args.config, args.empty)
    warm = time.perf_counter()
    _cli(args.config, args.empty)
    setup_seconds = time.perf_counter() - warm
    profiler = cProfile.Profile() if args.profile else None
    gc.collect()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    counts = _cli(args.config, args.maildir)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - started
    if importlib.util.find_spec("helpdesk.intake") is None:
        path = "one transaction per mail around ingest() (no helpdesk.intake)"
    else:
        path = "forked parsing workers ([intake] workers) and group commits ([intake] batch_max)"
    profile = ""
    if profiler is not None:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        text.write("helpdesk's own functions by cumulative time:\n")
        stats.sort_stats("cumulative").print_stats(r"/helpdesk/", PROFILE_LINES)
        text.write("every function by its own time:\n")
        stats.sort_stats("tottime").print_stats(PROFILE_LINES)
        profile = text.getvalue()
    print(json.dumps({
        "package": str(Path(helpdesk.__file__).parent),
        "messages": len(paths),
        "parse_seconds": parse_seconds,
        "cli_seconds": seconds,
        "setup_seconds": setup_seconds,
        "path": path,
        "counts": counts,
        "profile": profile,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
