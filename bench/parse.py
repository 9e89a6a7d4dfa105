"""Parse speed and memory: `helpdesk.mail.parse.parse` beside its baselines, in one run.

Speed (issue 13 item 4, target 2,000 msg/s): the same generated help-desk
mails (bench/mailgen.py, seeded) go through, in interleaved rounds so that a
busy machine slows every candidate alike:

* `stdlib`: `email.message_from_bytes(raw, policy=compat32)` alone, the
  parser the project used before, with no walk, decoding or text work;
* `before`: the project's parse() as it was before it got its own MIME
  reader, loaded from git (the parent of the commit that removed
  helpdesk/mail/parse.py; `--before REV` to choose), when git is there;
* `now`: today's parse().

Each candidate's best round is printed as msg/s, by the wall clock and per
CPU second of the process (on a machine shared with other work the second is
what an idle core would do), with its ratios to the baselines and the target
as PASS/MISS information (the exit code does not depend on it).

Memory (issue 12 item 10 and issue 13 item 7, `--memory`): one mail of about
34 MB carrying a 25 MB attachment, parsed in a fresh subprocess per
candidate; the peak RSS above the process baseline (interpreter and imports,
before the mail is read) is printed beside the target of three times the
message size. The attachment's bytes must reach the result (its sha256 is
checked), as ingest stores them.

Run from the repository root:

    .venv/bin/python bench/parse.py [--messages 2000] [--rounds 5] [--seed 1]
                                    [--memory] [--attachment-mb 25] [--before REV]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from email import message_from_bytes
from email.policy import compat32
from pathlib import Path
from types import ModuleType

if __package__ in (None, ""):  # run as `python bench/parse.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import mailgen
from helpdesk.mail.parse import parse

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATE = 2000.0  # messages per second
TARGET_MEMORY_FACTOR = 3.0  # peak RSS above baseline, in message sizes
OLD_PATH = "helpdesk/mail/parse.py"

Parser = Callable[[bytes], object]


# -- baselines ----------------------------------------------------------------------------


def stdlib_parse(raw: bytes) -> object:
    """The standard library's compat32 parser alone."""
    return message_from_bytes(raw, policy=compat32)


def before_revision(chosen: str | None) -> str | None:
    """The revision whose helpdesk/mail/parse.py is "before", or None without git."""
    if chosen:
        return chosen
    try:
        removed = subprocess.run(
            ["git", "rev-list", "-1", "HEAD", "--", OLD_PATH],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{removed}^" if removed else None


def load_before(revision: str, workdir: Path) -> ModuleType | None:
    """The old single-module parse.py at `revision`, imported under another name."""
    try:
        source = subprocess.run(
            ["git", "show", f"{revision}:{OLD_PATH}"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    path = workdir / "parse_before.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("parse_before", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["parse_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# -- speed --------------------------------------------------------------------------------


def one_round(parser: Parser, raws: Sequence[bytes]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to parse every mail once."""
    wall, cpu = time.perf_counter(), time.process_time()
    for raw in raws:
        parser(raw)
    return time.perf_counter() - wall, time.process_time() - cpu


def speed(
    candidates: dict[str, Parser], raws: Sequence[bytes], rounds: int
) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) msg/s of each candidate over interleaved rounds."""
    best = {name: (float("inf"), float("inf")) for name in candidates}
    for _ in range(rounds):
        for name, parser in candidates.items():
            wall, cpu = one_round(parser, raws)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return {name: (len(raws) / wall, len(raws) / cpu) for name, (wall, cpu) in best.items()}


def report_speed(rates: dict[str, tuple[float, float]], raws: Sequence[bytes]) -> None:
    # On a shared machine the wall-clock rate is what this process got; the
    # rate per CPU second is what one idle core would do.
    size = sum(map(len, raws)) / len(raws)
    print(f"{len(raws)} generated mails, {size / 1024:.1f} KB on average")
    for name, (wall, cpu) in rates.items():
        print(f"  {name:<8} {wall:8.0f} msg/s wall clock  {cpu:8.0f} msg/s per CPU second")
    for index, label in ((0, "wall clock"), (1, "per CPU second")):
        now = rates["now"][index]
        verdict = "PASS" if now >= TARGET_RATE else "MISS"
        baselines = [name for name in ("before", "stdlib") if name in rates]
        ratios = ", ".join(f"{now / rates[name][index]:.2f}x {name}" for name in baselines)
        print(f"parse now, {label}: {now:.0f} msg/s, target {TARGET_RATE:.0f}: {verdict}")
        print(f"  now is {ratios}")


# -- memory -------------------------------------------------------------------------------

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across
# fork and exec, while VmHWM belongs to the child's own address space.
_CHILD = """
import sys
sys.path.insert(0, {root!r})
{load}
def hwm():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
base = hwm()
raw = open({path!r}, "rb").read()
parsed = parse(raw)
peak = hwm()
digests = sorted(a.sha256 for a in parsed.attachments)
print(base, peak, ",".join(digests))
"""


def big_mail(path: Path, attachment_mb: int) -> tuple[int, str]:
    """Write a mail with one `attachment_mb` MB base64 attachment; (size, its sha256)."""
    payload = random.Random(attachment_mb).randbytes(attachment_mb * 2**20)
    digest = hashlib.sha256(payload).hexdigest()
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    del payload
    head = (
        b"From: Dana Reyes <dana.reyes@example.com>\r\nTo: support@example.com\r\n"
        b"Subject: Memory dump\r\nMessage-ID: <big@example.com>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=BIG\r\n\r\n--BIG\r\n"
        b"Content-Type: text/plain\r\n\r\nThe dump is attached.\r\n--BIG\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="dump.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    with path.open("wb") as out:
        out.write(head)
        out.write(encoded)
        out.write(b"--BIG--\r\n")
    return path.stat().st_size, digest


def child_peak(load: str, path: Path, digest: str) -> tuple[float, float]:
    """(baseline MB, peak MB) of a fresh process that parses the mail at `path`."""
    code = _CHILD.format(root=str(ROOT), load=load, path=str(path))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    base, peak, digests = result.stdout.split()
    if digest not in digests.split(","):
        raise SystemExit("the attachment did not reach the parsed message intact")
    return int(base) / 1024, int(peak) / 1024  # Linux reports KiB


def report_memory(attachment_mb: int, before: Path | None) -> None:
    loads = {"now": "from helpdesk.mail.parse import parse"}
    if before is not None:
        loads["before"] = (
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('parse_before', {str(before)!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "sys.modules['parse_before'] = module; spec.loader.exec_module(module)\n"
            "parse = module.parse"
        )
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        path = Path(tmp) / "big.eml"
        size, digest = big_mail(path, attachment_mb)
        size_mb = size / 2**20
        print(f"one mail of {size_mb:.1f} MB with a {attachment_mb} MB attachment:")
        for name, load in loads.items():
            base, peak = child_peak(load, path, digest)
            factor = (peak - base) / size_mb
            verdict = "PASS" if factor <= TARGET_MEMORY_FACTOR else "MISS"
            print(
                f"  {name:<7} peak RSS {peak:6.0f} MB, baseline {base:5.0f} MB, "
                f"peak - baseline {peak - base:6.0f} MB = {factor:.2f}x the mail "
                f"(target {TARGET_MEMORY_FACTOR:.0f}x): {verdict}"
            )


# -- main ---------------------------------------------------------------------------------


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="how many (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--memory", action="store_true", help="also measure the big mail")
    parser.add_argument("--attachment-mb", type=int, default=25, help="(default 25)")
    parser.add_argument("--before", help="git revision of the old parse.py (default: found)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    raws = mailgen.generate(args.messages, args.seed)
    candidates: dict[str, Parser] = {"stdlib": stdlib_parse}
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        revision = before_revision(args.before)
        module = load_before(revision, Path(tmp)) if revision else None
        if module is not None:
            candidates["before"] = module.parse
        else:
            print("(no git history here: the `before` baseline is skipped)")
        candidates["now"] = parse
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        report_speed(speed(candidates, raws, args.rounds), raws)
        if args.memory:
            report_memory(args.attachment_mb, Path(tmp) / "parse_before.py" if module else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
