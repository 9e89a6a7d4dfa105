"""A plain `pip install` (no extras) gives a working `helpdesk`: what a new user runs first.

The rest of the suite runs with the test extra installed, so it cannot see a
runtime import of a test-only package; this test builds the wheel, installs it
into a fresh virtual environment without extras, and runs the README's demo.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT)
    (built,) = out.glob("helpdesk-*.whl")
    return built


@pytest.fixture(scope="module")
def plain_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and its runtime dependencies only."""
    venv = tmp_path_factory.mktemp("plain") / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", wheel)
    return venv


def test_wheel_carries_the_example_rules_templates_and_demo_mail(wheel: Path) -> None:
    """The demo needs its sample mail, rules and templates inside the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "helpdesk/demo_mail/01-new-request.eml" in names
    assert "helpdesk/examples/rules/90-acknowledge.toml" in names
    assert "helpdesk/examples/templates/acknowledge.txt" in names
    assert not any(name.startswith("tests/") for name in names)


def test_plain_install_has_no_test_tools(plain_venv: Path) -> None:
    """The venv really lacks the test extra, so the next test proves what it claims."""
    result = subprocess.run([plain_venv / "bin" / "python", "-c", "import pytest"],
                            capture_output=True, check=False)
    assert result.returncode != 0


def test_version_and_demo_run_from_a_plain_install(plain_venv: Path, tmp_path: Path) -> None:
    """`helpdesk --version` and `helpdesk demo` work without the test extra."""
    helpdesk = plain_venv / "bin" / "helpdesk"
    version = run(helpdesk, "--version", cwd=tmp_path)
    assert version.startswith("helpdesk, version ")
    output = run(helpdesk, "demo", cwd=tmp_path, timeout=120)
    assert "01-new-request.eml" in output
    assert "opened ticket [#1]" in output
    # The packaged example rules ran: the new request was acknowledged.
    assert "auto_reply:acknowledge" in output
