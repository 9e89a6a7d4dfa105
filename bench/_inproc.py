"""In-process intake throughput; bench/ingest.py runs it under each side's own interpreter.

Self-contained on purpose: it imports the standard library and the `helpdesk`
package of the interpreter that runs it, never this checkout's bench/, so the
old code is measured with the old code. It prints one JSON object.

Both passes read the same mail files into memory first (untimed):

1. parse only: `helpdesk.mail.parse.parse(raw)` over every mail, one process;
2. intake, without rules, built the way the CLI builds it (settings from the
   given file, whose rules directory is empty; teams mirrored; the ingest
   context of `helpdesk.context.ingest_context` with the loaded, empty rule
   set): with `helpdesk.intake`, as `helpdesk/cli/ingest.py` does it — a fork
   `PreparePool` of `[intake] workers` (0: one per core) and
   `store_in_batches(..., batch_max=[intake] batch_max)`; without it (the old
   code), as its CLI did: one transaction per mail around `ingest()`.

    python bench/_inproc.py --config helpdesk.toml --files DIR [--count N]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def _context(config: Path) -> tuple[Any, Any, Any]:
    from helpdesk import context, directory
    from helpdesk.settings import load_settings
    from helpdesk.store.db import make_engine, make_session_factory

    settings = load_settings(config, {})
    sessions = make_session_factory(make_engine(settings.database.url))
    with sessions.begin() as session:
        directory.sync(session, settings.teams, settings.agents)
    with sessions.begin() as session:
        configured = context.load_configured(session, settings)
        ctx = context.ingest_context(session, settings, configured)
    return settings, sessions, ctx


def _intake(raws: list[bytes], settings: Any, sessions: Any, ctx: Any) -> tuple[str, Counter[str]]:
    from helpdesk.intake import PreparePool, store_in_batches
    from helpdesk.values import Incoming, Origin

    intake = settings.intake
    workers = max(1, min(intake.workers or os.cpu_count() or 1, len(raws)))
    incoming = [Incoming(raw, Origin(source="file", path=f"{i}.eml")) for i, raw in
                enumerate(raws)]
    kinds: Counter[str] = Counter()
    with PreparePool(workers, time_limit=intake.message_time_limit,
                     start_method="fork").start_all() as pool:
        for _batch, outcomes in store_in_batches(sessions, ctx, incoming, pool,
                                                 batch_max=intake.batch_max):
            kinds.update(outcome.kind.value for outcome in outcomes)
    path = (f"store_in_batches, fork PreparePool of {workers} workers, "
            f"batch_max {intake.batch_max}")
    return path, kinds


def _one_by_one(raws: list[bytes], sessions: Any, ctx: Any) -> tuple[str, Counter[str]]:
    from helpdesk.ingest import ingest
    from helpdesk.values import Origin

    kinds: Counter[str] = Counter()
    for i, raw in enumerate(raws):
        with sessions.begin() as session:
            outcome = ingest(session, raw, Origin(source="file", path=f"{i}.eml"), ctx)
        kinds[outcome.kind.value] += 1
    return "ingest() one transaction per mail (no helpdesk.intake)", kinds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--files", type=Path, required=True)
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()

    import helpdesk
    from helpdesk.logs import configure_logging
    from helpdesk.mail.parse import parse

    configure_logging("json", logging.WARNING, sys.stderr)  # as the CLI: warnings only
    paths = sorted(args.files.glob("*.eml"))
    raws = [p.read_bytes() for p in (paths[:args.count] if args.count else paths)]

    gc.collect()
    started = time.perf_counter()
    for raw in raws:
        parse(raw)
    parse_seconds = time.perf_counter() - started

    settings, sessions, ctx = _context(args.config)
    gc.collect()
    started = time.perf_counter()
    try:
        import helpdesk.intake
    except ImportError:
        path, kinds = _one_by_one(raws, sessions, ctx)
    else:
        path, kinds = _intake(raws, settings, sessions, ctx)
    intake_seconds = time.perf_counter() - started
    print(json.dumps({
        "package": str(Path(helpdesk.__file__).parent),
        "messages": len(raws),
        "parse_seconds": parse_seconds,
        "intake_seconds": intake_seconds,
        "path": path,
        "outcomes": dict(kinds),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
