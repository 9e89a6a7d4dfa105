"""How much real-world mail ingest would quarantine, with the parse() before and now.

Issue 9 item 14: a broad sample of real mail, from many servers and clients,
should land in quarantine at under 1%, and no mail a person wrote among it.
Third-party corpora are not committed (a few curated shapes are, in
tests/messages/); this script collects a sample from what can be installed
and measures it:

    # 1. fetch: sdists of mail libraries with test corpora, Debian sources
    pip download --no-deps --no-binary :all: -d /tmp/sample/src \\
        mail-parser flanker talon email-reply-parser imap-tools eml-parser \\
        mail-parser-reply django-mailbox django-helpdesk roundup mailman \\
        flufl.bounce parsedmarc salmon-mail hyperkitty dkimpy
    (cd /tmp/sample/src && for f in *.tar.gz; do tar xzf "$f"; done)
    apt-get source --download-only rspamd notmuch gmime mblaze bogofilter mairix
    # (needs a deb-src line; unpack the .orig tarballs under /tmp/sample/src)

    # 2. collect every file that looks like a mail (mbox files are split)
    .venv/bin/python bench/mailsample.py collect /tmp/sample/mail /tmp/sample/src/* \\
        "$(python3 -c 'import test, os; print(os.path.dirname(test.__file__))')/test_email/data"

    # 3. measure, before and now, in one run
    .venv/bin/python bench/mailsample.py rate /tmp/sample/mail [--list]

`rate` runs every mail through parse() and classify() and applies ingest's
own rule (`helpdesk.mail.prepare.unusable`, after its bounce fallback) with the
previous parse() from git ("before") and today's ("now"), and prints both
rates beside the 1% target; `--list` names what is still quarantined.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import mailbox
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/mailsample.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.parse import before_revision, load_before
from helpdesk.mail.classify import classify
from helpdesk.mail.parse import parse
from helpdesk.mail.prepare import BOUNCE_SENDER, unusable
from helpdesk.values import MailClass, ParsedMessage

TARGET_SHARE = 0.01
_START_RE = re.compile(rb"^(?:From |[!-9;-~]+:)")
_KNOWN_RE = re.compile(
    rb"^(from|to|subject|date|message-id|received|return-path|mime-version|content-type"
    rb"|delivered-to|x-mailer|sender|reply-to)\s*:",
    re.I | re.M,
)
_RECEIVED_RE = re.compile(rb"^received\s*:", re.I | re.M)
_SKIPPED_SUFFIXES = frozenset(
    {".py", ".pyc", ".js", ".css", ".html", ".po", ".mo", ".gz", ".png", ".jpg", ".rst"}
    | {".cfg", ".toml", ".json", ".yaml", ".yml", ".ini", ".in"}
)


# -- collect ------------------------------------------------------------------------------


def looks_like_mail(data: bytes) -> bool:
    """A header block with at least two fields that mail has."""
    if not data or not _START_RE.match(data) or b"\x00" in data[:2000]:
        return False
    head = data[:20000].replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return len({match.group(1).lower() for match in _KNOWN_RE.finditer(head)}) >= 2


def messages_in(path: Path) -> Iterator[bytes]:
    """The mails in a file: one, or each of an mbox."""
    data = path.read_bytes()
    if data.startswith(b"From ") and b"\nFrom " in data:
        try:
            found = [message.as_bytes(unixfrom=False) for message in mailbox.mbox(str(path))]
        except Exception:  # noqa: BLE001 - not an mbox after all: the file is one mail
            found = []
        if found:
            yield from found
            return
    yield data


def collect(out: Path, roots: Sequence[str]) -> int:
    """Copy each distinct mail under `roots` to `out` as <origin>__<sha>.eml."""
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = Path(directory) / name
                if path.suffix in _SKIPPED_SUFFIXES or path.stat().st_size > 30_000_000:
                    continue
                for raw in messages_in(path):
                    digest = hashlib.sha256(raw).hexdigest()[:16]
                    if digest in seen or not looks_like_mail(raw):
                        continue
                    seen.add(digest)
                    (out / f"{Path(root).name}__{digest}.eml").write_bytes(raw)
    return len(seen)


# -- rate ---------------------------------------------------------------------------------


def problem(parsed: ParsedMessage, raw: bytes) -> str | None:
    """Why ingest would quarantine this mail (its own rule), or None."""
    verdict = classify(parsed, raw, own_addresses=frozenset(), loop_id="")
    if parsed.from_ is None and parsed.headers and verdict.mail_class is MailClass.BOUNCE:
        parsed = dataclasses.replace(parsed, from_=BOUNCE_SENDER)
    return unusable(parsed)


def rate(directory: Path, parsers: dict[str, Callable[[bytes], ParsedMessage]], show: bool) -> None:
    files = sorted(directory.glob("*.eml"))
    # Test suites also hold fragments made to exercise a parser (a few header
    # lines, no sender); mail that travelled has a Received field.
    travelled = {path.name for path in files if _RECEIVED_RE.search(_head(path.read_bytes()))}
    print(f"{len(files)} mails in {directory}, {len(travelled)} of them with a Received field")
    for name, parser in parsers.items():
        quarantined = []
        for path in files:
            raw = path.read_bytes()
            reason = problem(parser(raw), raw)
            if reason:
                quarantined.append((path.name, reason))
        in_travelled = sum(1 for file_name, _ in quarantined if file_name in travelled)
        print(
            f"  {name:<7} {_share(len(quarantined), len(files))} of all,"
            f" {_share(in_travelled, len(travelled))} of those with a Received field"
        )
        if show and name == "now":
            for file_name, reason in quarantined:
                print(f"      {file_name}: {reason[:90]}")


def _share(count: int, total: int) -> str:
    share = count / total if total else 0.0
    verdict = "PASS" if share < TARGET_SHARE else "MISS"
    return f"{count:4} quarantined = {share:6.2%} (target under {TARGET_SHARE:.0%}: {verdict})"


def _head(raw: bytes) -> bytes:
    return raw[:65536].replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    collecting = commands.add_parser("collect", help="gather mails into a directory")
    collecting.add_argument("out")
    collecting.add_argument("roots", nargs="+")
    rating = commands.add_parser("rate", help="quarantine rate, before and now")
    rating.add_argument("directory")
    rating.add_argument("--list", action="store_true", help="name what is still quarantined")
    rating.add_argument("--before", help="git revision of the old parse.py (default: found)")
    args = parser.parse_args(argv)
    if args.command == "collect":
        print(collect(Path(args.out), args.roots), "mails collected")
        return 0
    parsers: dict[str, Callable[[bytes], ParsedMessage]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sample-") as tmp:
        revision = before_revision(args.before)
        module = load_before(revision, Path(tmp)) if revision else None
        if module is not None:
            parsers["before"] = module.parse
        parsers["now"] = parse
        rate(Path(args.directory), parsers, args.list)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
