"""Dates as mail clients print them in the header block of an inline forward.

`inline_date(text, fallback_zone)` reads "Tue, Sep 3, 2024 at 10:00 AM",
"Dienstag, 3. September 2024 10:00", "3 September 2024 at 10:00:00 CEST",
"03.09.2024 10:00" and RFC 5322 dates, in the languages forwards come in, and
returns UTC, or None when the text cannot be placed in time. Clients print
no zone for most of these: `fallback_zone` is the zone of the forward's own
Date header (`zone_of`), since the forwarder's client wrote both.

Pure and linear in the text (a Sent value can be long: the regexes only
start where a match can begin). Split from `helpdesk.mail.forwarded`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email.utils import parsedate_to_datetime

__all__ = ["inline_date", "zone_of"]

# Thunderbird writes RFC 5322 dates ("Tue, 3 Sep 2024 10:00:00 +0200").
_RFC5322_DATE_RE = re.compile(
    r"^(?:[A-Za-z]{3},\s*)?\d{1,2}\s+[A-Za-z]{3}\s+\d{2,4}\s+\d{1,2}:\d{2}"
)
_TIME_RE = re.compile(r"(?<!\d)(\d{1,2}):(\d{2})(?::(\d{2}))?(?!\d)")
_MERIDIEM_RE = re.compile(r"^\s*([ap])\.?\s?m\b\.?", re.IGNORECASE)
_NUMERIC_DATE_RE = re.compile(r"(?<!\d)(\d{1,4})([./-])(\d{1,2})\2(\d{2,4})(?!\d)")
_YEAR_RE = re.compile(r"(?<!\d)(\d{4})(?!\d)")
_DAY_RE = re.compile(r"(?<!\d)(\d{1,2})(?!\d)")
_WORD_RE = re.compile(r"[^\W\d_]+")
# White space only after GMT or UTC: a leading `\s*` made every space of a
# long run the start of a scan over the rest of the run.
_OFFSET_RE = re.compile(
    r"(?:(?:GMT|UTC)\s*)?([+-])(\d{1,2})(?::?(\d{2}))?(?!\d)", re.IGNORECASE
)

_MONTH_NAMES = {
    1: "january jan januar jänner jän janvier janv enero ene januari gennaio gen janeiro",
    2: "february feb februar février févr fév fevr febrero februari febbraio fevereiro fev",
    3: "march mar märz mär mrz mars marzo maart mrt março",
    4: "april apr avril avr abril abr aprile",
    5: "may mai mayo mei maggio mag maio",
    6: "june jun juni juin junio giugno giu junho",
    7: "july jul juli juillet juil julio luglio lug julho",
    8: "august aug août aout agosto ago augustus",
    9: "september sep sept septembre septiembre setiembre settembre set setembro",
    10: "october oct oktober okt octobre octubre ottobre ott outubro",
    11: "november nov novembre noviembre novembro",
    12: "december dec dezember dez décembre déc decembre diciembre dic dicembre dezembro",
}
_MONTHS = {word: month for month, words in _MONTH_NAMES.items() for word in words.split()}
# Zone abbreviations that clients print after the time (Apple Mail: "CEST").
_ZONES = {
    "utc": 0, "gmt": 0, "ut": 0, "z": 0, "wet": 0, "west": 60, "bst": 60, "cet": 60,
    "mez": 60, "cest": 120, "mesz": 120, "eet": 120, "eest": 180, "est": -300,
    "edt": -240, "cst": -360, "cdt": -300, "mst": -420, "mdt": -360, "pst": -480,
    "pdt": -420,
}  # fmt: skip


def inline_date(text: str, fallback_zone: tzinfo | None) -> datetime | None:
    """The date of a forward's header block in UTC, or None when it cannot be read."""
    text = text.replace("*", " ").strip()
    if not text:
        return None
    if _RFC5322_DATE_RE.match(text):
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            parsed = None
        if parsed is not None:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    return _loose_date(text, fallback_zone)


def zone_of(date_header: str | None) -> tzinfo | None:
    """The UTC offset of a Date header (the forwarder's time zone), or None."""
    if not date_header:
        return None
    try:
        return parsedate_to_datetime(date_header).tzinfo
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _loose_date(text: str, fallback_zone: tzinfo | None) -> datetime | None:
    """Dates as mail clients print them in many languages, e.g.
    "Tue, Sep 3, 2024 at 10:00 AM", "Dienstag, 3. September 2024 10:00",
    "3 September 2024 at 10:00:00 CEST", "03.09.2024 10:00"."""
    time_match = _TIME_RE.search(text)
    if time_match is None:
        return None
    hour, minute = int(time_match.group(1)), int(time_match.group(2))
    second = int(time_match.group(3) or 0)
    after = text[time_match.end() :]
    meridiem = _MERIDIEM_RE.match(after)
    if meridiem is not None:
        hour = hour % 12 + (12 if meridiem.group(1).lower() == "p" else 0)
        after = after[meridiem.end() :]
    day_month_year = _day_month_year(text[: time_match.start()] + " " + after, meridiem is not None)
    zone = _zone(after) or fallback_zone
    if day_month_year is None or zone is None:
        return None
    year, month, day = day_month_year
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _day_month_year(text: str, american: bool) -> tuple[int, int, int] | None:
    numeric = _NUMERIC_DATE_RE.search(text)
    if numeric is not None:
        first, separator, second, third = numeric.groups()
        if len(first) == 4:  # ISO 8601: 2024-09-03
            return int(first), int(second), int(third)
        year = _full_year(third)
        if separator == "/" and american:  # US Outlook: 9/3/2024 10:00 AM
            return year, int(first), int(second)
        return year, int(second), int(first)
    months = [_MONTHS[word] for word in _words(text) if word in _MONTHS]
    year_match = _YEAR_RE.search(text)
    if not months or year_match is None:
        return None
    rest = text[: year_match.start()] + " " + text[year_match.end() :]
    day_match = _DAY_RE.search(rest)
    if day_match is None:
        return None
    # The last month word wins: French and Spanish abbreviate Tuesday as "mar".
    return int(year_match.group(1)), months[-1], int(day_match.group(1))


def _words(text: str) -> list[str]:
    return [word.lower() for word in _WORD_RE.findall(text)]


def _full_year(text: str) -> int:
    year = int(text)
    return year + 2000 if year < 100 else year


def _zone(text: str) -> tzinfo | None:
    """A zone printed after the time: "+0200", "GMT+2", "UTC-05:00" or "CEST"."""
    offset = _OFFSET_RE.search(text)
    if offset is not None:
        sign = -1 if offset.group(1) == "-" else 1
        hours = int(offset.group(2))
        minutes = int(offset.group(3) or 0)
        if hours > 14 or minutes > 59:
            return None
        return timezone(sign * timedelta(hours=hours, minutes=minutes))
    for word in _words(text):
        if word in _ZONES:
            return timezone(timedelta(minutes=_ZONES[word]))
    return None
