"""A throwaway PostgreSQL cluster in a temp dir (recipe: shared/docs/test-servers.md §4)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.servers import free_port


def find_bindir() -> str | None:
    """The newest /usr/lib/postgresql/N/bin that has initdb, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = sorted(found, key=lambda p: int(p.split("/")[-3]))[-1]
    return os.path.dirname(newest)


class PgServer:
    """initdb + pg_ctl start on a free port; fsync off, for tests only."""

    def __init__(self, bindir: str, user: str = "test") -> None:
        self.bindir = bindir
        self.db_user = user
        self.port = 0
        # Not pytest's tmp_path: as root, postgres must traverse the directory.
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = Path(tempfile.mkdtemp(prefix="pg-test-", dir=base))
        self.data = self.dir / "data"
        self.root = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = (["runuser", "-u", "postgres", "--"] if self.root else []) + list(args)
        return subprocess.run(cmd, check=True, capture_output=True, text=True)

    def start(self, attempts: int = 3) -> None:
        if self.root:
            pw = pwd.getpwnam("postgres")
            os.chmod(self.dir, 0o755)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(f"{self.bindir}/initdb", "-D", str(self.data), "-U", self.db_user, "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        for attempt in range(attempts):
            self.port = free_port()
            opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    "-c max_connections=200")
            try:
                self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-l",
                          str(self.dir / "pg.log"), "-o", opts, "-w", "-t", "30", "start")
                return
            except subprocess.CalledProcessError:
                if attempt == attempts - 1:
                    raise

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.db_user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-m", "immediate", "-w",
                      "stop")

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
