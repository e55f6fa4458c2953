"""Secrets held by a target: usable by the helpers, never rendered."""

from __future__ import annotations

import hashlib


def fingerprint(value: str) -> str:
    """Return a short, stable fingerprint of a secret, safe to show."""
    return hashlib.sha256(value.encode()).hexdigest()[:8]


class Secret:
    """A secret value whose repr and str never show it.

    >>> s = Secret("hunter2")
    >>> str(s).startswith("<secret")
    True
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the value, for handing to a client library only."""
        return self._value

    @property
    def fingerprint(self) -> str:
        return fingerprint(self._value)

    def __repr__(self) -> str:
        return f"<secret sha256:{self.fingerprint}>"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)
