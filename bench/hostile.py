"""Hostile mail (issue 12): CPU time of each attacked step, this checkout beside a baseline.

Each shape of tests/hostile/shapes.py goes through the pure step it attacked,
in a child process per (checkout, shape) with a CPU-time limit, so that a
quadratic baseline costs at most `--cpu-limit` seconds and the two columns
are measured in the same run on the same machine. Figures are CPU seconds
of the step alone (the input is built before the clock starts), and the
child's peak RSS. The target is the hostile test's bound (5 s); the exit
code does not depend on the figures. The #tag flood is not here: its cost
was in the store (one add_tags per line), see the end-to-end hostile tests.

Run from the repository root, e.g. against the main checkout:

    .venv/bin/python bench/hostile.py --baseline /work/main [--cpu-limit 60] [--only html]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 5.0

SHAPES = [
    "bounce: 40 KB of blank lines",
    'bounce: "!"*30000 + "@" + "a"*30000',
    "DSN: a million folded continuation lines",
    "split_reply: 70,000 reply headers",
    'html: "<a " * 25000',
    "html: \"<a b='\" * 20000",
    'html: "<!--" * 80000',
    "forward: Sent value over 10,000 continuation lines",
    "forward: 400,000 subject prefixes",
    "classify: 200 KB run in a Content-Type parameter",
    "rules: twenty catastrophic admin regexes",
]


def _shapes_module() -> ModuleType:
    # Loaded by path: a baseline checkout has no tests/hostile.
    spec = importlib.util.spec_from_file_location("hostile_shapes",
                                                  HERE / "tests" / "hostile" / "shapes.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _step(name: str) -> Callable[[], object]:
    """The step for `name`, its input built already, from the checkout on sys.path."""
    from helpdesk.mail.classify import classify, parse_bounce_text, parse_dsn
    from helpdesk.mail.forwarded import find_forwarded
    from helpdesk.mail.html import html_to_text
    from helpdesk.mail.parse import parse
    from helpdesk.mail.quoting import split_reply
    from helpdesk.rules import build_rule_set, evaluate
    from helpdesk.rules.schema import KnownNames
    from helpdesk.values import ParsedMessage, RuleInput

    s = _shapes_module()
    if name.startswith("bounce: 40 KB"):
        return lambda: parse_bounce_text(s.BLANK_LINES)
    if name.startswith("bounce: "):
        return lambda: parse_bounce_text(s.BANG_AT)
    if name.startswith("DSN"):
        raw = s.dsn()
        return lambda: parse_dsn(raw)
    if name.startswith("split_reply"):
        return lambda: split_reply(s.REPLY_HEADERS)
    html = {'html: "<a " * 25000': s.HTML_OPEN_TAGS, "html: \"<a b='\" * 20000":
            s.HTML_OPEN_QUOTES, 'html: "<!--" * 80000': s.HTML_OPEN_COMMENTS}
    if name in html:
        return lambda: html_to_text(html[name])
    if name.startswith("forward: Sent"):
        msg = parse(s.agent_forward())
        return lambda: find_forwarded(msg)
    if name.startswith("forward: 400,000"):
        body = s.forwarded_body(lines=1).replace("Subject: VPN drops every hour\n", "")
        prefixed = ParsedMessage(message_id="p@x", message_id_synthetic=False,
                                 subject="Fwd: " * 400_000 + "VPN", from_=None, text=body)
        return lambda: find_forwarded(prefixed)
    if name.startswith("classify"):
        raw = s.content_type_params()
        msg = parse(raw)
        return lambda: classify(msg, raw, own_addresses=frozenset(), loop_id="")
    if name.startswith("rules"):
        rules = build_rule_set(
            [(Path("rules/10-slow.toml"), {"rule": [
                {"name": f"slow{i}", "when": {"body": "(x+x+)+y"}, "then": {"tags": ["s"]}}
                for i in range(20)
            ]})],
            KnownNames.of(teams=(), agents=(), templates=()),
        )
        msg = parse(s.customer("x" * 5000, "slow"))
        return lambda: evaluate(rules, msg, None, RuleInput(), now=datetime.now(UTC))
    raise SystemExit(f"unknown shape {name!r}")


def _one(name: str) -> None:
    """In the child: build the input, time the step, print JSON."""
    run = _step(name)
    started = time.process_time()
    run()
    seconds = time.process_time() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"cpu_s": seconds, "peak_mb": peak_mb}))


def _measure(root: Path, name: str, cpu_limit: int) -> str:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, cpu_limit + 5))

    child = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", name, "--root", str(root)],
        cwd=root, capture_output=True, text=True, preexec_fn=limit, check=False,
    )
    if child.returncode != 0:
        reason = "CPU limit" if child.returncode == -24 else f"exit {child.returncode}"
        return f"> {cpu_limit} s ({reason})"
    report = json.loads(child.stdout.splitlines()[-1])
    return f"{report['cpu_s']:.3f} s, {report['peak_mb']:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--cpu-limit", type=int, default=60, help="CPU seconds per step (60)")
    parser.add_argument("--only", default="", help="only shapes whose name contains this")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=HERE, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        sys.path.insert(0, str(args.root))
        _one(args.one)
        return
    print(f"CPU time of the attacked step (target under {TARGET_SECONDS:.0f} s), and peak RSS")
    header = f"{'shape':52} {'this checkout':>22}"
    if args.baseline:
        header += f" {'baseline ' + str(args.baseline):>30}"
    print(header)
    for name in SHAPES:
        if args.only not in name:
            continue
        line = f"{name:52} {_measure(HERE, name, args.cpu_limit):>22}"
        if args.baseline:
            line += f" {_measure(args.baseline.resolve(), name, args.cpu_limit):>30}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
