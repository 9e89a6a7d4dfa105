"""What a SIGHUP restarts: the pure comparison of the running settings with the new file's."""

from __future__ import annotations

from pathlib import Path

from helpdesk.daemon.reload import WorkerPlan, needs_restart, plan_workers, source_names
from helpdesk.settings import Settings, load_settings


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "helpdesk.toml"
    path.write_text(text)
    return load_settings(path, {})


def mailbox(name: str, host: str = "imap.example.org") -> str:
    return (f'[[mailbox]]\nname = "{name}"\nhost = "{host}"\nusername = "{name}"\n'
            f'password = "secret"\n')


def maildir(name: str, tmp_path: Path) -> str:
    return f'[[maildir]]\nname = "{name}"\npath = "{tmp_path / name}"\n'


def test_unchanged_workers_keep_running(tmp_path: Path) -> None:
    """The same file again: nothing stops, nothing starts."""
    text = mailbox("support") + maildir("local", tmp_path)
    old, new = load(tmp_path, text), load(tmp_path, text)
    assert plan_workers(old, new, ["imap:support", "maildir:local"]) == WorkerPlan((), ())


def test_changed_removed_and_new_workers(tmp_path: Path) -> None:
    """A changed mailbox restarts, a removed one stops, a new one starts; others keep running."""
    old = load(tmp_path, mailbox("support") + mailbox("security") + maildir("local", tmp_path))
    new = load(tmp_path, mailbox("support", host="imap2.example.org") + mailbox("access")
               + maildir("local", tmp_path))
    plan = plan_workers(old, new, ["imap:support", "imap:security", "maildir:local"])
    assert sorted(plan.retire) == ["imap:security", "imap:support"]
    assert sorted(plan.start) == ["imap:access", "imap:support"]


def test_a_configured_worker_that_is_not_running_is_started(tmp_path: Path) -> None:
    """A worker missing from the running set (retired by an earlier failure) starts again."""
    text = mailbox("support")
    plan = plan_workers(load(tmp_path, text), load(tmp_path, text), [])
    assert plan == WorkerPlan((), ("imap:support",))


def test_what_only_a_restart_applies(tmp_path: Path) -> None:
    """Database URL, LMTP listener, parsing workers and metrics are reported, nothing else."""
    old = load(tmp_path, mailbox("support"))
    new = load(tmp_path, mailbox("support", host="other.example.org")
               + '[database]\nurl = "sqlite:///other.db"\n[intake]\nworkers = 3\n'
               + '[lmtp]\nport = 2424\n[metrics]\nlisten = "127.0.0.1:9308"\n')
    assert needs_restart(old, new) == ["database.url", "lmtp", "intake.workers", "metrics"]
    assert needs_restart(old, load(tmp_path, mailbox("support", host="x.example.org"))) == []


def test_source_names_label_every_source(tmp_path: Path) -> None:
    """Metrics label values: every mailbox and Maildir, and `lmtp` when it listens."""
    settings = load(tmp_path, mailbox("support") + maildir("local", tmp_path)
                    + "[lmtp]\nport = 2424\n")
    assert source_names(settings) == ["support", "local", "lmtp"]
