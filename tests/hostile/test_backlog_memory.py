"""A backlog costs the memory of a batch, not of the backlog (issue 13 item 7).

`helpdesk ingest` of 2,000 generated help-desk mails must peak no higher than
of 500 of them, within a generous margin: nothing of a committed mail (its
raw bytes, its parse) may be kept while the rest goes through. The mails
average 17 KB, so keeping only the raw bytes of the 1,500 more mails would
add 25 MB; `MARGIN` is half of that and six times the difference measured.
Peak RSS is read in a child process (tests/hostile/runner.py), the workers'
included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import mailgen
from tests.hostile.test_hostile_mail import make_desk

SMALL, LARGE = 500, 2000
MARGIN = 12 * 1024 * 1024


def peak_growth(tmp_path: Path, template: Path, mails: list[bytes]) -> int:
    """Peak RSS above the child's baseline, in bytes, for one `helpdesk ingest` of `mails`."""
    tmp_path.mkdir()
    report = make_desk(tmp_path, template).ingest(*mails)
    counts = report["counts"]
    assert counts["new_tickets"] + counts["replies"] == len(mails), counts
    return int(report["peak_kb"] - report["baseline_kb"]) * 1024


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_the_backlog(tmp_path: Path, sqlite_template: Path) -> None:
    """2,000 mails peak within MARGIN of what 500 of them do."""
    mails = mailgen.generate(LARGE, seed=1)
    small = peak_growth(tmp_path / "small", sqlite_template, mails[:SMALL])
    large = peak_growth(tmp_path / "large", sqlite_template, mails)
    assert large - small < MARGIN, (
        f"{SMALL} mails: +{small >> 20} MB, {LARGE} mails: +{large >> 20} MB"
    )
