"""`helpdesk ingest` as users run it: the CLI's context, in one process and as a whole process.

The mail: `--messages` realistic mails (bench/mailgen.py, seeded: a third
replies, a tenth with attachments, some HTML-only) written once into a
Maildir (`new/`), which every run imports with `helpdesk ingest --maildir`.
Each run gets a fresh store (SQLite on disk under /tmp; `--postgres` adds a
throwaway PostgreSQL cluster on disk with fsync on) migrated by the side's own
code, and a configuration with the side's own shipped `rules/` and
`templates/` and the demo's teams, or an empty rules directory ("no rules":
the CLI still loads the empty rule set, as it does for a desk without rules).

1. **In-process** (bench/_inproc.py, under the side's own interpreter): a
   parse-only pass over the same mail (`helpdesk.mail.parse.parse`), then the
   `helpdesk` Click group's own `main()` with `ingest --maildir D --json` in
   that process, after an untimed warm-up invocation on an empty Maildir (it
   imports what the command imports lazily and mirrors the teams). What is
   timed is everything the command does but the interpreter's start-up and
   imports: settings, schema check, rules and templates, the ingest context,
   reading the files, parsing (the new code's forked workers included) and
   storing. The same command on an empty Maildir, timed after the warm-up,
   is its set-up; the rate without it is printed too.
2. **Whole process**: `helpdesk --config C ingest --maildir D --json`, wall
   time from spawn to exit, with the peak memory of its process tree (sum of
   VmRSS, and of Pss: shared pages counted once) sampled every 50 ms.

Runs alternate between the sides (`--baseline DIR`: the old code, its own
venv, rules and templates); `--repeat N` runs everything N times and keeps
each figure's best (shortest) time, what the code does when the machine's
other load leaves it alone. Targets (issue 13 item 2): in-process, no rules,
SQLite at least 1,000 msg/s and at least 0.6 of the parse-only pass of the
same run; the CLI of 2,000 files at least 800 msg/s (printed against both
rule sets). The exit code does not depend on them. `--profile` prints a
cProfile of this checkout's in-process runs on SQLite (no rules, shipped
rules) after the table: the main process only (the parsing workers are
others).

    .venv/bin/python bench/ingest.py [--messages 2000] [--baseline /work/wt/before]
        [--postgres] [--repeat 1] [--seed 1] [--quick] [--profile] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/ingest.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    ROOT,
    Row,
    Side,
    Watch,
    clean_env,
    generate,
    header,
    load_average,
    print_table,
    row,
    sides,
    write_config,
)
from bench._servers import Stores

TARGET_INPROC = 1000.0  # msg/s, in-process, no rules, SQLite
TARGET_INPROC_RATIO = 0.6  # of the parse-only pass in the same run
TARGET_CLI = 800.0  # msg/s, `helpdesk ingest` of 2,000 files
TARGET_RSS_MB = 200.0
RULE_SETS = (("no rules", False), ("shipped rules", True))


@dataclass
class Run:
    """One side, one rule set, one store: the in-process and the whole-process figures."""

    messages: int
    parse_seconds: float = 0.0
    inproc_seconds: float = 0.0
    setup_seconds: float = 0.0  # the same command in-process on an empty Maildir
    cli_seconds: float = 0.0
    path: str = ""
    all_counts: list[dict[str, Any]] = field(default_factory=list)  # every run's JSON counts
    repeats: int = 0
    peak_mb: float = 0.0
    pss_mb: float = 0.0
    profile: str = ""

    @property
    def parse_rate(self) -> float:
        return self.messages / self.parse_seconds

    @property
    def inproc_rate(self) -> float:
        return self.messages / self.inproc_seconds

    @property
    def steady_rate(self) -> float:
        """In-process, the command's set-up (timed on an empty Maildir) left out."""
        return self.messages / max(1e-9, self.inproc_seconds - self.setup_seconds)

    @property
    def cli_rate(self) -> float:
        return self.messages / self.cli_seconds

    def keep_inproc(self, got: dict[str, Any]) -> None:
        """One in-process run's figures, each kept when it is the best so far."""
        self.parse_seconds = _best(self.parse_seconds, got["parse_seconds"])
        self.inproc_seconds = _best(self.inproc_seconds, got["cli_seconds"])
        self.setup_seconds = _best(self.setup_seconds, got["setup_seconds"])
        self.path = got["path"]
        self.all_counts.append(got["counts"])
        self.repeats += 1

    def keep_cli(self, seconds: float, counts: dict[str, Any], peak: float, pss: float) -> None:
        self.cli_seconds = _best(self.cli_seconds, seconds)
        self.all_counts.append(counts)
        self.peak_mb, self.pss_mb = max(self.peak_mb, peak), max(self.pss_mb, pss)

    def describe(self) -> str:
        counts = self.all_counts[-1] if self.all_counts else {}
        text = ", ".join(f"{k} {v}" for k, v in counts.items())
        return (f"parse only {self.parse_rate:5.0f} msg/s; in-process {self.inproc_rate:5.0f} "
                f"msg/s ({self.inproc_seconds:.2f} s, of which set-up (timed on an empty "
                f"Maildir) {self.setup_seconds:.2f} s); whole process {self.cli_rate:5.0f} msg/s "
                f"({self.cli_seconds:.2f} s), peak memory: sum of VmRSS {self.peak_mb:.0f} MB, "
                f"of Pss {self.pss_mb:.0f} MB; {text}\n           path: {self.path}"
                + (f"; best of {self.repeats} runs each" if self.repeats > 1 else ""))


def write_maildir(root: Path, raws: Sequence[bytes]) -> Path:
    """A Maildir with every mail in new/, as a delivery agent leaves it."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for i, raw in enumerate(raws):
        (root / "new" / f"{1_700_000_000 + i}.M{i}P1.bench").write_bytes(raw)
    return root


def in_process(side: Side, config: Path, maildir: Path, empty: Path,
               profile: bool = False) -> dict[str, Any]:
    """bench/_inproc.py under the side's interpreter; its JSON."""
    command = [side.python, str(ROOT / "bench" / "_inproc.py"), "--config", str(config),
               "--maildir", str(maildir), "--empty", str(empty)]
    done = subprocess.run(command + (["--profile"] if profile else []), capture_output=True,
                          text=True, env=clean_env(), cwd=config.parent, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side.label}: in-process run failed:\n{done.stdout}{done.stderr}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def whole_process(side: Side, config: Path, maildir: Path) -> tuple[float, dict[str, Any],
                                                                      float, float]:
    """`helpdesk ingest --maildir` as a process: seconds, its JSON, peak VmRSS and Pss (MB)."""
    command = side.cli(config, "ingest", "--maildir", str(maildir), "--json")
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(), cwd=config.parent)
    with Watch({"cli": [proc.pid]}, pss=["cli"]) as watch:
        out, err = proc.communicate()
        seconds = time.perf_counter() - started
        usage = watch.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{side.label}: helpdesk ingest exited {proc.returncode}:\n{out}{err}")
    return seconds, json.loads(out), usage.peak_mb("cli"), usage.pss_mb("cli")


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, sides_: list[Side]) -> None:
        self.args = args
        self.workdir = workdir
        self.sides = sides_
        self.stores = Stores(workdir)
        self.maildir = write_maildir(workdir / "maildir", generate(args.messages, args.seed))
        self.empty = write_maildir(workdir / "empty", [])
        self.count = 0

    def _config(self, side: Side, store: str, rules: bool) -> Path:
        self.count += 1
        home = self.workdir / f"run{self.count}-{side.label}"
        url = self.stores.fresh(side, store, home)
        return write_config(home / "helpdesk.toml", side, db_url=url, rules=rules)

    def runs(self, store: str) -> dict[tuple[str, bool], Run]:
        """Every side with each rule set on `store`, the sides alternating; with `--repeat`,
        each figure is the best (shortest time) of its repeats."""
        found: dict[tuple[str, bool], Run] = {}
        for attempt in range(self.args.repeat):
            for name, rules in RULE_SETS:
                for side in self.sides:
                    got = in_process(side, self._config(side, store, rules), self.maildir,
                                     self.empty)
                    measured = found.setdefault((side.label, rules), Run(self.args.messages))
                    measured.keep_inproc(got)
                for side in self.sides:
                    measured = found[(side.label, rules)]
                    measured.keep_cli(*whole_process(side, self._config(side, store, rules),
                                                     self.maildir))
                    if attempt == self.args.repeat - 1:
                        print(f"{side.label:7} {store}, {name}: {measured.describe()}")
        return found

    def profile(self) -> str:
        """cProfile of this checkout's in-process runs on SQLite, with each rule set."""
        side, text = self.sides[0], []
        for name, rules in RULE_SETS:
            got = in_process(side, self._config(side, "sqlite", rules), self.maildir,
                             self.empty, profile=True)
            text.append(f"cProfile of the in-process run (now, {name}, SQLite; main process "
                        f"only, rates under the profiler are lower):\n{got['profile']}")
        return "\n".join(text)


def figure_rows(store: str, n: int, found: dict[tuple[str, bool], Run],
                rows: list[Row]) -> None:
    def both(rules: bool, of: Callable[[Run], float]) -> tuple[float | None, float | None]:
        now, before = found.get(("now", rules)), found.get(("before", rules))
        return (of(now) if now else None), (of(before) if before else None)

    sqlite = store == "sqlite"
    rows.append(row(f"{store}: parse only, one process, in the no-rules run (msg/s)",
                    *both(False, lambda r: r.parse_rate)))
    rows.append(row(f"    in-process `ingest --maildir` {n}, no rules (msg/s)",
                    *both(False, lambda r: r.inproc_rate),
                    at_least=TARGET_INPROC if sqlite else None))
    rows.append(row("    ... / parse only in the same process",
                    *both(False, lambda r: r.inproc_rate / r.parse_rate),
                    at_least=TARGET_INPROC_RATIO if sqlite else None, digits=2))
    rows.append(row("    ... the command's set-up left out (msg/s)",
                    *both(False, lambda r: r.steady_rate),
                    at_least=TARGET_INPROC if sqlite else None))
    rows.append(row("    ... the command's set-up left out / parse only",
                    *both(False, lambda r: r.steady_rate / r.parse_rate),
                    at_least=TARGET_INPROC_RATIO if sqlite else None, digits=2))
    rows.append(row("    the command's set-up, in-process, no mail (s)",
                    *both(False, lambda r: r.setup_seconds), digits=2))
    rows.append(row(f"    in-process `ingest --maildir` {n}, shipped rules (msg/s)",
                    *both(True, lambda r: r.inproc_rate)))
    rows.append(row("    ... shipped rules / no rules",
                    *(a / b if a and b else None for a, b in zip(
                        both(True, lambda r: r.inproc_rate), both(False, lambda r: r.inproc_rate),
                        strict=True)), digits=2))
    for name, rules in RULE_SETS:
        rows.append(row(f"    whole process `helpdesk ingest --maildir` {n}, {name} (msg/s)",
                        *both(rules, lambda r: r.cli_rate),
                        at_least=TARGET_CLI if sqlite and n >= 2000 else None))
    rows.append(row("    whole process - in-process, shipped rules: start-up, imports (s)",
                    *both(True, lambda r: r.cli_seconds - r.inproc_seconds), digits=2))
    rows.append(row("    peak memory, whole process tree, shipped rules: sum of VmRSS (MB)",
                    *both(True, lambda r: r.peak_mb), below=TARGET_RSS_MB))
    rows.append(row("    ... sum of Pss, shared pages counted once (MB)",
                    *both(True, lambda r: r.pss_mb), below=TARGET_RSS_MB))
    rows.append(row("    runs whose counts differ from this side's first run",
                    *(_odd(found, label) for label in ("now", "before")), zero=True))


def _best(kept: float, new: float) -> float:
    return new if not kept else min(kept, new)


def _odd(found: dict[tuple[str, bool], Run], label: str) -> int | None:
    """Runs (in-process or whole) of one side whose new/reply/duplicate counts differ."""
    counts = [json.dumps(c, sort_keys=True) for (side, _r), r in found.items()
              if side == label for c in r.all_counts]
    return sum(1 for c in counts if c != counts[0]) if counts else None


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--baseline", help="checkout of the old code with its own .venv")
    parser.add_argument("--messages", type=int, default=2000, help="mails in the Maildir (2000)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL too")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each measurement; the best is printed (1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="200 mails, a smoke test")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile this checkout's in-process runs (SQLite)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = 200
    if args.messages < 1 or args.repeat < 1:
        parser.error("--messages and --repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    sides_ = sides(args.baseline)
    stores = ["sqlite", "postgres"] if args.postgres else ["sqlite"]
    header("bench/ingest.py: `helpdesk ingest --maildir`, the CLI's context", sides_,
           [f"{args.messages} mails (bench/mailgen.py, seed {args.seed}); stores: "
            f"{', '.join(stores)}; SQLite on /tmp ({_filesystem('/tmp')})",
            f"{os.cpu_count()} cores, shared with whatever else runs on the machine: figures "
            "move with its load (printed at the start and the end)"])
    workdir = Path(tempfile.mkdtemp(prefix="helpdesk-bench-ingest-", dir="/tmp"))
    bench = Bench(args, workdir, sides_)
    rows: list[Row] = []
    profile = ""
    try:
        for store in stores:
            if store == "postgres":
                try:
                    print(f"postgres: {bench.stores.postgres().note}")
                except RuntimeError as exc:
                    print(f"postgres: n/a ({exc})")
                    continue
            figure_rows(store, args.messages, bench.runs(store), rows)
        if args.profile:
            profile = bench.profile()
    finally:
        bench.stores.close()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(f"bench/ingest.py (load average at the end {load_average()})", rows)
    if profile:
        print()
        print(profile)
    return 0


def _filesystem(path: str) -> str:
    """The file-system type holding `path`, from /proc/mounts."""
    target, best, kind = str(Path(path).resolve()), "", "unknown"
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return kind
    for mount, fstype in mounts:
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                best):
            best, kind = mount, fstype
    return f"{kind} on {best}"


if __name__ == "__main__":
    sys.exit(main())
