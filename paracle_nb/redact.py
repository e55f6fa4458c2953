"""Scrubbing of secrets from everything a run writes.

A scrubbed secret becomes ``[REDACTED sha256:1a2b3c4d]``: the fingerprint
lets two artifacts be compared (same key? same password?) without showing
either value.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from paracle_nb.secrets import (
    environment_secrets,
    fingerprint,
    kubeconfig_secrets,
    secret_object_values,
    with_url_password,
)

if TYPE_CHECKING:
    from paracle_nb.target import Target

log = logging.getLogger(__name__)

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
    # name=value / name: value where the name ends like a credential's:
    # DB_PASSWORD=..., api_key: ..., but not secret_name or max_tokens.
    re.compile(r"(?P<keep>\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key)"
               r"(?:[_-]?(?:key|value))?[\"']?\s*[=:]\s*[\"']?)"
               r"(?P<secret>[^\s\"',;}]{4,})",
               re.IGNORECASE),
]

# Output data that is binary (base64): no secret can be read in it as text.
_BINARY_MIME = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


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
        # Known shortcoming: a known value is found only as written; escaped
        # (URL-encoded, JSON \u escapes) or wrapped across lines it is caught
        # only when its shape matches one of the patterns.
        for value in sorted(self.known, key=len, reverse=True):
            if value in text:
                self.count += text.count(value)
                text = text.replace(value, marker(value))
        for pattern in _PATTERNS:
            text = pattern.sub(self._replace, text)
        return text

    def strings(self, value: Any) -> Any:
        """Scrub every string inside a JSON-like value, in place; return it.

        Unlike :meth:`obj`, keys do not decide anything: this is for values
        already shown (notebook outputs, recorded metadata), where a key
        named like a secret (``secret: paracle-secrets``) may be harmless.
        """
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            for key in list(value):
                if key not in _BINARY_MIME:
                    value[key] = self.strings(value[key])
        elif isinstance(value, list):
            for index, item in enumerate(value):
                value[index] = self.strings(item)
        return value

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


def target_scrubber(target: Target) -> Scrubber:
    """Return a scrubber knowing the credentials a target's run can meet.

    The environment's, the target's passwords (also read from their files)
    and every credential in its kubeconfig.
    """
    from paracle_nb.errors import ParacleError

    scrubber = Scrubber(environment_secrets())
    for secret in (target.postgres_password, target.redis_password):
        if secret:
            try:
                scrubber.add(*with_url_password(secret.reveal()))
            except ParacleError:  # an unreadable file: nothing to scrub
                continue
    scrubber.add(*kubeconfig_secrets(target.kubeconfig
                                     or os.environ.get("KUBECONFIG")))
    return scrubber


def cluster_secret_values(target: Target) -> list[str]:
    """Return the values of the Secrets in the target's namespace.

    A runbook may read them (an API key checked by fingerprint), so its
    outputs are scrubbed of them. Empty when the API refuses or is down:
    the patterns still apply.
    """
    from paracle_nb import kube
    from paracle_nb.errors import ParacleError

    if not (target.kubeconfig or os.environ.get("KUBECONFIG")):
        return []
    # Known shortcoming: a role that may not list Secrets leaves their values
    # to the patterns; one with no tell-tale shape could then be shown.
    try:
        secrets = kube.list_namespaced(target, "secrets")
    except ParacleError as exc:
        log.debug("cannot list Secrets to scrub them: %s", exc)
        return []
    return [value for secret in secrets for value in secret_object_values(secret)]


def scrub_notebook(nb: Any, scrubber: Scrubber) -> None:
    """Scrub an executed notebook in place: outputs, parameters, metadata.

    Every output type (streams, rich displays in every text format, errors
    with their tracebacks), the cell papermill injected with the parameters,
    and the notebook's and cells' metadata, which record the parameters
    again. The runbook's own code and prose are left as written.
    """
    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source = scrubber.text(cell.source)
        scrubber.strings(cell.get("metadata", {}))
        scrubber.strings(cell.get("outputs", []))
    scrubber.strings(nb.metadata)


_log_scrubber: Scrubber | None = None
_log_lock = threading.Lock()


def protect_logs(*values: str | None) -> Scrubber:
    """Scrub every log record this process makes from now on; return the scrubber.

    Installed once per process as a log record factory, so records of every
    logger are scrubbed before any handler sees them. It knows credentials
    from the environment, ``values``, and the passwords of the runbook open
    in this kernel (:func:`paracle_nb.runbook.current_target`).
    """
    global _log_scrubber
    with _log_lock:
        if _log_scrubber is None:
            _log_scrubber = Scrubber(environment_secrets())
            _install_record_factory(_log_scrubber)
        _log_scrubber.add(*values)
        return _log_scrubber


def _install_record_factory(scrubber: Scrubber) -> None:
    make_record = logging.getLogRecordFactory()

    def scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _learn_current_target(scrubber)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format: logging reports it later
            return record
        record.msg, record.args = scrubber.text(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = scrubber.text(
                logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(scrubbed_record)


def _learn_current_target(scrubber: Scrubber) -> None:
    """Add the passwords of the runbook open in this kernel, once read."""
    from paracle_nb.errors import ParacleError

    # Imported by the notebook's first cell; not there, no runbook is open.
    runbook = sys.modules.get("paracle_nb.runbook")
    target = runbook.current_target() if runbook is not None else None
    if target is None:
        return
    for secret in (target.postgres_password, target.redis_password):
        if secret:
            try:
                scrubber.add(secret.reveal())
            except ParacleError:  # an unreadable file: the step will say so
                continue
