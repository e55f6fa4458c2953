"""What a deployment's containers are configured with: env names, Secrets, pulls.

Values never leave this module except one: the ``DATABASE_URL`` a
container gets, held as a :class:`~paracle_nb.secrets.Secret` just long
enough to try it. Everything returned names variables, Secrets and keys,
and identifies a secret value only by its short fingerprint.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from paracle_nb import kube
from paracle_nb.errors import KubernetesError, ParameterError
from paracle_nb.secrets import Secret
from paracle_nb.target import Target

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

APPLICATION_NAME = "paracle-nb"
ENV_COLUMNS = ["container", "name", "source", "resolved", "problem"]
PULL_COLUMNS = ["pod", "service_account", "secret", "referenced_by", "exists",
                "type"]


# -- reads ---------------------------------------------------------------------

def read_object(target: Target, kind: str, name: str) -> dict[str, Any] | None:
    """Return a Secret, ConfigMap or ServiceAccount of the namespace, or None."""
    core = kube._core(target)
    method = {"secret": core.read_namespaced_secret,
              "configmap": core.read_namespaced_config_map,
              "serviceaccount": core.read_namespaced_service_account}[kind]
    try:
        return dict(kube._call(target, f"read {kind} {name}", method, name,
                               target.namespace))
    except KubernetesError as exc:
        if exc.status == 404:
            return None
        raise


def key_names(target: Target, kind: str, name: str) -> list[str] | None:
    """Return the key names of a Secret or ConfigMap (never values), or None."""
    obj = read_object(target, kind, name)
    if obj is None:
        return None
    keys = set(obj.get("data") or {}) | set(obj.get("binaryData") or {})
    return sorted(keys)


def container_spec(deployment: dict[str, Any], container: str) -> dict[str, Any]:
    """Return one container of a deployment's pod template."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    for spec in containers:
        if spec["name"] == container:
            return dict(spec)
    names = ", ".join(c["name"] for c in containers)
    raise ParameterError(f"deployment {deployment['metadata']['name']} has no "
                         f"container {container!r}; it has {names}")


# -- environment variable names ------------------------------------------------

def env_names(target: Target, deployment: str, container: str) -> pd.DataFrame:
    """Return the env var names a container gets, where each comes from.

    Reads the keys (never the values) of every ConfigMap and Secret the
    container references. ``resolved`` is False when a reference points
    at a missing object or key, which the kubelet refuses to start with.
    """
    import pandas as pd

    spec = container_spec(kube.get_deployment(target, deployment), container)
    keys: dict[tuple[str, str], list[str] | None] = {}

    def keys_of(kind: str, name: str) -> list[str] | None:
        if (kind, name) not in keys:
            keys[(kind, name)] = key_names(target, kind, name)
        return keys[(kind, name)]

    # envFrom first, later sources winning; explicit env overrides them all.
    rows: dict[str, dict[str, Any]] = {}
    for source in spec.get("envFrom") or []:
        kind, ref = _from_ref(source)
        prefix = source.get("prefix", "")
        found = keys_of(kind, ref["name"])
        if found is None:
            if not ref.get("optional"):
                rows[f"{prefix}*"] = _env_row(f"{prefix}*", f"{kind} {ref['name']}",
                                              f"{kind} {ref['name']} not found")
            continue
        for key in found:
            rows[prefix + key] = _env_row(prefix + key,
                                          f"{kind} {ref['name']} (envFrom)")
    for entry in spec.get("env") or []:
        rows[entry["name"]] = _env_entry_row(entry, keys_of)
    table = pd.DataFrame(list(rows.values()), columns=ENV_COLUMNS)
    table["container"] = container
    return table


def _from_ref(source: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if "secretRef" in source:
        return "secret", source["secretRef"]
    return "configmap", source.get("configMapRef") or {}


def _env_row(name: str, source: str, problem: str | None = None) -> dict[str, Any]:
    return {"name": name, "source": source, "resolved": problem is None,
            "problem": problem}


def _env_entry_row(entry: dict[str, Any],
                   keys_of: Callable[[str, str], list[str] | None]
                   ) -> dict[str, Any]:
    name = entry["name"]
    ref = entry.get("valueFrom") or {}
    for field, kind in (("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")):
        if field not in ref:
            continue
        obj, key = ref[field].get("name", ""), ref[field].get("key", "")
        source = f"{kind} {obj}/{key}"
        found = keys_of(kind, obj)
        if found is not None and key in found:
            return _env_row(name, source)
        missing = f"{kind} {obj} not found" if found is None else \
            f"key {key} not in {kind} {obj}"
        # An optional reference that does not resolve leaves the variable unset.
        if ref[field].get("optional"):
            missing += " (optional: variable left unset)"
        return _env_row(name, source, missing)
    if ref:
        return _env_row(name, "field or resource reference")
    return _env_row(name, "value in the deployment")


# -- the database URL the pods get ---------------------------------------------

@dataclasses.dataclass(frozen=True)
class DatabaseAttempt:
    """One real connection attempt with the URL the pods get; no secret in it."""

    variable: str
    source: str
    secret: str | None
    key: str | None
    endpoint: str
    user: str | None
    fingerprint: str
    connected: bool
    failure: str | None = None
    refusal: str | None = None
    elapsed_s: float = 0.0

    @property
    def server_refused(self) -> bool:
        """True when the server answered and said no (credentials, database)."""
        return self.failure in ("authentication", "database", "no-slot")

    def evidence(self) -> dict[str, Any]:
        """Return what the attempt shows: where, who, which secret, the answer."""
        return {"variable": self.variable, "source": self.source,
                "secret": self.secret, "key": self.key,
                "endpoint": self.endpoint, "user": self.user,
                "secret_fingerprint": self.fingerprint,
                "connected": self.connected, "failure": self.failure,
                "refusal": self.refusal, "elapsed_s": self.elapsed_s}

    def _repr_html_(self) -> str:
        from paracle_nb.runbook import _dict_table

        return _dict_table(self.evidence())


def database_url(target: Target, deployment: str, container: str,
                 variable: str = "DATABASE_URL") -> tuple[str, str | None,
                                                          str | None, Secret]:
    """Return (source, secret, key, value) of the URL a container gets.

    The value comes back as a :class:`Secret`; only its fingerprint is shown.
    """
    spec = container_spec(kube.get_deployment(target, deployment), container)
    for entry in spec.get("env") or []:
        if entry["name"] != variable:
            continue
        ref = (entry.get("valueFrom") or {})
        if "secretKeyRef" in ref:
            name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            return (f"secret {name}/{key}", name, key,
                    _stored_value(target, "secret", name, key))
        if "configMapKeyRef" in ref:
            name, key = ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
            return (f"configmap {name}/{key}", None, None,
                    _stored_value(target, "configmap", name, key))
        return "value in the deployment", None, None, Secret(str(entry.get("value")))
    for source in reversed(spec.get("envFrom") or []):
        kind, ref = _from_ref(source)
        key = variable.removeprefix(source.get("prefix", ""))
        found = key_names(target, kind, ref["name"]) or []
        if key in found and variable.startswith(source.get("prefix", "")):
            secret = ref["name"] if kind == "secret" else None
            return (f"{kind} {ref['name']}/{key} (envFrom)", secret,
                    key if secret else None,
                    _stored_value(target, kind, ref["name"], key))
    raise ParameterError(f"container {container} of deployment {deployment} "
                         f"gets no {variable}")


def _stored_value(target: Target, kind: str, name: str, key: str) -> Secret:
    obj = read_object(target, kind, name)
    if obj is None:
        raise ParameterError(f"{kind} {name} not found in {target.namespace}")
    data = obj.get("data") or {}
    if key not in data:
        raise ParameterError(f"{kind} {name} has no key {key}")
    if kind == "secret":
        return Secret(base64.b64decode(data[key]).decode("utf-8", "replace"))
    return Secret(str(data[key]))


def try_database_url(target: Target, deployment: str, container: str,
                     variable: str = "DATABASE_URL") -> DatabaseAttempt:
    """Connect once with the URL the pods get; return the server's answer.

    Opens a session and closes it at once, running nothing: the same
    handshake the API makes at start. Nothing about the URL but its
    endpoint, user and fingerprint is kept.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    source, secret, key, url = database_url(target, deployment, container,
                                            variable)
    try:
        params: dict[str, Any] = conninfo_to_dict(url.reveal())
    except Exception:  # libpq's parse error may quote the URL: never show it
        raise ParameterError(f"{variable} from {source} is not a valid "
                             f"connection URL (sha256:{url.fingerprint})") from None
    endpoint = (f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
                f"/{params.get('dbname', '')}")
    params.update(connect_timeout=max(2, min(5, int(target.timeout_seconds))),
                  application_name=APPLICATION_NAME)
    attempt: dict[str, Any] = {"variable": variable, "source": source, "secret": secret,
               "key": key, "endpoint": endpoint, "user": params.get("user"),
               "fingerprint": url.fingerprint}

    started = time.monotonic()
    try:
        with psycopg.connect(**params, autocommit=True):
            pass
    except psycopg.Error as exc:
        failure, refusal = classify_refusal(_scrubbed(str(exc), params))
        log.debug("database attempt to %s failed: %s", endpoint, failure)
        return DatabaseAttempt(**attempt, connected=False, failure=failure,
                               refusal=refusal,
                               elapsed_s=round(time.monotonic() - started, 3))
    return DatabaseAttempt(**attempt, connected=True,
                           elapsed_s=round(time.monotonic() - started, 3))


def _scrubbed(message: str, params: dict[str, Any]) -> str:
    password = params.get("password")
    return message.replace(password, "***") if password else message


def classify_refusal(message: str) -> tuple[str, str]:
    """Return (kind of failure, the server's or libpq's own words).

    >>> classify_refusal('connection to server at "db", port 5432 failed: '
    ...                  'FATAL:  password authentication failed for user "x"')
    ('authentication', 'password authentication failed for user "x"')
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    said = next((line for line in lines if "FATAL:" in line), None) or next(
        (line for line in lines if "failed:" in line), lines[-1] if lines
        else "no message")
    if "FATAL:" in said:
        said = said[said.index("FATAL:") + len("FATAL:"):].strip()
    elif "failed:" in said:
        said = said.rsplit("failed:", 1)[1].strip()
    lowered = said.lower()
    if "authentication failed" in lowered or "no pg_hba.conf entry" in lowered:
        return "authentication", said
    if "does not exist" in lowered:
        return "database", said
    if "too many" in lowered or "remaining connection slots" in lowered:
        return "no-slot", said
    if "timeout" in lowered:
        return "timeout", said
    return "unreachable", said


# -- image pull secrets --------------------------------------------------------

def pull_secrets(target: Target, pods: list[dict[str, Any]]) -> pd.DataFrame:
    """Return the image pull secrets each pod uses, and whether each exists.

    A pod gets its own ``imagePullSecrets`` and its service account's.
    Only the Secrets' existence and type are read here, never their data.
    """
    import pandas as pd

    accounts: dict[str, dict[str, Any] | None] = {}
    secrets: dict[str, dict[str, Any] | None] = {}
    rows = []
    for pod in pods:
        spec = pod.get("spec", {})
        account = spec.get("serviceAccountName") or "default"
        if account not in accounts:
            accounts[account] = read_object(target, "serviceaccount", account)
        referenced = [(ref.get("name", ""), "pod")
                      for ref in spec.get("imagePullSecrets") or []]
        referenced += [(ref.get("name", ""), f"serviceaccount/{account}")
                       for ref in (accounts[account] or {}).get("imagePullSecrets")
                       or []]
        for name, by in referenced:
            if name not in secrets:
                secrets[name] = read_object(target, "secret", name)
            found = secrets[name]
            rows.append({"pod": pod["metadata"]["name"], "service_account": account,
                         "secret": name, "referenced_by": by,
                         "exists": found is not None,
                         "type": found.get("type") if found else None})
    return pd.DataFrame(rows, columns=PULL_COLUMNS)

