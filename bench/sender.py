"""Sender throughput: mails per second from the outbox to a real aiosmtpd relay.

What it measures, in one run on one machine state:

1. a fresh SQLite store (a temporary file under /tmp, a real disk), migrated,
   with `--messages` acknowledgements queued through `outbox.enqueue` (the
   path the daemon uses; about 1.5 KB each);
2. the sender as the daemon runs it: batches of 50 claimed at once, one SMTP
   connection for all of them, results group-committed as they come;
3. the baseline: the same sender opening one connection per mail (what the
   sender did before connection reuse), over `--baseline` more mails;
4. how long an accepted mail's result waited for its commit (p50/p95/max):
   the window in which a crash would send that mail again;
5. a reference: aiosmtplib's own MAIL/RCPT/DATA loop over one connection,
   the same mails, no store (the sender overlaps each commit with the next
   mail's commands, so it can come close to this or pass it).

aiosmtpd (its own server with the Sink handler) runs in a process of its
own, as a relay does.
Target (issue 13 item 3): at least 400 msg/s over one connection.

Run from the repository root:

    .venv/bin/python bench/sender.py [--messages 2000] [--baseline 500] [--db PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

if __package__ in (None, ""):  # run as `python bench/sender.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from helpdesk.delivery import outbox
from helpdesk.settings import SmtpSettings
from helpdesk.smtp import Sender
from helpdesk.store.db import make_engine, make_session_factory, upgrade
from helpdesk.store.models import OutboxItem, utcnow
from helpdesk.values import Address, MessageKind, OutgoingMail

TARGET = 400.0
WARMUP = 300
SIGNER = outbox.Signer(domain="example.com", key=b"k" * 32, loop_id="support@example.com")
BODY = (
    "Hello,\n\nthank you for your message. We have opened ticket [#{n}] for it and an\n"
    "agent will answer you soon; replies to this mail are added to the ticket.\n\n"
    "Your request:\n> {subject}\n\n" + "Opening hours: Mon-Fri 08:00-18:00.\n" * 12 +
    "\n-- \nExample IT Help Desk\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fill(sessions: sessionmaker[Any], count: int, start: int) -> None:
    """Queue `count` acknowledgements, 200 per transaction."""
    for first in range(start, start + count, 200):
        with sessions.begin() as session:
            for n in range(first, min(first + 200, start + count)):
                subject = f"Printer on floor {n % 9} shows error E-{n}"
                outbox.enqueue(session, OutgoingMail(
                    kind=MessageKind.AUTO_REPLY, ticket_id=None,
                    from_=Address("support@example.com", "Example IT Help Desk"),
                    to=(Address(f"person{n}@example.org", f"Person {n}"),),
                    subject=f"[#{n}] Re: {subject}", body=BODY.format(n=n, subject=subject),
                    automated=True,
                ), SIGNER, now=utcnow())


def instrument(sender: Sender) -> list[float]:
    """Record, per mail, the seconds between the relay's answer and its commit."""
    waits: list[float] = []
    answered: dict[int, float] = {}
    recorder = sender.recorder
    add, on_recorded = recorder.add, recorder._on_recorded

    def timed_add(report: Any, row: Any) -> None:
        answered[report.item_id] = time.perf_counter()
        add(report, row)

    def timed_recorded(recorded: Any, rows: Any) -> None:
        now = time.perf_counter()
        waits.extend(now - answered.pop(r.item_id) for r in recorded)
        on_recorded(recorded, rows)

    recorder.add = timed_add  # type: ignore[method-assign]
    recorder._on_recorded = timed_recorded
    return waits


async def until_sent(sender: Sender, count: int) -> float:
    """`sender.run(stop)` as the daemon runs it, until `count` mails went; the seconds."""
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(sender.run(stop))
    while sender.sent < count and not task.done():
        await asyncio.sleep(0.002)
    seconds = time.perf_counter() - started
    stop.set()
    await task
    return seconds


def measure(sessions: sessionmaker[Any], port: int, count: int, *, reuse: bool
            ) -> tuple[float, int, int, list[float]]:
    settings = SmtpSettings(host="127.0.0.1", port=port, timeout=10.0)
    sender = Sender(sessions, settings, outbox.OutboxPolicy(), holder="bench", watch=False,
                    reuse_connection=reuse)
    waits = instrument(sender)
    seconds = asyncio.run(until_sent(sender, count))
    return seconds, sender.sent, sender.relay.connections, waits


def reference(sessions: sessionmaker[Any], port: int, count: int) -> float:
    """aiosmtplib alone, MAIL/RCPT/DATA over one connection, no store: the SMTP part."""
    with sessions() as session:
        rows = session.execute(select(OutboxItem.envelope_from, OutboxItem.envelope_to,
                                      OutboxItem.raw).offset(WARMUP).limit(count)).all()

    async def send_all() -> float:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10.0,
                               local_hostname="bench.example.com")
        await smtp.connect()
        started = time.perf_counter()
        for sender, recipients, raw in rows:
            await smtp.mail(sender)
            for rcpt in recipients:
                await smtp.rcpt(rcpt)
            await smtp.data(raw)
        seconds = time.perf_counter() - started
        await smtp.quit()
        return seconds

    return len(rows) / asyncio.run(send_all())


def start_relay(port: int) -> subprocess.Popen[bytes]:
    """aiosmtpd's own server, in a process of its own as a relay would be."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink",
         "-l", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return relay
        time.sleep(0.05)
    relay.kill()
    raise SystemExit("aiosmtpd did not start")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--baseline", type=int, default=500)
    parser.add_argument("--db", type=Path, help="SQLite file (default: a temporary one)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    folder = tempfile.TemporaryDirectory(prefix="bench-sender-", dir="/tmp")
    path = args.db or Path(folder.name) / "helpdesk.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    sessions = make_session_factory(engine)
    port = free_port()
    relay = start_relay(port)
    try:
        # Warm-up (not counted): the relay process, the store's pages, our imports.
        fill(sessions, WARMUP, 0)
        measure(sessions, port, WARMUP, reuse=True)
        fill(sessions, args.messages, WARMUP)
        seconds, sent, connections, waits = measure(sessions, port, args.messages, reuse=True)
        fill(sessions, args.baseline, WARMUP + args.messages)
        base_seconds, base_sent, base_connections, _ = measure(
            sessions, port, args.baseline, reuse=False)
        raw_rate = reference(sessions, port, args.messages)
    finally:
        relay.terminate()
        relay.wait(10)
        engine.dispose()
        folder.cleanup()

    rate, base_rate = sent / seconds, base_sent / base_seconds
    verdict = "PASS" if rate >= TARGET else "MISS"
    print(f"sender, one connection (reused):   {rate:7.0f} msg/s  ({sent} mails, "
          f"{connections} connection(s))   target >= {TARGET:.0f} msg/s  {verdict}")
    print(f"baseline, one connection per mail: {base_rate:7.0f} msg/s  ({base_sent} mails, "
          f"{base_connections} connections)")
    print(f"ratio reused / per mail:           {rate / base_rate:7.2f}x")
    print(f"reference, aiosmtplib alone:       {raw_rate:7.0f} msg/s  (its send loop over one "
          f"connection, no store; the sender: {rate / raw_rate:.2f}x)")
    print(f"250 -> commit of the result (the window for a second send): "
          f"p50 {percentile(waits, 50) * 1000:.1f} ms, p95 {percentile(waits, 95) * 1000:.1f} ms,"
          f" max {max(waits) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
