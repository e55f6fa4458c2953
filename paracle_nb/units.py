"""Parsing and formatting of the quantities runbooks meet.

Kubernetes quantities (``512Mi``, ``500m``), durations as an SRE writes
them (``10min``, ``5m``, ``1h30m``) and byte counts for humans.
"""

from __future__ import annotations

import re

from paracle_nb.errors import ParameterError

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P|m|n|u|)$")
_DURATION_PART = re.compile(
    r"(\d+(?:\.\d+)?)\s*"
    r"(ms|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)(?![a-z])"
)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_quantity(text: str | int | float | None) -> float | None:
    """Return a Kubernetes quantity as a plain number (bytes, or cores).

    >>> parse_quantity("512Mi")
    536870912.0
    >>> parse_quantity("250m")
    0.25
    """
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * {"m": 1e-3, "u": 1e-6, "n": 1e-9, "": 1.0}[suffix]


def parse_duration(text: str | int | float) -> float:
    """Return a duration in seconds; a bare number is seconds.

    >>> parse_duration("10min")
    600.0
    >>> parse_duration("1h30m")
    5400.0
    """
    if isinstance(text, bool):
        raise ParameterError(f"not a duration: {text!r} (write e.g. '10min', '1h')")
    if isinstance(text, (int, float)):
        return float(text)
    cleaned = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        return float(cleaned)
    total, consumed = 0.0, 0
    for part in _DURATION_PART.finditer(cleaned):
        if cleaned[consumed : part.start()].strip():
            break
        unit = part.group(2)
        key = "ms" if unit == "ms" else unit[0]
        total += float(part.group(1)) * _UNIT_SECONDS[key]
        consumed = part.end()
    if consumed == 0 or cleaned[consumed:].strip():
        raise ParameterError(f"not a duration: {text!r} (write e.g. '10min', '1h')")
    return total


def format_bytes(value: float | int | None) -> str:
    """Return a byte count the way an engineer reads it: ``31.9 MiB``."""
    if value is None:
        return "-"
    number = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(number) < 1024 or unit == "TiB":
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} TiB"


def format_duration(seconds: float | None) -> str:
    """Return seconds as ``2h05m``, ``4m10s`` or ``12s``."""
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
