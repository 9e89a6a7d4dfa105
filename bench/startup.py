"""Start-up: how long a whole `helpdesk` process takes for the commands people and MTAs run.

Every figure is the median wall time of N runs (default 10) of a fresh
process, measured with `time.perf_counter` around `subprocess.run`:

1. `helpdesk --version`                               target 0.15 s
2. `helpdesk --help`                                  target 0.15 s
3. `helpdesk tickets list` on SQLite (20 tickets)     target 0.35 s
4. `helpdesk ingest < one.eml`, with the shipped      target 0.30 s
   config.example.toml, rules and templates (a new
   mail each run, so dedupe never short-cuts it)
5. the same as an MTA pipe runs it ($RECIPIENT set)   target 0.30 s
   while `helpdesk run` listens on `[lmtp] socket`:
   the mail is handed to the daemon, and the command
   exits after the daemon's commit. A side without
   the socket runs (4) again here: what it offers

Beside each figure it prints the same command run from another git ref's code
(default `main`) in the same run, so machine load affects both alike: the
ref's tree is exported with `git archive` into a temporary directory (git
state is not touched) and run with the same interpreter and installed
libraries, that tree first on PYTHONPATH. Both trees are byte-compiled first,
as an installed package is. Each side has its own SQLite
store, migrated by its own code. Runs alternate between the two sides.

The figures are information, never a pass/fail: the exit code is 0.

    .venv/bin/python bench/startup.py [--runs 10] [--baseline main|none]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python bench/startup.py`
    sys.path.insert(0, str(ROOT))

from bench import mailgen  # noqa: E402
from bench._common import byte_compile  # noqa: E402

_MESSAGE_ID = re.compile(rb"(?im)^message-id:\s*<")
TARGETS = {"--version": 0.15, "--help": 0.15, "tickets list": 0.35, "ingest < one.eml": 0.30,
           "ingest, daemon up": 0.30}
# The shipped config.example.toml's support address: the pipe's recipient.
RECIPIENT = "support@example.org"
SOCKET_WAIT_S = 30.0


@dataclass
class Side:
    """One code base under test: where its package is, and its own store and config."""

    name: str
    code: Path
    home: Path

    @property
    def config(self) -> Path:
        return self.home / "helpdesk.toml"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("HELPDESK_CONFIG", "HELPDESK_DATABASE_URL", "PYTHONPATH")}
        env["PYTHONPATH"] = str(self.code)
        env["HELPDESK_DATABASE_URL"] = f"sqlite:///{self.home / 'helpdesk.db'}"
        return env

    def command(self, *args: str) -> list[str]:
        # The same interpreter and libraries for both sides; only the package differs.
        return [sys.executable, "-c", "from helpdesk.cli import main; main()",
                "--config", str(self.config), *args]

    @property
    def hands_over(self) -> bool:
        """Whether this side's code has `[lmtp] socket` (and `ingest` hands mail over)."""
        return (self.code / "helpdesk" / "cli" / "handoff.py").is_file()

    def run(self, *args: str, stdin: bytes | None = None,
            extra_env: dict[str, str] | None = None) -> float:
        started = time.perf_counter()
        result = subprocess.run(self.command(*args), input=stdin, capture_output=True,
                                env={**self.env(), **(extra_env or {})}, cwd=self.home,
                                check=False)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{self.name}: helpdesk {' '.join(args)} failed "
                             f"({result.returncode}):\n{result.stderr.decode()[-2000:]}")
        return elapsed


def export_ref(ref: str, into: Path) -> Path | None:
    """The tree of git `ref` in `into` (read-only use of the repository), or None."""
    archive = into / "ref.tar"
    with archive.open("wb") as out:
        done = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref],
                              stdout=out, stderr=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        return None
    tree = into / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def prepare(side: Side, mails: list[bytes]) -> None:
    """The side's own shipped config, rules and templates; a migrated store with some tickets."""
    side.home.mkdir(parents=True)
    byte_compile(side.code)
    shutil.copy(side.code / "config.example.toml", side.config)
    shutil.copytree(side.code / "rules", side.home / "rules")
    shutil.copytree(side.code / "templates", side.home / "templates")
    side.run("db", "upgrade")
    paths = []
    for index, raw in enumerate(mails):
        path = side.home / f"seed-{index}.eml"
        path.write_bytes(raw)
        paths.append(str(path))
    side.run("ingest", *paths)


def measure(sides: list[Side], runs: int, fresh: dict[str, list[bytes]]) -> dict[tuple[str, str],
                                                                                   float]:
    commands: list[tuple[str, tuple[str, ...]]] = [
        ("--version", ("--version",)),
        ("--help", ("--help",)),
        ("tickets list", ("tickets", "list")),
        ("ingest < one.eml", ("ingest",)),
    ]
    times: dict[tuple[str, str], list[float]] = {}
    for label, args in commands:
        for side in sides:  # one warm-up each: the first run pays for cold file caches
            side.run(*args, stdin=fresh[side.name].pop() if label.startswith("ingest") else None)
        for _ in range(runs):
            for side in sides:  # alternate, so a burst of load hits both sides
                stdin = fresh[side.name].pop() if label.startswith("ingest") else None
                times.setdefault((label, side.name), []).append(side.run(*args, stdin=stdin))
    for side in sides:
        times[("ingest, daemon up", side.name)] = piped(side, runs, fresh[side.name])
    return {key: statistics.median(values) for key, values in times.items()}


def piped(side: Side, runs: int, fresh: list[bytes]) -> list[float]:
    """`ingest` as an MTA pipe runs it, with the side's daemon listening on its socket."""
    pipe_env = {"RECIPIENT": RECIPIENT}
    if not side.hands_over:
        return [side.run("ingest", stdin=fresh.pop(), extra_env=pipe_env) for _ in range(runs)]
    socket = side.home / "run" / "lmtp.sock"
    with side.config.open("a") as config:
        config.write(f'\n[lmtp]\nsocket = "{socket}"\n')
    daemon = subprocess.Popen(side.command("run"), env=side.env(), cwd=side.home,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SOCKET_WAIT_S
        while not socket.exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"{side.name}: the daemon did not open {socket}")
            time.sleep(0.1)
        side.run("ingest", stdin=fresh.pop(), extra_env=pipe_env)  # warm-up: workers start
        return [side.run("ingest", stdin=fresh.pop(), extra_env=pipe_env) for _ in range(runs)]
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--baseline", default="main", help="git ref to compare with, or none")
    args = parser.parse_args()
    generated = mailgen.generate(20 + 2 * args.runs + 2, seed=7)
    seed, rest = generated[:20], generated[20:]
    with tempfile.TemporaryDirectory(prefix="helpdesk-startup-") as tmp:
        work = Path(tmp)
        sides = [Side("this tree", ROOT, work / "this")]
        if args.baseline != "none":
            tree = export_ref(args.baseline, work)
            if tree is None:
                print(f"(no baseline: git ref {args.baseline!r} could not be exported)")
            else:
                sides.append(Side(args.baseline, tree, work / "baseline"))
        fresh = {}
        for index, side in enumerate(sides):
            prepare(side, seed)
            # Each side gets its own new mails: distinct Message-IDs, never a duplicate.
            fresh[side.name] = [_MESSAGE_ID.sub(rb"\g<0>s%d-" % index, raw, count=1)
                                for raw in rest]
        medians = measure(sides, args.runs, fresh)
    print(f"whole-process start-up, median of {args.runs} runs "
          f"(load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores)")
    header = f"{'command':<20} {'this tree':>10} {'target':>8}"
    if len(sides) > 1:
        header += f" {sides[1].name:>10} {'ratio':>6}"
    print(header)
    for label, target in TARGETS.items():
        mine = medians[(label, "this tree")]
        line = f"{label:<20} {mine:>9.3f}s {target:>7.2f}s"
        line += "  ok  " if mine <= target else "  MISS"
        if len(sides) > 1:
            theirs = medians[(label, sides[1].name)]
            line += f" {theirs:>9.3f}s {theirs / mine:>5.1f}x"
        print(line)


if __name__ == "__main__":
    main()
