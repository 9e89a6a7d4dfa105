"""Numbers and durations in words, shared by the terminal, the JSON and the HTML report."""

from __future__ import annotations

from datetime import timedelta


def format_duration(value: timedelta | None) -> str:
    """A duration for people: `45s`, `12m`, `3h 20m`, `2d 4h`; `-` for none."""
    if value is None:
        return "-"
    seconds = max(0, round(value.total_seconds()))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def format_seconds(seconds: float | None) -> str:
    """`format_duration` for a number of seconds (None: `-`)."""
    return format_duration(None if seconds is None else timedelta(seconds=seconds))


# Thresholds, divisors and suffixes; thousands only from 10,000 up (`9500` reads better).
_UNITS = ((1e12, 1e12, "T"), (1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k"))


def compact(value: float) -> str:
    """An axis label: `950`, `12k`, `1.5M`, `3G` (exact figures go in labels and tables)."""
    if value < 0:
        return "-" + compact(-value)
    for threshold, unit, suffix in _UNITS:
        if value >= threshold:
            text = f"{value / unit:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    return f"{value:g}" if value != int(value) else str(int(value))
