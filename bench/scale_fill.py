"""Filling a PostgreSQL store for bench/scale.py: a throwaway cluster, SQL fill, mails to ingest.

The fill is shaped like a desk whose timers have been running: the newest 4%
of the tickets are in progress (new ones only from the last hours, pending
ones quiet for less than a week, everything else answered), the rest resolved
or closed over three years.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import socket
import subprocess
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parent.parent
INGEST_MAILS = 200
TEAMS = ("support", "networking", "infrastructure", "identity-and-access", "security")
AGENTS = 20
TAGS = ("vpn", "remote", "printer", "laptop", "email", "password", "access", "network",
        "wifi", "phone", "onboarding", "offboarding", "software", "license", "backup",
        "storage", "teams", "sharepoint", "outlook", "monitor", "docking", "badge", "sso",
        "mfa", "firewall", "dns", "vm", "database", "crm", "erp")
SUBJECTS = ("VPN drops every hour", "Printer on 3rd floor is jammed", "New laptop for a starter",
            "Password reset for the CRM", "Outlook keeps asking for the password",
            "Access to the finance share", "Wi-Fi in meeting room 2 is slow",
            "Monitor flickers", "Phone not ringing", "Teams calls drop",
            "Docking station not detected", "Badge does not open the door", "MFA token lost",
            "Software request: Visio", "Mailbox full", "Backup failed last night",
            "VM will not start", "DNS name does not resolve", "Firewall rule for the lab",
            "SharePoint permissions")


# -- the cluster ---------------------------------------------------------------------------


class Cluster:
    """initdb + pg_ctl in a directory on disk; default durability (fsync on)."""

    def __init__(self, workdir: Path) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                       key=lambda p: int(p.parts[-3]))
        if not found:
            raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bindir = found[-1].parent
        self.dir = workdir / "pg"
        self.dir.mkdir()
        self.root = os.geteuid() == 0
        if self.root:
            pw = pwd.getpwnam("postgres")
            for path in (workdir, self.dir):
                os.chmod(path, 0o755)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.port = _free_port()

    def _run(self, *args: str) -> None:
        cmd = (["runuser", "-u", "postgres", "--"] if self.root else []) + list(args)
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def start(self) -> None:
        data = self.dir / "data"
        self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", "bench", "-A", "trust",
                  "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c shared_buffers=512MB -c max_wal_size=4GB -c max_connections=50")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"),
                  "-o", opts, "-w", "-t", "60", "start")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://bench@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast",
                      "-w", "stop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_engine(url: str) -> Engine:
    return create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")


def create_database(url: str, template: str | None = None) -> None:
    name = url.rsplit("/", 1)[1]
    admin = admin_engine(url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        clause = f' TEMPLATE "{template}"' if template else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    admin.dispose()


# -- filling -------------------------------------------------------------------------------


def write_config(workdir: Path, name: str, url: str) -> Path:
    """A configuration like a real department's: the shipped rules, five teams, 20 agents."""
    lines = [
        '[helpdesk]', 'name = "Bench IT"', 'support_address = "support@example.com"',
        'domain = "example.com"', '', '[database]', f'url = "{url}"', '',
        '[rules]', f'dir = "{(ROOT / "rules").as_posix()}"', '',
        '[templates]', f'dir = "{(ROOT / "templates").as_posix()}"', '',
    ]
    for team in TEAMS:
        lines += ['[[team]]', f'name = "{team}"', f'address = "{team}@example.com"', '']
    for i in range(AGENTS):
        lines += ['[[agent]]', f'name = "Agent {i}"', f'addresses = ["agent{i}@example.com"]',
                  f'teams = ["{TEAMS[i % len(TEAMS)]}"]', '']
    path = workdir / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


def fill(url: str, tickets: int) -> float:
    """The big store, by SQL; returns the seconds it took."""
    started = time.perf_counter()
    engine = create_engine(url)
    contacts = max(1000, tickets // 5)
    show = tickets // 2
    steps = _fill_statements(tickets, contacts, show)
    with engine.begin() as conn:
        for label, statement in steps:
            t0 = time.perf_counter()
            conn.execute(text(statement))
            print(f"  fill: {label:<28} {time.perf_counter() - t0:7.1f} s", flush=True)
    engine.dispose()
    t0 = time.perf_counter()
    vacuum = create_engine(url, isolation_level="AUTOCOMMIT")
    with vacuum.connect() as conn:
        conn.execute(text("VACUUM ANALYZE"))
    vacuum.dispose()
    print(f"  fill: {'VACUUM ANALYZE':<28} {time.perf_counter() - t0:7.1f} s", flush=True)
    return time.perf_counter() - started


def _fill_statements(tickets: int, contacts: int, show: int) -> list[tuple[str, str]]:
    subjects = "(ARRAY[" + ", ".join(f"'{s}'" for s in SUBJECTS) + "])"
    tags = "(ARRAY[" + ", ".join(f"'{t}'" for t in TAGS) + "])"
    progress = int(tickets * 0.96)  # newer tickets are being worked on
    recent = tickets - max(20, tickets // 2000)  # newer ones still new (the last ~13 hours)
    return [
        ("seed", "SELECT setseed(0.42)"),
        ("contacts", f"""
            INSERT INTO contacts (address, name, created_at)
            SELECT 'user' || g || '@dept' || (g % 300) || '.example.com', 'User ' || g,
                   now() - interval '4 years'
            FROM generate_series(1, {contacts}) g"""),
        # Oldest first: ids follow creation over three years.
        ("tickets", f"""
            WITH teams AS (SELECT array_agg(id ORDER BY id) AS ids FROM teams),
                 agents AS (SELECT array_agg(id ORDER BY id) AS ids FROM agents),
                 base AS (
                   SELECT g, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
                          random() AS r5,
                          now() - ({tickets} - g) * (interval '3 years' / {tickets}) AS created
                   FROM generate_series(1, {tickets}) g),
                 shaped AS (
                   SELECT base.*, CASE
                     WHEN g > {recent} THEN CASE WHEN r1 < 0.5 THEN 'new' ELSE 'open' END
                     WHEN g > {progress} THEN CASE WHEN r1 < 0.45 THEN 'open'
                                                   WHEN r1 < 0.75 THEN 'pending'
                                                   ELSE 'resolved' END
                     WHEN r1 < 0.1 THEN 'resolved' ELSE 'closed' END AS status
                   FROM base)
            INSERT INTO tickets (subject, status, priority, team_id, assignee_id, requester_id,
                                 created_at, updated_at, first_response_at, resolved_at,
                                 timer_due_at)
            SELECT {subjects}[1 + (g::bigint * 7919) % {len(SUBJECTS)}] || ' (' || g || ')', status,
                   CASE WHEN r2 < 0.05 THEN 'urgent' WHEN r2 < 0.2 THEN 'high'
                        WHEN r2 < 0.9 THEN 'normal' ELSE 'low' END,
                   CASE WHEN r3 < 0.1 THEN NULL
                        ELSE (SELECT ids FROM teams)[1 + floor(r3 * {len(TEAMS)})::int] END,
                   CASE WHEN r5 < 0.4 THEN NULL
                        ELSE (SELECT ids FROM agents)[1 + floor(random() * {AGENTS})::int] END,
                   1 + (g::bigint * 104729) % {contacts},
                   created,
                   CASE WHEN status = 'pending'  -- quiet for less than a week
                        THEN GREATEST(created, now() - r4 * interval '6 days')
                        ELSE LEAST(now(), created + r4 * interval '20 days') END,
                   CASE WHEN status = 'new' THEN NULL
                        ELSE created + r3 * interval '1 hour' END,
                   CASE WHEN status IN ('resolved', 'closed')
                        THEN LEAST(now(), created + r4 * interval '20 days') END,
                   CASE WHEN status IN ('new', 'open', 'pending')
                        THEN TIMESTAMPTZ '1970-01-01 00:00:00+00' END
            FROM shaped"""),
        ("messages (~3 per ticket)", f"""
            INSERT INTO messages (ticket_id, direction, kind, message_id, message_id_synthetic,
                content_hash, in_reply_to, "references", from_address, from_name,
                to_addresses, cc_addresses, subject, sent_at, received_at, text, new_text,
                raw, size, defects, mail_class, origin_source)
            SELECT t.id, 'in', CASE WHEN i % 2 = 0 THEN 'agent_reply' ELSE 'customer' END,
                   't' || t.id || '-' || i || '@bench.example', false, md5(t.id || '-' || i),
                   CASE WHEN i > 1 THEN 't' || t.id || '-' || (i - 1) || '@bench.example'
                        ELSE '' END, '',
                   c.address, c.name, 'support@example.com', '', t.subject,
                   t.created_at + (i - 1) * interval '3 hours',
                   t.created_at + (i - 1) * interval '3 hours',
                   'Hello,' || chr(10) || chr(10) || 'about ' || t.subject || ': it happened '
                     || 'again this morning, right after logging in.' || chr(10) || chr(10)
                     || c.name,
                   'it happened again this morning, right after logging in.',
                   convert_to('From: ' || c.address || chr(13) || chr(10) || 'Subject: '
                     || t.subject || chr(13) || chr(10) || 'Message-ID: <t' || t.id || '-' || i
                     || '@bench.example>' || chr(13) || chr(10) || chr(13) || chr(10)
                     || 'Hello, about ' || t.subject || ': it happened again.', 'UTF8'),
                   180, '', 'human', 'file'
            FROM tickets t JOIN contacts c ON c.id = t.requester_id
            CROSS JOIN LATERAL generate_series(
                1, CASE WHEN t.id = {show} THEN 50 ELSE 1 + (t.id * 31) % 5 END) i"""),
        ("participants", """
            INSERT INTO participants (ticket_id, address, role)
            SELECT t.id, c.address, 'requester'
            FROM tickets t JOIN contacts c ON c.id = t.requester_id"""),
        ("tags (~40% of tickets)", f"""
            INSERT INTO ticket_tags (ticket_id, tag)
            SELECT id, {tags}[1 + floor(random() * {len(TAGS)})::int] FROM tickets
            WHERE random() < 0.33
            UNION
            SELECT id, {tags}[1 + floor(random() * {len(TAGS)})::int] FROM tickets
            WHERE random() < 0.1
            UNION
            SELECT id, 'vpn' FROM tickets WHERE random() < 0.1"""),
        ("events (1 per ticket)", """
            INSERT INTO events (ticket_id, created_at, actor, kind, detail)
            SELECT id, created_at, 'system', 'ticket.created', '{}'::json FROM tickets"""),
        ("outbox (sent mail)", f"""
            INSERT INTO outbox (ticket_id, message_id, envelope_from, envelope_to, raw, kind,
                state, attempts, permanent_failures, next_attempt_at, created_at, sent_at)
            SELECT id, 'ack-' || id || '@example.com', 'support@example.com',
                   '["someone@example.com"]'::json,
                   convert_to('Subject: [#' || id || '] received' || chr(13) || chr(10)
                              || chr(13) || chr(10) || 'We have your request.', 'UTF8'),
                   'auto_reply', CASE WHEN id > {tickets} - 20 THEN 'pending' ELSE 'sent' END,
                   1, 0, created_at, created_at, created_at
            FROM tickets WHERE id % 10 = 0"""),
        # The tag trigger made every tagged ticket's deadline stale: put them back as
        # an upgrade leaves them (no deadline yet; open tickets to be computed).
        ("deadlines as after upgrade", """
            UPDATE tickets SET timer_due_at = CASE WHEN status IN ('new', 'open', 'pending')
                                                   THEN TIMESTAMPTZ '1970-01-01 00:00:00+00' END
            WHERE timer_due_at IS NOT NULL"""),
        ("quarantine", """
            INSERT INTO quarantine (created_at, error, detail, raw, size, content_sha256,
                subject, from_address, state, retries, origin_source)
            SELECT now() - g * interval '1 hour', 'no sender address', '',
                   convert_to('garbage ' || g, 'UTF8'), 10, md5('q' || g), '', '', 'held', 0,
                   'file'
            FROM generate_series(1, 5000) g"""),
    ]


# -- ingest --------------------------------------------------------------------------------


def ingest_mails(url: str, tickets: int, workdir: Path, seed: int = 7) -> list[Path]:
    """200 mails: two thirds new requests, a third replies to messages deep in the table."""
    rng = random.Random(seed)
    deep = sorted(rng.sample(range(tickets // 10, tickets // 2), INGEST_MAILS // 3))
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT t.id, t.subject, c.address FROM tickets t "
            "JOIN contacts c ON c.id = t.requester_id WHERE t.id = ANY(:ids)"), {"ids": deep})
        parents = list(rows)
    engine.dispose()
    folder = workdir / "ingest"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(INGEST_MAILS):
        msg = EmailMessage()
        if i % 3 == 0 and parents:
            ticket_id, subject, sender = parents[(i // 3) % len(parents)]
            msg["Subject"] = f"Re: {subject}"
            msg["In-Reply-To"] = f"<t{ticket_id}-1@bench.example>"
            msg["References"] = f"<t{ticket_id}-1@bench.example>"
        else:
            subject = f"{rng.choice(SUBJECTS)} ({i})"
            sender = f"new{i}@dept{i % 40}.example.org"
            msg["Subject"] = subject
        msg["From"] = sender
        msg["To"] = "support@example.com"
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = f"<bench-ingest-{seed}-{i}@client.example>"
        msg.set_content(f"Hello,\n\nabout {subject}: it still happens after a restart.\n\n"
                        f"Regards,\n{sender}\n")
        path = folder / f"{i:03d}.eml"
        path.write_bytes(msg.as_bytes())
        paths.append(path)
    return paths
