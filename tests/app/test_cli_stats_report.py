"""`helpdesk stats --html` and the terminal sparkline, against a real store of generated weeks."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from helpdesk.cli import cli
from helpdesk.report.fmt import format_seconds
from helpdesk.report.spark import sparkline
from tests.app.test_cli_stats import CONFIG
from tests.conftest import Store
from tests.reportcheck import check_page, headers, svg_titles, tables, text
from tests.workload import generate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    path = tmp_path / "helpdesk.toml"
    path.write_text(CONFIG.format(url=store.url))
    return path


@pytest.fixture
def weeks(store: Store) -> None:
    """Sixty days of tickets for four teams (one none), with hostile tags and a domain."""
    with store.sessions.begin() as session:
        generate(session, now=datetime.now(UTC) - timedelta(minutes=1), days=60)


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False,
                              env={"HELPDESK_DATABASE_URL": None})


def team(name: str | None) -> str:
    return "(no team)" if name is None else name


def day(iso: str) -> str:
    return iso[5:]   # the charts label days and weeks MM-DD


def both(config: Path, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """The JSON and the page of one run (the same figures, by construction or not)."""
    out = tmp_path / "report.html"
    result = run(config, "stats", "--days", "30", "--json", "--html", str(out))
    assert result.exit_code == 0, result.output
    return json.loads(result.output), out.read_text(encoding="utf-8")


@pytest.mark.usefixtures("weeks")
def test_every_table_figure_equals_the_json(config: Path, tmp_path: Path) -> None:
    """Per day, per week, top lists and summary: the page's figures are the --json figures."""
    data, page = both(config, tmp_path)
    tree = check_page(page)
    found = tables(tree)
    per_day, per_week = data["per_day"], data["per_week"]
    assert len(per_day["dates"]) == 31
    assert len(per_day["opened"]) == 4

    def figures(table_id: str) -> list[list[str | None]]:
        return [[c.value if c.value is not None else c.text for c in row]
                for row in found[table_id]]

    assert headers(tree, "opened-table") == [
        "Day", *(team(t["team"]) for t in per_day["opened"]), "All teams"]
    assert figures("opened-table") == [
        [date, *(str(t["counts"][i]) for t in per_day["opened"]),
         str(per_day["opened_total"][i])] for i, date in enumerate(per_day["dates"])]
    assert figures("backlog-table") == [
        [date, str(per_day["backlog"][i])] for i, date in enumerate(per_day["dates"])]
    for name in ("tags", "domains"):
        assert data[name], name
        assert [[c.text for c in row] for row in found[f"{name}-table"]] == [
            [row["key"], str(row["tickets"]), str(row["previous"]), row["trend"]]
            for row in data[name]]
    for name in ("first_response", "resolution"):
        groups = [("(all teams)", per_week[name]["all"])] + [
            (team(t["team"]), t["weeks"]) for t in per_week[name]["teams"]]
        expected = [[week, who, str(s["tickets"]), str(s["p50_seconds"]),
                     str(s["p90_seconds"])]
                    for who, spreads in groups
                    for week, s in zip(per_week["weeks"], spreads, strict=True) if s["tickets"]]
        assert len(expected) > 6
        assert figures(name.replace("_", "-") + "-table") == expected
        shown = [[c.text for c in row[3:]] for row in found[name.replace("_", "-") + "-table"]]
        assert shown == [[format_seconds(int(p50)), format_seconds(int(p90))]
                         for *_, p50, p90 in expected]   # type: ignore[arg-type]


@pytest.mark.usefixtures("weeks")
def test_every_chart_figure_equals_the_json(config: Path, tmp_path: Path) -> None:
    """Bar titles, data labels and dots carry the --json figures, and nothing else."""
    data, page = both(config, tmp_path)
    tree = check_page(page)
    per_day = data["per_day"]

    def counted(n: int) -> str:
        return f"{n} ticket" if n == 1 else f"{n} tickets"

    assert svg_titles(tree, "opened") == [
        f"{team(t['team'])}, {day(date)}: {counted(t['counts'][i])}"
        for t in per_day["opened"] for i, date in enumerate(per_day["dates"])
        if t["counts"][i]]
    assert svg_titles(tree, "backlog") == [
        f"open, {day(date)}: {counted(n)}"
        for date, n in zip(per_day["dates"], per_day["backlog"], strict=True) if n]
    assert svg_titles(tree, "tags-chart") == [
        f"{row['key']}, {window}: {counted(row[field])}"
        for row in data["tags"]
        for window, field in (("this window", "tickets"), ("previous window", "previous"))]
    weeks = data["per_week"]["weeks"]
    spreads = data["per_week"]["first_response"]["all"]
    assert svg_titles(tree, "first-response-all") == [
        f"{name}, {day(week)}: {format_seconds(s[key])}"
        for name, key in (("50th percentile", "p50_seconds"), ("90th percentile", "p90_seconds"))
        for week, s in zip(weeks, spreads, strict=True) if s["tickets"]]
    opened = next(s for s in tree.iter("{http://www.w3.org/2000/svg}svg")
                  if s.get("aria-labelledby", "").startswith("opened-"))
    totals = next(g for g in opened.iter("{http://www.w3.org/2000/svg}g")
                  if g.get("class") == "totals")
    assert [text(t) for t in totals] == [str(n) for n in per_day["opened_total"] if n]


@pytest.mark.usefixtures("weeks")
def test_summary_and_window_equal_the_json(config: Path, tmp_path: Path) -> None:
    """The headline figures and the window's dates are the --json ones."""
    data, page = both(config, tmp_path)
    tree = check_page(page)
    summary = next(s for s in tree.iter("section") if s.get("id") == "summary")
    assert [d.get("value") for d in summary.iter("data")] == [str(v) for v in (
        data["created"]["tickets"], data["created"]["previous"],
        sum(r["total"] for r in data["open"]),
        data["first_response"]["seconds"], data["first_response"]["tickets"],
        data["resolution"]["seconds"], data["resolution"]["tickets"])]
    assert data["created"]["trend"] in text(summary)
    assert data["first_response"]["human"] in text(summary)
    window = text(next(p for p in tree.iter("p") if p.get("class") == "window"))
    since, now = (datetime.fromisoformat(data[k]) for k in ("since", "now"))
    assert window.startswith(f"{since:%Y-%m-%d %H:%M} to {now:%Y-%m-%d %H:%M} UTC")
    assert per_day_sum(data) == data["created"]["tickets"]


def per_day_sum(data: dict[str, Any]) -> int:
    return int(sum(data["per_day"]["opened_total"]))


def test_an_empty_desk_gives_a_valid_report(config: Path, tmp_path: Path) -> None:
    """No tickets: exit 0, a valid page saying so, a confirmation line."""
    out = tmp_path / "empty.html"
    result = run(config, "stats", "--html", str(out))
    assert result.exit_code == 0, result.output
    assert result.output == f"report written to {out} (31 days, 0 tickets opened)\n"
    page = out.read_text(encoding="utf-8")
    check_page(page)
    assert "No tickets in this window." in page


@pytest.mark.usefixtures("weeks")
def test_html_to_standard_output(config: Path) -> None:
    """`--html -` writes the page, and only the page, to standard output."""
    result = run(config, "stats", "--html", "-")
    assert result.exit_code == 0, result.output
    check_page(result.output)
    assert result.output.endswith("</html>\n")


def test_json_and_html_cannot_share_standard_output(config: Path) -> None:
    """Both on standard output would mix two formats: a usage error (exit 2)."""
    result = run(config, "stats", "--json", "--html", "-")
    assert result.exit_code == 2
    assert "both write to standard output" in result.output


def test_an_unwritable_report_path_is_a_clear_error(config: Path, tmp_path: Path) -> None:
    """A missing directory: exit 1 naming the file; nothing left behind."""
    out = tmp_path / "missing" / "report.html"
    result = run(config, "stats", "--html", str(out))
    assert result.exit_code == 1
    assert str(out) in result.output
    assert "No such file or directory" in result.output
    assert not out.parent.exists()


def test_the_report_replaces_an_old_one_whole(config: Path, tmp_path: Path) -> None:
    """Written beside and renamed over: the old report is replaced, no temporary file stays."""
    out = tmp_path / "report.html"
    out.write_text("old")
    result = run(config, "stats", "--html", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if "report" in p.name] == ["report.html"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- the sparkline: only for a person at a terminal ---

SPARK = re.compile(r"^tickets per day\s+([▁▂▃▄▅▆▇█]+)  \(most (\d+)\)$", re.MULTILINE)


def command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "helpdesk", "--config", str(config), "stats", *args]


def environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HELPDESK_DATABASE_URL"}
    env["COLUMNS"] = "120"
    return env


def on_a_terminal(argv: list[str]) -> str:
    """Run with standard output on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    with subprocess.Popen(argv, stdout=follower, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          cwd=ROOT, env=environ()) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:   # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, err = process.communicate(timeout=60)
    os.close(leader)
    assert process.returncode == 0, err
    output = b"".join(chunks).decode().replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;]*m", "", output)   # bold headings


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # the store is not the point
@pytest.mark.usefixtures("weeks")
def test_sparkline_on_a_terminal_only(config: Path) -> None:
    """On a terminal a line of blocks shows tickets per day; piped or with --json, no line."""

    def figures() -> dict[str, Any]:
        return dict(json.loads(run(config, "stats", "--days", "30", "--json").output))

    for _ in range(2):   # once more if the runs straddled midnight UTC
        before = figures()
        shown = on_a_terminal(command(config, "--days", "30"))
        if before["per_day"]["dates"] == figures()["per_day"]["dates"]:
            break
    match = SPARK.search(shown)
    assert match, shown
    per_day = before["per_day"]["opened_total"]
    assert match.group(1) == sparkline(per_day)
    assert len(match.group(1)) == 31
    assert int(match.group(2)) == max(per_day)
    assert len(set(match.group(1))) >= 3
    # The same command into a pipe (CliRunner's output is not a terminal either).
    plain = run(config, "stats", "--days", "30").output
    assert "tickets created" in plain
    assert "tickets per day" not in plain
    as_json = on_a_terminal(command(config, "--days", "30", "--json"))
    assert "▁" not in as_json
    assert "tickets per day" not in as_json
    json.loads(as_json)
