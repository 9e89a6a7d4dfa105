"""A throwaway Dovecot 2.3 IMAP server in a temp dir (recipe: shared/docs/test-servers.md §2).

Runs as root (mail owned by the `dovecot` user) or as any other user, with or
without TLS. Its directory is on /dev/shm when that exists: Maildir writes are
2-6x faster there than on this machine's disk. Nothing outside that directory
is read or written (base_dir, state_dir, log_path and instance_name are set).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

CONF_TEMPLATE = """\
base_dir = {d}/run
state_dir = {d}/state
instance_name = {instance}
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
{user_block}
service anvil {{
  chroot =
  # no growing per-IP delay after failed logins (gotcha D9)
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
{imaps_ssl}  }}
}}
{ssl_block}
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%d/%n
}}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
mail_fsync = never
mailbox_idle_check_interval = 1 secs
namespace inbox {{
  inbox = yes
  separator = /
}}
"""

USERS = {"support@example.test": "support-pw", "it@example.test": "it-pw"}


def available() -> bool:
    return os.access(DOVECOT, os.X_OK)


def _workdir() -> Path:
    # Not pytest's tmp_path when root: /tmp/pytest-of-root is 0700 and the
    # unprivileged Dovecot processes must traverse it (gotcha D3).
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return Path(tempfile.mkdtemp(prefix="dovecot-test-", dir=base))


class DovecotServer:
    """One Dovecot instance; `start()`, `stop()`/`kill()`, `restart()` on the same port."""

    def __init__(
        self, users: dict[str, str] | None = None, *, tls: bool = False, extra_conf: str = ""
    ) -> None:
        self.users = dict(users or USERS)
        self.tls = tls
        self.extra_conf = extra_conf
        self.dir = _workdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.imaps_port = 0

    @property
    def cert(self) -> Path:
        """The self-signed certificate (for localhost and 127.0.0.1) when tls is on."""
        return self.dir / "cert.pem"

    def _ids(self) -> tuple[int, int, str]:
        if os.geteuid() == 0:
            mail = pwd.getpwnam("dovecot")  # mail must not be stored as uid 0 (D2)
            return mail.pw_uid, mail.pw_gid, (
                "default_internal_user = dovecot\ndefault_login_user = dovenull"
            )
        uid, gid = os.getuid(), os.getgid()
        user, group = pwd.getpwuid(uid).pw_name, grp.getgrgid(gid).gr_name
        return uid, gid, (
            f"default_internal_user = {user}\n"
            f"default_internal_group = {group}\n"
            f"default_login_user = {user}"
        )

    def write_users(self) -> None:
        """(Re)write the passwd-file; Dovecot re-reads it when its mtime or size changed."""
        path = self.dir / "users"
        path.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()))
        os.chmod(path, 0o644)

    def _write_config(self) -> None:
        d = self.dir
        for sub in ("run", "state", "mail"):
            (d / sub).mkdir(exist_ok=True)
        self.write_users()
        uid, gid, user_block = self._ids()
        if os.geteuid() == 0:
            os.chmod(d, 0o755)
            os.chown(d / "mail", uid, gid)
        ssl_block, imaps_ssl = "ssl = no\ndisable_plaintext_auth = no", ""
        if self.tls:
            if not self.cert.exists():
                self._make_cert()
            ssl_block = (f"ssl = yes\nssl_cert = <{d}/cert.pem\nssl_key = <{d}/key.pem\n"
                         "disable_plaintext_auth = no")
            imaps_ssl = "    ssl = yes\n"
        (d / "dovecot.conf").write_text(CONF_TEMPLATE.format(
            d=d, instance=f"dovecot-test-{os.getpid()}-{self.port}", port=self.port,
            imaps_port=self.imaps_port if self.tls else 0, imaps_ssl=imaps_ssl,
            ssl_block=ssl_block, user_block=user_block, uid=uid, gid=gid) + self.extra_conf)

    def _make_cert(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "2",
             "-keyout", str(self.dir / "key.pem"), "-out", str(self.cert)],
            check=True, capture_output=True,
        )

    @property
    def conf(self) -> Path:
        return self.dir / "dovecot.conf"

    def start(self, timeout: float = 10.0, attempts: int = 3) -> float:
        """Start on fresh free ports (retrying when one was taken); seconds until the greeting."""
        for attempt in range(attempts):
            self.port = free_port()
            self.imaps_port = free_port() if self.tls else 0
            try:
                return self._start_once(timeout)
            except RuntimeError as exc:  # the port race of gotcha D8
                if "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def restart(self, timeout: float = 10.0) -> float:
        """Stop if running and start again on the same ports, keeping the mail."""
        self.stop()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._start_once(timeout)
            except RuntimeError as exc:
                # Children of a killed server may hold the port for a moment.
                if "Address already in use" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _start_once(self, timeout: float) -> float:
        self._write_config()
        # A SIGKILLed master leaves its pid file; a reused pid would make
        # Dovecot think it is still running.
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "run" / "master.pid").unlink()
        started = time.monotonic()
        with open(self.dir / "dovecot.stderr", "wb") as err:
            self.proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True,  # its own process group, for killpg (D7)
            )
        while time.monotonic() < started + timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("dovecot exited:\n" + self.logs())
            if self._greets():
                return time.monotonic() - started
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("dovecot did not greet in time:\n" + self.logs())

    def _greets(self) -> bool:
        # The master binds before the login processes serve: wait for "* OK" (D6).
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(100).startswith(b"* OK")
        except OSError:
            return False

    def logs(self) -> str:
        return "".join(
            (self.dir / n).read_text(errors="replace")
            for n in ("dovecot.stderr", "dovecot.log")
            if (self.dir / n).exists()
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 0.5) -> None:
        """SIGTERM to the process group; SIGKILL when it takes longer than `grace` (D7)."""
        if not self.running:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
