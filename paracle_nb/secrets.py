"""Secrets held by a target: usable by the helpers, never rendered."""

from __future__ import annotations

import hashlib
import pathlib


def fingerprint(value: str) -> str:
    """Return a short, stable fingerprint of a secret, safe to show."""
    return hashlib.sha256(value.encode()).hexdigest()[:8]


class Secret:
    """A secret value whose repr and str never show it.

    >>> s = Secret("hunter2")
    >>> str(s).startswith("<secret")
    True
    """

    __slots__ = ("_value", "_path")

    def __init__(self, value: str | None = None, *, path: str | None = None
                 ) -> None:
        self._value = value
        self._path = path

    @classmethod
    def from_file(cls, path: str) -> Secret:
        """A secret read from ``path`` when first needed, not before."""
        return cls(path=path)

    def reveal(self) -> str:
        """Return the value, for handing to a client library only."""
        if self._value is None:
            self._value = self._read()
        return self._value

    def _read(self) -> str:
        from paracle_nb.errors import ParameterError

        assert self._path is not None
        try:
            return pathlib.Path(self._path).expanduser().read_text().strip()
        except OSError as exc:
            raise ParameterError(
                f"cannot read password file {self._path}: {exc.strerror}"
            ) from None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.reveal())

    def __repr__(self) -> str:
        if self._value is None:
            return f"<secret from file {self._path}>"
        return f"<secret sha256:{self.fingerprint}>"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return self._path is not None or bool(self._value)
