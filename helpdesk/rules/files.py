"""Reading a rules directory: ``*.toml`` in file-name order into a validated `RuleSet`.

This is the only place in `helpdesk.rules` that touches the file system; it is
called at start-up, by ``helpdesk rules check`` and on reload (where a
`RuleError` keeps the previous rules in force).

* Files are read in file-name order (``10-security.toml`` before
  ``20-password-reset.toml``), so the names say the evaluation order.
* Hidden files (editor locks and backups such as ``.#10-x.toml``) are skipped.
* A missing directory is an empty `RuleSet`: a help desk without rules still
  stores every mail as a ticket. A path that exists but is not a directory is
  an error.
* Unreadable files, invalid UTF-8 and TOML syntax errors (tomllib's message
  names line and column) are problems like any other: every file is read and
  every problem is collected before one `RuleError` is raised.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path

from helpdesk.rules.schema import KnownNames, RuleError, RuleProblem, RuleSet, build_rule_set

__all__ = ["load_rules", "rule_files"]


def rule_files(directory: Path) -> list[Path]:
    """The rule files of `directory`, in evaluation order."""
    paths = [
        path
        for path in directory.iterdir()
        if path.suffix == ".toml" and not path.name.startswith(".") and path.is_file()
    ]
    return sorted(paths, key=lambda path: path.name)


def load_rules(
    directory: Path,
    *,
    teams: Collection[str],
    agents: Collection[str],
    templates: Collection[str],
) -> RuleSet:
    """Read and validate every rule file of `directory`; raise `RuleError` listing all problems."""
    if not directory.exists():
        return RuleSet()
    if not directory.is_dir():
        raise RuleError([RuleProblem(directory, None, "", "is not a directory")])
    try:
        paths = rule_files(directory)
    except OSError as error:
        raise RuleError([RuleProblem(directory, None, "", _os_problem(error))]) from None
    documents: list[tuple[Path, Mapping[str, object]]] = []
    problems: list[RuleProblem] = []
    for path in paths:
        try:
            documents.append((path, _read(path)))
        except _Unreadable as unreadable:
            problems.append(RuleProblem(path, None, "", str(unreadable)))
    known = KnownNames.of(teams=teams, agents=agents, templates=templates)
    return build_rule_set(documents, known, problems=problems)


class _Unreadable(Exception):
    """A rule file could not be read or is not TOML; the message says why."""


def _read(path: Path) -> Mapping[str, object]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise _Unreadable(_os_problem(error)) from None
    except UnicodeDecodeError as error:
        # TOML files are UTF-8 by definition (TOML 1.0, "Spec").
        raise _Unreadable(f"is not UTF-8: byte {error.start} cannot be decoded") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _Unreadable(f"invalid TOML: {error}") from None


def _os_problem(error: OSError) -> str:
    return f"cannot be read: {error.strerror or error}"
