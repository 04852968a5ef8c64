"""Option values with units, shared by the daemon's options (`settings.py`), the invite routes and
the `invite` commands: durations (`90s`, `15m`, `1h30m`, `2d`) and whole-number caps.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | None, option: str, default: float) -> float:
    """`90`, `90s`, `15m`, `1h30m`, `2d` → seconds; 0 means off/never. ValueError otherwise."""
    if text is None:
        return default
    raw = str(text).strip().lower()
    parts = _DURATION.findall(raw)
    if not raw or "".join(n + u for n, u in parts) != raw:
        raise ValueError(
            f"{option}: {str(text)[:40]!r} is not a duration (e.g. 90s, 15m, 1h, 2d, 0)"
        )
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds > 10 * 365 * 86400:
        raise ValueError(f"{option}: {str(text)[:40]!r} is longer than ten years")
    return seconds


def parse_count(text: str | int | None, option: str, default: int) -> int:
    """A whole-number option such as --api-self-service-max; 0 means no cap."""
    if text is None:
        return default
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{option}: {str(text)[:40]!r} is not a whole number") from None
    if not 0 <= value <= 10_000_000:
        raise ValueError(f"{option}: {value} must be between 0 (no cap) and 10000000")
    return value
