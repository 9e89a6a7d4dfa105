"""What bench/ingest.py and bench/daemon.py share: the code under test, configs, mail, the table.

A *side* is one checkout of helpdesk with its own virtualenv: "now" is this
checkout, "before" the one given with `--baseline` (e.g. /work/wt/before, set
up with `python3 -m venv .venv && .venv/bin/pip install -e '.[test]'`). Each
side runs through its OWN console script as a whole process, with its own
shipped rules and templates, so that what is timed is what a user runs.

The configuration written here uses only what both the old and the new code
accept ([helpdesk], [database], [daemon], [smtp], [rules], [templates],
[[team]], [[agent]], [[mailbox]]); `[intake]` is written for a side that has
it, and only when a figure needs it (worker counts).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import mailgen  # noqa: E402

SUPPORT = "support@example.com"
AGENT = "agent@example.com"
# The demo's teams (helpdesk/cli/demo.py): the shipped rules route to them.
TEAMS = (
    ("support", "it-support@example.com"),
    ("networking", "network-team@example.com"),
    ("infrastructure", "infra@example.com"),
    ("identity-and-access", "iam@example.com"),
    ("security", "security@example.com"),
)


# -- the code under test ---------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One checkout and its virtualenv."""

    label: str  # "now" or "before"
    root: Path

    @property
    def bin(self) -> Path:
        own = self.root / ".venv" / "bin"
        if self.label == "now" and not (own / "helpdesk").exists():
            return Path(sys.executable).parent  # this checkout, installed in the running venv
        return own

    @property
    def helpdesk(self) -> str:
        return str(self.bin / "helpdesk")

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    @property
    def has_intake(self) -> bool:
        """The new code's `[intake]` section (group commit, parsing workers)."""
        return (self.root / "helpdesk" / "intake").is_dir()

    def revision(self) -> str:
        found = subprocess.run(["git", "-C", str(self.root), "log", "-1", "--format=%h %s"],
                               capture_output=True, text=True, check=False)
        return found.stdout.strip()[:70] or "(not a git checkout)"

    def cli(self, config: Path, *args: str) -> list[str]:
        return [self.helpdesk, "--config", str(config), *args]


def sides(baseline: str | None) -> list[Side]:
    """This checkout, and the baseline when given; exits with a hint when it cannot run."""
    found = [Side("now", ROOT)]
    if baseline:
        before = Side("before", Path(baseline).resolve())
        if not Path(before.helpdesk).exists():
            sys.exit(f"--baseline {baseline}: no {before.helpdesk}; create its venv: cd {baseline}"
                     " && python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'")
        found.append(before)
    for side in found:
        byte_compile(side.root)
    return found


def byte_compile(tree: Path) -> None:
    """Compile `tree`'s helpdesk package, as pip leaves an installed one.

    An editable checkout edited since its last compile, or a tree exported without
    __pycache__, otherwise recompiles its changed modules in every process (in every
    one under PYTHONDONTWRITEBYTECODE), and a whole-process figure times the compiler.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "helpdesk")],
                   check=True, stdout=subprocess.DEVNULL)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a side's process: none of ours that could redirect it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HELPDESK_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mailbox:
    name: str
    port: int
    username: str
    password: str
    folder: str = "INBOX"


def write_config(path: Path, side: Side, *, db_url: str, rules: bool, smtp_port: int = 2525,
                 mailboxes: Sequence[Mailbox] = (), workers: int | None = None,
                 lease_seconds: float | None = None, maildir: Path | None = None) -> Path:
    """A configuration both the old and the new code accept; `rules=False`: an empty rules dir."""
    empty = path.parent / "no-rules"
    empty.mkdir(exist_ok=True)
    rules_dir = side.root / "rules" if rules else empty
    lines = [
        "[helpdesk]", 'name = "Example Corp IT"', f'support_address = "{SUPPORT}"',
        'domain = "example.com"', "",
        "[database]", f'url = "{db_url}"', "",
        "[smtp]", 'host = "127.0.0.1"', f"port = {smtp_port}", 'tls = "none"', "",
        "[rules]", f'dir = "{rules_dir}"', "",
        "[templates]", f'dir = "{side.root / "templates"}"', "",
    ]
    if lease_seconds is not None:
        lines += ["[daemon]", f"lease_seconds = {lease_seconds}", ""]
    if workers is not None and side.has_intake:
        lines += ["[intake]", f"workers = {workers}", ""]
    for name, address in TEAMS:
        lines += ["[[team]]", f'name = "{name}"', f'address = "{address}"', ""]
    lines += ["[[agent]]", 'name = "Bench Agent"', f'addresses = ["{AGENT}"]',
              'teams = ["support"]', ""]
    for box in mailboxes:
        lines += ["[[mailbox]]", f'name = "{box.name}"', 'host = "127.0.0.1"',
                  f"port = {box.port}", 'tls = "none"', f'username = "{box.username}"',
                  f'password = "{box.password}"', f'folder = "{box.folder}"', ""]
    if maildir is not None:
        # Polled often: the run measures the daemon, not how soon it looks.
        lines += ["[[maildir]]", 'name = "local"', f'path = "{maildir}"', "poll_interval = 0.2",
                  ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def upgrade(side: Side, config: Path) -> None:
    """`helpdesk db upgrade` with the side's own code (untimed)."""
    done = subprocess.run(side.cli(config, "db", "upgrade"), capture_output=True, text=True,
                          env=clean_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side.label}: db upgrade failed:\n{done.stdout}{done.stderr}")


# -- mail ------------------------------------------------------------------------------------

_REPLACED = re.compile(rb"(?i)^(from|sender|reply-to|return-path|in-reply-to|references):")


def generate(n: int, seed: int) -> list[bytes]:
    return mailgen.generate(n, seed=seed)


def new_requests(raws: Iterable[bytes], count: int, domain: str = "example.net",
                 prefix: str = "arrival") -> list[bytes]:
    """`count` first requests from `raws`, each from a sender of its own who never wrote before.

    Replies are skipped and the sender fields replaced, so that every one of
    them opens a ticket and gets an acknowledgement (the per-sender limit of
    automatic replies never applies).
    """
    chosen: list[bytes] = []
    for raw in raws:
        head, sep, body = _split(raw)
        if re.search(rb"(?im)^(in-reply-to|references):", head) or b"[#" in head:
            continue
        if re.search(rb"(?im)^subject:\s*(re|aw|sv|fwd?):", head):
            continue
        address = f"{prefix}-{len(chosen) + 1}@{domain}".encode()
        kept = [line for line in _fields(head) if not _REPLACED.match(line)]
        new_head = b"".join([b"From: New Requester <" + address + b">\n", *kept])
        chosen.append(new_head + sep + body)
        if len(chosen) == count:
            return chosen
    raise ValueError(f"only {len(chosen)} first requests among the generated mail")


def sender_of(raw: bytes) -> str:
    found = re.search(rb"(?im)^from:[^<\n]*<([^>]+)>", raw)
    return found.group(1).decode().lower() if found else ""


def message_id_of(raw: bytes) -> str:
    found = re.search(rb"(?im)^message-id:\s*<([^>]+)>", raw)
    return found.group(1).decode() if found else ""


def _split(raw: bytes) -> tuple[bytes, bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep)
        if end != -1:
            return raw[:end + len(sep) // 2], sep[len(sep) // 2:], raw[end + len(sep):]
    return raw, b"", b""


def _fields(head: bytes) -> list[bytes]:
    """Header fields with their continuation lines, each ending in its newline."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


# -- processes: memory and CPU from /proc ------------------------------------------------------

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TICKS = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
            except OSError:
                continue
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one process in KiB; zeros when it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def pss_kb(pid: int) -> int:
    """Proportional set size: each shared page divided among the processes sharing it."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (not of its children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command: state(0) ppid(1) ... utime(11) stime(12).
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / TICKS, total / TICKS


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


@dataclass
class Usage:
    """Peak memory of process trees and the CPU they used, sampled while a figure is measured."""

    peak_rss_kb: dict[str, int] = field(default_factory=dict)  # largest sum of VmRSS seen
    peak_pss_kb: dict[str, int] = field(default_factory=dict)  # largest sum of Pss seen
    hwm_kb: dict[str, dict[int, int]] = field(default_factory=dict)  # per pid, its VmHWM
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of each tree
    cpu_roots: dict[str, float] = field(default_factory=dict)  # ... of its root processes
    seconds: float = 0.0
    machine_busy: float = 0.0  # CPU seconds of every process on the machine

    def peak_mb(self, group: str) -> float:
        return self.peak_rss_kb.get(group, 0) / 1024

    def pss_mb(self, group: str) -> float:
        return self.peak_pss_kb.get(group, 0) / 1024

    def hwm_mb(self, group: str) -> float:
        return sum(self.hwm_kb.get(group, {}).values()) / 1024

    def cores(self, seconds: float) -> float:
        return seconds / self.seconds if self.seconds > 0 else 0.0

    def cpu_share(self, split: str = "") -> str:
        """Where the machine's CPU went in the window, in cores (1.00 = one core all the time).

        `split`: a group whose root processes are shown apart from their children.
        """
        parts = []
        for name, seconds in self.cpu.items():
            text = f"{name} {self.cores(seconds):.2f}"
            if name == split:
                roots = self.cpu_roots.get(name, 0.0)
                text += (f" (main process{'es' if ',' in name else ''} {self.cores(roots):.2f}, "
                         f"its other processes: parsing workers, sender "
                         f"{self.cores(seconds - roots):.2f})")
            parts.append(text)
        other = max(0.0, self.machine_busy - sum(self.cpu.values()))
        parts.append(f"everything else on the machine {self.cores(other):.2f}")
        return ", ".join(parts) + f" (of {os.cpu_count()} cores)"


class Watch:
    """Samples process trees every `interval` seconds in a thread: RSS sums, VmHWM, CPU
    (and the sum of Pss every fourth sample, for the groups in `pss`).

    CPU is each process's own user + system time, last seen value minus the
    value when the window opened (0 for a process born in it); a process that
    ends between two samples loses at most one interval of it.
    """

    def __init__(self, groups: dict[str, Sequence[int]], interval: float = 0.05,
                 pss: Sequence[str] = ()) -> None:
        import threading

        self.groups = groups
        self.pss = set(pss)  # groups whose Pss is summed too (it costs a page-table walk)
        self.interval = interval
        self.usage = Usage(peak_rss_kb={g: 0 for g in groups}, hwm_kb={g: {} for g in groups})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[str, dict[int, float]] = {g: {} for g in groups}
        self._started = 0.0
        self._machine_start = 0.0

    def __enter__(self) -> Watch:
        self._machine_start = machine_cpu()[0]
        self._started = time.monotonic()
        for roots in self.groups.values():
            for root in roots:
                for pid in descendants(root):
                    self._cpu_start[pid] = cpu_seconds(pid)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> Usage:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.sample()
            self.usage.seconds = time.monotonic() - self._started
            self.usage.machine_busy = machine_cpu()[0] - self._machine_start
            for group, roots in self.groups.items():
                used = {pid: last - self._cpu_start.get(pid, 0.0)
                        for pid, last in self._cpu_last[group].items()}
                self.usage.cpu[group] = sum(used.values())
                self.usage.cpu_roots[group] = sum(used.get(pid, 0.0) for pid in roots)
        return self.usage

    def sample(self, pss: bool = True) -> None:
        for group, roots in self.groups.items():
            total = proportional = 0
            hwm = self.usage.hwm_kb[group]
            last = self._cpu_last[group]
            for root in roots:
                for pid in descendants(root):
                    rss, peak = memory_kb(pid)
                    total += rss
                    if pss and group in self.pss:
                        proportional += pss_kb(pid)
                    hwm[pid] = max(hwm.get(pid, 0), peak)
                    last[pid] = max(last.get(pid, 0.0), cpu_seconds(pid))
            self.usage.peak_rss_kb[group] = max(self.usage.peak_rss_kb[group], total)
            self.usage.peak_pss_kb[group] = max(self.usage.peak_pss_kb.get(group, 0),
                                                proportional)

    def _run(self) -> None:
        # Pss costs a walk of the page tables: every fourth sample, to stay out of the way
        # of the processes measured on a small machine.
        count = 0
        while not self._stop.wait(self.interval):
            count += 1
            self.sample(pss=count % 4 == 0)


# -- figures and the table ---------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[min(len(ordered), int(rank)) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass
class Row:
    """One line of the table: a figure now and before, against its target."""

    figure: str
    target: str  # as printed, e.g. ">= 1,000"; "" when the issue sets none
    now: float | None
    before: float | None = None
    passes: bool | None = None  # None: no target, or no figure
    unit: str = ""
    digits: int = 0
    na: str = ""  # why the baseline has no figure ("n/a" in its column)


def row(figure: str, now: float | None, before: float | None, *, unit: str = "",
        at_least: float | None = None, below: float | None = None, zero: bool = False,
        digits: int = 0, na: str = "") -> Row:
    """A row whose verdict is `now >= at_least`, `now < below` or (`zero`) `now == 0`."""
    target, passes = "", None
    if zero:
        target = "= 0"
        passes = None if now is None else now == 0
    elif at_least is not None:
        target = f">= {at_least:,.{digits if at_least < 10 else 0}f}"
        passes = None if now is None else now >= at_least
    elif below is not None:
        target = f"< {below:,.{digits if below < 10 else 0}f}"
        passes = None if now is None else now < below
    return Row(figure, target, now, before, passes, unit, digits, na if before is None else "")


def _value(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(title: str, rows: Sequence[Row]) -> None:
    """figure, target, PASS/MISS, now, before, now/before: the same columns in every bench."""
    header = ("figure", "target", "verdict", "now", "before", "now/before")
    cells = []
    notes: dict[str, int] = {}
    for r in rows:
        verdict = {True: "PASS", False: "MISS", None: "-"}[r.passes]
        unit = f" {r.unit}" if r.unit else ""
        ratio = "-"
        if r.now is not None and r.before:
            ratio = f"{r.now / r.before:.2f}x"
        before = f"n/a [{notes.setdefault(r.na, len(notes) + 1)}]" if r.na else _value(
            r.before, r.digits)
        cells.append((r.figure, (r.target + unit) if r.target else "-", verdict,
                       _value(r.now, r.digits), before, ratio))
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    print()
    print(title)
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                     enumerate(zip(header, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for c in cells:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                        for i, (v, w) in enumerate(zip(c, widths, strict=True))))
    for reason, number in notes.items():
        print(f"[{number}] n/a: {reason}")


def header(title: str, sides_: Sequence[Side], extra: Sequence[str] = ()) -> None:
    print(title)
    for side in sides_:
        print(f"  {side.label:7} {side.root}  ({side.revision()})  {side.helpdesk}")
    print(f"  machine load average {load_average()} at the start")
    for line in extra:
        print(f"  {line}")
