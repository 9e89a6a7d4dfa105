"""Rendering for the CLI: aligned tables for people, JSON for scripts. Nothing else prints."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click


def to_jsonable(value: Any) -> Any:
    """Dates as ISO 8601 strings; everything else as json knows it."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def emit_json(data: Any) -> None:
    click.echo(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False))


def when(value: datetime | None) -> str:
    """A compact UTC timestamp for tables."""
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, wrap_last: bool = True) -> None:
    """Print rows under headers, columns aligned; the last column is cut to the terminal."""
    cells = [[("-" if c is None or c == "" else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    width = shutil.get_terminal_size((120, 24)).columns
    used = sum(widths[:-1]) + 2 * (len(headers) - 1)
    last = max(20, width - used) if wrap_last else 10_000

    def line(values: Sequence[str]) -> str:
        head = "  ".join(v.ljust(widths[i]) for i, v in enumerate(values[:-1]))
        tail = values[-1]
        if len(tail) > last:
            tail = tail[: last - 1] + "…"
        return f"{head}  {tail}" if head else tail

    click.echo(click.style(line(list(headers)), bold=True))
    for row in cells:
        click.echo(line(row))


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """Print `label: value` lines with aligned labels."""
    width = max(len(label) for label, _ in pairs)
    for label, value in pairs:
        shown = "-" if value is None or value == "" else value
        click.echo(f"{click.style(label.ljust(width), bold=True)}  {shown}")
