"""Durations as the API writes them ("500ms", "30s", "15m", "24h", "7d", "2w"), and the
seconds since a time the API wrote (RFC 3339, as conditions and timestamps are)."""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RE = re.compile(r"^([0-9]+)(ms|s|m|h|d|w)$")


def parse_duration(text: str) -> float:
    """Seconds in a duration; raises ValueError with the accepted form."""
    m = _RE.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: use a number and one of ms, s, m, h, d, w")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 UTC time as the API server writes it ("2026-01-02T03:04:05Z")."""
    if not text:
        return None
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def format_time(t: dt.datetime) -> str:
    """``t`` as the API server writes times (`parse_time` reads it back), to the second."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_since(text: str | None) -> float | None:
    t = parse_time(text)
    return None if t is None else (dt.datetime.now(dt.UTC) - t).total_seconds()
