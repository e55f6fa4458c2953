"""Where a run points: cluster, namespace, Postgres, Redis, Prometheus, API.

A target comes from a parameters file (``parameters/<environment>.yaml``
or a file named explicitly). Credentials come from files the parameters
name, from the environment, or from the kubeconfig; they are held as
:class:`~paracle_nb.secrets.Secret` and never rendered.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import pathlib
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from paracle_nb.errors import ParameterError
from paracle_nb.secrets import Secret

log = logging.getLogger(__name__)

# Keys of a parameters file that describe the target; all others are the
# runbooks' own parameters.
TARGET_KEYS: dict[str, type] = {
    "environment": str,
    "kubeconfig": str,
    "kube_context": str,
    "namespace": str,
    "app_label": str,
    "postgres_dsn": str,
    "postgres_password_file": str,
    "redis_url": str,
    "redis_password_file": str,
    "prometheus_url": str,
    "api_url": str,
    "timeout_seconds": float,
}


@dataclasses.dataclass(frozen=True)
class Target:
    """One environment a runbook diagnoses. Secrets are never shown."""

    environment: str = "unnamed"
    kubeconfig: str | None = None
    kube_context: str | None = None
    namespace: str = "paracle-prod"
    app_label: str = "app=paracle-api"
    postgres_dsn: str | None = None
    postgres_password: Secret | None = dataclasses.field(default=None, repr=False)
    redis_url: str | None = None
    redis_password: Secret | None = dataclasses.field(default=None, repr=False)
    prometheus_url: str | None = None
    api_url: str | None = None
    timeout_seconds: float = 5.0

    @classmethod
    def from_parameters(cls, values: dict[str, Any]) -> Target:
        """Build a target from parameters-file values (target keys only)."""
        fields = {k: v for k, v in values.items() if k in TARGET_KEYS and v != ""}
        for key, kind in TARGET_KEYS.items():
            if key in fields and fields[key] is not None:
                fields[key] = _coerce(key, fields[key], kind)

        pg_file = fields.pop("postgres_password_file", None)
        redis_file = fields.pop("redis_password_file", None)
        dsn, dsn_password = _split_password(fields.get("postgres_dsn"))
        url, url_password = _split_password(fields.get("redis_url"))
        if dsn is not None:
            fields["postgres_dsn"] = dsn
        if url is not None:
            fields["redis_url"] = url
        if fields.get("kubeconfig"):
            fields["kubeconfig"] = os.path.expanduser(fields["kubeconfig"])

        fields["postgres_password"] = _read_secret(
            pg_file, "PARACLE_POSTGRES_PASSWORD", dsn_password
        )
        fields["redis_password"] = _read_secret(
            redis_file, "PARACLE_REDIS_PASSWORD", url_password
        )
        return cls(**fields)

    @classmethod
    def resolve(
        cls, environment: str = "", parameters_file: str = "", **overrides: Any
    ) -> Target:
        """Return the target named by a parameters file or an environment.

        ``parameters_file`` wins over ``environment``; non-empty
        ``overrides`` win over both.
        """
        if parameters_file:
            values = load_parameters(parameters_file)
        elif environment:
            values = load_parameters(environment_file(environment))
        else:
            raise ParameterError(
                "no target: set `environment` (parameters/<environment>.yaml) "
                "or `parameters_file`"
            )
        values.update({k: v for k, v in overrides.items() if v not in ("", None)})
        values.setdefault("environment", environment or "unnamed")
        return cls.from_parameters(values)

    def check(self) -> None:
        """Refuse a target that cannot work: one clear error, before a run."""
        endpoints = (self.kubeconfig, self.postgres_dsn, self.redis_url,
                     self.prometheus_url, self.api_url)
        if not any(endpoints) and not os.environ.get("KUBECONFIG"):
            raise ParameterError(
                "the parameters name no target (no kubeconfig, postgres_dsn, "
                "redis_url, prometheus_url or api_url)")
        if self.timeout_seconds <= 0:
            raise ParameterError(
                f"timeout_seconds must be above 0, got {self.timeout_seconds:g}")
        if self.kubeconfig:
            _check_kubeconfig(self.kubeconfig, self.kube_context)
        _check_endpoints(self)

    def context_name(self) -> str | None:
        """Return the kube context in use: the given one or the current one."""
        if self.kube_context:
            return self.kube_context
        path = self.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            config = yaml.safe_load(pathlib.Path(path).expanduser().read_text())
        except (OSError, yaml.YAMLError):
            return None
        return (config or {}).get("current-context")

    def describe(self) -> dict[str, str]:
        """Return where this target points, without any credential."""
        return {
            "environment": self.environment,
            "cluster": _kube_server(self.kubeconfig, self.kube_context),
            "context": self.kube_context or "(kubeconfig default)",
            "namespace": self.namespace,
            "postgres": _public_dsn(self.postgres_dsn),
            "redis": _strip_credentials(self.redis_url) or "-",
            "prometheus": _strip_credentials(self.prometheus_url) or "-",
        }

    def pointed_at(self) -> dict[str, str]:
        """Return what a notebook shows at its top: where, never credentials.

        Cluster, context, namespace, database (user, host, port, name),
        Redis (host, port, db), Prometheus and the API.
        """
        context = self.kube_context or self.context_name()
        return {
            "cluster": _kube_server(self.kubeconfig, self.kube_context),
            "context": context or "(none)",
            "namespace": self.namespace,
            "database": _database_label(self.postgres_dsn),
            "Redis": _redis_label(self.redis_url),
            "Prometheus": _strip_credentials(self.prometheus_url) or "-",
            "API": _strip_credentials(self.api_url) or "-",
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'><code>{html.escape(v)}</code></td></tr>"
            for k, v in self.pointed_at().items()
        )
        heading = (f"<b>Pointed at <code>{html.escape(self.environment)}</code></b>"
                   " (credentials are never shown)")
        return f"<div><p>{heading}</p><table>{rows}</table></div>"

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in self.describe().items())
        return f"Target({parts})"


def parameters_dir() -> pathlib.Path:
    """Return the folder holding ``<environment>.yaml`` parameter files."""
    configured = os.environ.get("PARACLE_NB_PARAMETERS")
    if configured:
        return pathlib.Path(configured)
    here = pathlib.Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "parameters").is_dir():
            return folder / "parameters"
    return here / "parameters"


def environment_file(environment: str) -> pathlib.Path:
    """Return the parameters file of an environment, or say how to get one."""
    if not environment.replace("-", "").replace("_", "").isalnum():
        raise ParameterError(f"environment {environment!r} is not a plain name")
    folder = parameters_dir()
    path = folder / f"{environment}.yaml"
    if path.exists():
        return path
    hint = (
        "start the lab with `paracle-nb sandbox up`"
        if environment == "sandbox"
        else _new_environment_hint(folder, environment)
    )
    raise ParameterError(f"no parameters file for environment {environment!r}: {hint}")


def _new_environment_hint(folder: pathlib.Path, environment: str) -> str:
    """Say how to write an environment's file: from its example, if there is one."""
    destination = _shown(folder / f"{environment}.yaml")
    example = folder / f"{environment}.example.yaml"
    if example.exists():
        return f"copy {_shown(example)} to {destination} and edit it"
    examples = sorted(p.name for p in folder.glob("*.example.yaml"))
    start = f" (examples to start from: {', '.join(examples)})" if examples else ""
    return f"write {destination}{start}"


def _shown(path: pathlib.Path) -> str:
    """Return a path relative to the working folder when it lies under it."""
    try:
        return str(path.resolve().relative_to(pathlib.Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_parameters(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return a parameters file as a dict; one clear error if it is not one."""
    file = pathlib.Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParameterError(f"parameters file not found: {file}") from None
    except UnicodeDecodeError as exc:
        raise ParameterError(
            f"parameters file {file} is not UTF-8 text (byte "
            f"{exc.object[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ParameterError(f"cannot read parameters file {file}: {exc}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParameterError(
            f"parameters file {file} is not valid YAML{where}"
        ) from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ParameterError(
            f"parameters file {file} must be a mapping of names to values"
        )
    return values


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, (int, float)) and not isinstance(
        value, bool
    ):
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    expected = "a number" if kind is float else f"a {kind.__name__}"
    raise ParameterError(f"parameter {key!r} must be {expected}, got {value!r}")


def _split_password(url: str | None) -> tuple[str | None, str | None]:
    """Return the URL without its password, and the password if it had one."""
    if not url:
        return url, None
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    try:
        port = parts.port
    except ValueError:
        # Named without the URL: its password must not reach the message.
        raise ParameterError(
            f"a URL for host {parts.hostname!r} has a port that is not a "
            "number from 0 to 65535") from None
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if port:
        netloc = f"{netloc}:{port}"
    return urlunsplit(parts._replace(netloc=netloc)), parts.password


def _strip_credentials(url: str | None) -> str | None:
    return _split_password(url)[0]


def _public_dsn(dsn: str | None) -> str:
    """Return a DSN without its password; a key=value one as its label."""
    if dsn and "://" not in dsn:
        return _database_label(dsn)
    return _strip_credentials(dsn) or "-"


def _database_label(dsn: str | None) -> str:
    """Return ``user@host:port/dbname`` of a DSN, in URL or key=value form."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if not dsn:
        return "-"
    try:
        parts = conninfo_to_dict(dsn)
    except ProgrammingError:
        return "(unreadable postgres_dsn)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    name = f"/{parts['dbname']}" if parts.get("dbname") else ""
    return f"{user}{parts.get('host') or 'localhost'}{port}{name}"


def _redis_label(url: str | None) -> str:
    """Return ``host:port/db`` of a Redis URL, with rediss:// kept visible."""
    if not url:
        return "-"
    parts = urlsplit(url)
    scheme = "rediss://" if parts.scheme == "rediss" else ""
    user = f"{parts.username}@" if parts.username else ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unreadable redis_url)"
    return f"{scheme}{user}{parts.hostname or '?'}{port}{parts.path or ''}"


def _read_secret(path: str | None, env: str, fallback: str | None) -> Secret | None:
    # A password file is read when a step first needs it: a runbook that
    # never talks to Postgres must not fail on Postgres's password.
    if path:
        return Secret.from_file(path)
    if os.environ.get(env):
        return Secret(os.environ[env])
    return Secret(fallback) if fallback else None


def _kube_server(kubeconfig: str | None, context: str | None) -> str:
    """Return the API server URL a kubeconfig context points at."""
    path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        config = yaml.safe_load(pathlib.Path(path).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "(no kubeconfig)"
    name = context or config.get("current-context")
    ctx = next((c for c in config.get("contexts", []) if c.get("name") == name), None)
    if ctx is None:
        return f"(context {name!r} not in kubeconfig)"
    cluster_name = ctx.get("context", {}).get("cluster")
    for cluster in config.get("clusters", []):
        if cluster.get("name") == cluster_name:
            return str(cluster.get("cluster", {}).get("server", "?"))
    return "?"


def _check_kubeconfig(path: str, context: str | None) -> None:
    file = pathlib.Path(path).expanduser()
    try:
        config = yaml.safe_load(file.read_text()) or {}
    except OSError as exc:
        raise ParameterError(f"cannot read kubeconfig {file}: {exc.strerror}"
                             ) from None
    except yaml.YAMLError:
        raise ParameterError(f"kubeconfig {file} is not valid YAML") from None
    names = [c.get("name") for c in config.get("contexts") or []]
    wanted = context or config.get("current-context")
    if wanted not in names:
        raise ParameterError(
            f"context {wanted!r} is not in kubeconfig {file}; it has: "
            f"{', '.join(map(str, names)) or 'none'}")


# A namespace name as Kubernetes accepts it (an RFC 1123 label).
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _check_endpoints(target: Target) -> None:
    """Refuse a namespace or endpoint no client could use, naming the key."""
    if not _NAMESPACE.fullmatch(target.namespace):
        raise ParameterError(
            f"namespace {target.namespace!r} is not a valid Kubernetes namespace "
            "name (lowercase letters, digits and '-', at most 63)")
    for key in ("prometheus_url", "api_url"):
        _check_url(key, getattr(target, key), ("http", "https"))
    _check_url("redis_url", target.redis_url, ("redis", "rediss", "unix"))
    if target.postgres_dsn:
        _check_dsn(target.postgres_dsn)


def _check_url(key: str, url: str | None, schemes: tuple[str, ...]) -> None:
    if not url:
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ParameterError(f"{key} {_strip_credentials(url)!r} is not a valid "
                             f"URL: {exc}") from None
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ParameterError(
            f"{key} {_strip_credentials(url)!r} must be a URL starting with "
            f"{' or '.join(s + '://' for s in schemes)}")


def _check_dsn(dsn: str) -> None:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ParameterError(
            f"postgres_dsn {_strip_credentials(dsn)!r} is not a valid connection "
            f"string or postgresql:// URL ({said})") from None
    port = str(parts.get("port") or "")
    if port and not all(p.strip().isdigit() for p in port.split(",")):
        raise ParameterError(f"postgres_dsn has port {port!r}; a port is a number")
