"""Durations as the API writes them ("500ms", "30s", "15m", "24h", "7d", "2w")."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RE = re.compile(r"^([0-9]+)(ms|s|m|h|d|w)$")


def parse_duration(text: str) -> float:
    """Seconds in a duration; raises ValueError with the accepted form."""
    m = _RE.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: use a number and one of ms, s, m, h, d, w")
    return int(m.group(1)) * _UNITS[m.group(2)]
