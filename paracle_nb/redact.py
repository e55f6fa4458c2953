"""Scrubbing of secrets from everything a run writes.

A scrubbed secret becomes ``[REDACTED sha256:1a2b3c4d]``: the fingerprint
lets two artifacts be compared (same key? same password?) without showing
either value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from paracle_nb.secrets import fingerprint

SECRET_NAME = re.compile(
    r"(pass(word)?|secret|token|api[_-]?key|private[_-]?key|credential|"
    r"database_url|redis_url|dsn|auth)", re.IGNORECASE)

_PATTERNS = [
    # scheme://user:password@host
    re.compile(r"(?P<keep>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s/]+)(?=@)",
               re.IGNORECASE),
    # Authorization headers and bearer tokens
    re.compile(r"(?P<keep>\bbearer\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})",
               re.IGNORECASE),
    # Provider API keys: sk-..., sk-ant-..., and similar prefixed keys
    re.compile(r"(?P<keep>)(?P<secret>\b(?:sk|rk|pk)-(?:ant-|proj-|lab-)?"
               r"[A-Za-z0-9_-]{12,})"),
    # name=value / name: value where the name says it is secret
    re.compile(r"(?P<keep>\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key)"
               r"[\w.-]*[\"']?\s*[=:]\s*[\"']?)(?P<secret>[^\s\"',;}]{4,})",
               re.IGNORECASE),
]


def marker(value: str) -> str:
    """Return what stands in the place of a scrubbed secret."""
    return f"[REDACTED sha256:{fingerprint(value)}]"


class Scrubber:
    """Replaces known secret values and secret-looking patterns in text."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self.known: set[str] = {k for k in known if k and len(k) >= 4}
        self.count = 0

    def add(self, *values: str | None) -> None:
        """Remember exact values to scrub wherever they appear."""
        self.known.update(v for v in values if v and len(v) >= 4)

    def text(self, text: str) -> str:
        """Return ``text`` with every secret replaced by its marker."""
        for value in sorted(self.known, key=len, reverse=True):
            if value in text:
                self.count += text.count(value)
                text = text.replace(value, marker(value))
        for pattern in _PATTERNS:
            text = pattern.sub(self._replace, text)
        return text

    def _replace(self, match: re.Match[str]) -> str:
        secret = match.group("secret")
        if secret.startswith("[REDACTED"):
            return match.group(0)
        self.count += 1
        return f"{match.group('keep')}{marker(secret)}"

    def obj(self, value: Any, key: str = "") -> Any:
        """Return a copy of a JSON-like object with secrets scrubbed.

        Values under secret-sounding keys, Kubernetes Secret ``data``, and
        env entries named like secrets are replaced whole.
        """
        if isinstance(value, dict):
            if value.get("kind") == "Secret":
                return self._secret_object(value)
            if "name" in value and "value" in value and SECRET_NAME.search(
                    str(value["name"])):
                return {**value, "value": self._whole(str(value["value"]))}
            return {k: self.obj(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.obj(v, key) for v in value]
        if isinstance(value, str):
            if key and SECRET_NAME.search(key) and not key.endswith(("Ref", "_file")):
                return self._whole(value)
            return self.text(value)
        return value

    def _whole(self, value: str) -> str:
        if not value or value.startswith("[REDACTED"):
            return value
        self.count += 1
        return marker(value)

    def _secret_object(self, secret: dict[str, Any]) -> dict[str, Any]:
        cleaned = {k: v for k, v in secret.items() if k not in ("data", "stringData")}
        for field in ("data", "stringData"):
            if field in secret:
                cleaned[field] = {k: self._whole(str(v)) for k, v in
                                  (secret[field] or {}).items()}
        cleaned["metadata"] = {
            k: v for k, v in secret.get("metadata", {}).items()
            if k != "annotations"}
        return cleaned
