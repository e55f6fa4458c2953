"""Times as the Kubernetes API writes them, and as kubectl shows ages."""

from __future__ import annotations

import datetime as dt
import re

_RELATIVE = re.compile(r"now(?:\s*-\s*((?:\d+[dhms])+))?")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def utcnow() -> dt.datetime:
    """Return the current time in UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def format_time(moment: dt.datetime) -> str:
    """Return ``moment`` as RFC 3339 in UTC, e.g. ``2026-12-04T15:04:05Z``."""
    moment = moment.astimezone(dt.timezone.utc).replace(microsecond=0)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_log_time(moment: dt.datetime) -> str:
    """Return ``moment`` as the kubelet prefixes log lines (RFC 3339, nanos)."""
    moment = moment.astimezone(dt.timezone.utc)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}000".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def parse_time(text: str) -> dt.datetime | None:
    """Parse an RFC 3339 time; ``None`` if ``text`` is not one."""
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment


def resolve_relative(text: str, now: dt.datetime) -> str | None:
    """Turn ``now``, ``now-5m`` or ``now-2h30m`` into an RFC 3339 time.

    Returns ``None`` when ``text`` is not such an expression.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 12, 4, 15, 0, tzinfo=dt.timezone.utc)
    >>> resolve_relative("now-1h30m", t)
    '2026-12-04T13:30:00Z'
    """
    match = _RELATIVE.fullmatch(text.strip())
    if match is None:
        return None

    seconds = 0
    for amount, unit in re.findall(r"(\d+)([dhms])", match.group(1) or ""):
        seconds += int(amount) * _UNIT_SECONDS[unit]
    return format_time(now - dt.timedelta(seconds=seconds))


def human_duration(seconds: float) -> str:
    """Return an age the way kubectl prints one: ``45s``, ``5m3s``, ``2d4h``."""
    if seconds < -1:
        return "<invalid>"
    whole = max(int(seconds), 0)
    if whole < 120:
        return f"{whole}s"

    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"

    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{hours // 24 // 365}y"


def age(timestamp: str | None, now: dt.datetime) -> str:
    """Return the kubectl age of an RFC 3339 ``timestamp``, or ``<unknown>``."""
    moment = parse_time(timestamp) if timestamp else None
    if moment is None:
        return "<unknown>"
    return human_duration((now - moment).total_seconds())
