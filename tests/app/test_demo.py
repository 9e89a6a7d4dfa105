"""`helpdesk demo` works on a fresh machine with nothing configured."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from helpdesk.cli import cli


def test_demo_makes_tickets_and_quarantines_the_malformed_mail(tmp_path: Path) -> None:
    """The demo threads the sample replies and quarantines the broken one."""
    runner = CliRunner()
    result = runner.invoke(cli, ["demo", "--keep", str(tmp_path / "demo")],
                           catch_exceptions=False, env={"HELPDESK_DATABASE_URL": None})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    outcome = {line.split()[0]: " ".join(line.split()[1:]) for line in lines if ".eml" in line}
    assert outcome["01-new-request.eml"] == "opened ticket [#1]"
    assert outcome["02-reply-in-reply-to.eml"] == "added to ticket [#1]"
    assert outcome["03-outlook-tag-only.eml"] == "added to ticket [#1]"
    assert outcome["06-malformed.eml"].startswith("quarantined")
    assert (tmp_path / "demo" / "demo.db").exists()
