"""Secrets held by a target: usable by the helpers, never rendered.

Also where a run finds the credentials it must keep out of its artifact:
the environment, the kubeconfig and the cluster's Secret objects.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml


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


# Environment variables whose value is a credential, by the end of their name.
SECRET_ENV_NAME = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|CREDENTIALS?|DATABASE_URL|REDIS_URL"
    r"|DSN)$", re.IGNORECASE)

# Keys of a Secret that name where or who, not a credential: a user name or
# a host would otherwise be scrubbed from every line that mentions it.
PLAIN_SECRET_KEY = re.compile(
    r"(USER|USERNAME|HOST|HOSTNAME|PORT|NAME|DATABASE|DB|NAMESPACE|REGION|LEVEL)$",
    re.IGNORECASE)

# Fields of a kubeconfig user entry that hold credentials.
_KUBECONFIG_FIELDS = ("token", "password", "client-key-data", "id-token",
                      "refresh-token", "client-secret", "access-token")


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the values of environment variables named like credentials.

    A URL among them (``DATABASE_URL``) also gives its password alone, since
    a client library may print the one without the other.
    """
    environ = os.environ if environ is None else environ
    found = []
    for name, value in environ.items():
        if SECRET_ENV_NAME.search(name) and not name.endswith("_FILE"):
            found.extend(with_url_password(value))
    return found


def kubeconfig_secrets(path: str | os.PathLike[str] | None) -> list[str]:
    """Return every credential a kubeconfig holds, for every user in it."""
    if not path:
        return []
    try:
        config = yaml.safe_load(pathlib.Path(path).expanduser().read_text())
    except (OSError, yaml.YAMLError):
        return []
    found: list[str] = []
    for entry in (config or {}).get("users") or []:
        user = (entry or {}).get("user") or {}
        found.extend(_credential_fields(user))
        found.extend(_credential_fields(
            (user.get("auth-provider") or {}).get("config") or {}))
        for env in (user.get("exec") or {}).get("env") or []:
            found.extend(with_url_password(str(env.get("value") or "")))
        if user.get("tokenFile"):
            with contextlib.suppress(OSError):
                found.append(pathlib.Path(user["tokenFile"]).read_text().strip())
    return [value for value in found if value]


def _credential_fields(fields: Mapping[str, Any]) -> list[str]:
    return [str(fields[key]) for key in _KUBECONFIG_FIELDS if fields.get(key)]


def secret_object_values(secret: Mapping[str, Any]) -> list[str]:
    """Return the values of a Kubernetes Secret, encoded and decoded.

    Both forms: a dumped object shows the base64 text, a process that read
    the Secret shows the value.
    """
    found: list[str] = []
    for key, encoded in (secret.get("data") or {}).items():
        if PLAIN_SECRET_KEY.search(key):
            continue
        found.append(str(encoded))
        try:
            decoded = base64.b64decode(str(encoded), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            continue
        found.extend(with_url_password(decoded))
    for key, value in (secret.get("stringData") or {}).items():
        if not PLAIN_SECRET_KEY.search(key):
            found.extend(with_url_password(str(value)))
    return found


def with_url_password(value: str) -> list[str]:
    """Return ``value``, and the password inside it when it is a URL."""
    found = [value]
    with contextlib.suppress(ValueError):
        password = urlsplit(value.strip()).password
        if password:
            # As written in the URL, and as a client library decodes it.
            found.extend({password, unquote(password)})
    return found
