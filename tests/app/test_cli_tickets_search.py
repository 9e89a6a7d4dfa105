"""`helpdesk tickets search QUERY [--status ...] [--limit N] [--json]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.test_cli import CONFIG, run
from tests.conftest import Store
from tests.mailfactory import make_mail


@pytest.fixture
def config(store: Store, tmp_path: Path) -> Path:
    path = tmp_path / "helpdesk.toml"
    path.write_text(CONFIG.format(url=store.url))
    mails = [
        make_mail(subject="Drucker im 3. Stock", body="Der Drucker zeigt Fehler E-104.\n",
                  sender="Jürgen <juergen@example.de>", message_id="<a@x>"),
        make_mail(subject="VPN drops", body="Since the printer update the VPN drops.\n",
                  sender="Sam <sam@example.org>", message_id="<b@x>"),
    ]
    for raw in mails:
        assert run(path, "ingest", stdin=raw).exit_code == 0
    return path


def test_search_table(config: Path) -> None:
    """Each hit: reference, status, date and subject, then the snippet with the match marked."""
    result = run(config, "tickets", "search", "drucker")
    assert result.exit_code == 0, result.output
    head, snippet = result.output.splitlines()
    assert head.startswith("[#1] new ")
    assert head.endswith("  Drucker im 3. Stock")
    assert snippet.startswith("    ")
    assert "**Drucker**" in snippet


def test_search_json_and_filters(config: Path) -> None:
    """--json gives the documented keys; --status and --limit narrow the list."""
    rows = json.loads(run(config, "tickets", "search", "drucker or printer", "--json").output)
    assert sorted(r["id"] for r in rows) == [1, 2]
    assert {"id", "reference", "subject", "status", "priority", "updated_at", "score",
            "message_row_id", "snippet"} <= set(rows[0])
    assert len(json.loads(run(config, "tickets", "search", "drucker or printer", "--limit", "1",
                              "--json").output)) == 1
    assert run(config, "tickets", "status", "2", "pending").exit_code == 0
    pending = json.loads(run(config, "tickets", "search", "drucker or printer", "--status",
                             "pending", "--json").output)
    assert [(r["id"], r["status"]) for r in pending] == [(2, "pending")]


def test_no_match_and_bad_queries(config: Path) -> None:
    """No hit says so (exit 0); a query of exclusions only is exit 1; a bad status exit 2."""
    none = run(config, "tickets", "search", "kaffeemaschine")
    assert (none.exit_code, none.output) == (0, "No tickets match.\n")
    assert run(config, "tickets", "search", "kaffeemaschine", "--json").output == "[]\n"
    refused = run(config, "tickets", "search", "--", "-printer")
    assert refused.exit_code == 1
    assert "nothing to search for" in refused.output
    assert run(config, "tickets", "search", "x", "--status", "done").exit_code == 2
