"""The shipped systemd unit is valid and hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "helpdesk.service"


def test_unit_has_the_promised_settings() -> None:
    """Type=notify with a watchdog, restart on failure, a dedicated user and hardening."""
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=helpdesk",
                 "StateDirectory=helpdesk", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ProtectHome=yes", "PrivateTmp=yes", "LoadCredential=imap-password:",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (with the executable at a test path)."""
    stub = tmp_path / "helpdesk"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "helpdesk.service"
    unit.write_text(UNIT.read_text().replace("/opt/helpdesk/bin/helpdesk", str(stub)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_every_credential_the_unit_loads_is_created_by_the_install_steps() -> None:
    """systemd will not start the unit if a LoadCredential file is missing: the install
    comment creates each one, and the database password is among them."""
    text = UNIT.read_text()
    loaded = re.findall(r"^LoadCredential=([\w-]+):(\S+)$", text, re.MULTILINE)
    assert ("db-password", "/etc/helpdesk/db-password") in loaded
    install = [line for line in text.splitlines() if line.startswith("#")]
    for name, path in loaded:
        assert any(f"install -m 0600 /dev/stdin {path}" in line for line in install), name
        assert any(f"/run/credentials/helpdesk.service/{name}" in line for line in install), name
