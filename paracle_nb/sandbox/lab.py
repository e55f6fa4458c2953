"""The incident lab: real Postgres and Redis plus our Kubernetes API.

A :class:`Lab` starts every server on 127.0.0.1, writes a kubeconfig and a
parameters file that point the runbooks at it, and can put each part into
one of the guide's incidents and back. ``lab.live`` holds the fake LLM
providers, the instrumented API stand-in and Prometheus (when installed)::

    with Lab() as lab:
        lab.reproduce("pool-exhausted")
        run("database/connection-pool-exhausted", lab.parameters_file)
"""

from __future__ import annotations

import base64
import contextlib
import logging
import pathlib
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import yaml

from paracle_nb.errors import SandboxError
from paracle_nb.sandbox import db_incidents, incidents, redis_incidents, schema
from paracle_nb.sandbox import error_incidents as errors
from paracle_nb.sandbox import latency_incidents as latency
from paracle_nb.sandbox.kubeapi import KubeAPIServer
from paracle_nb.sandbox.live import LiveServices
from paracle_nb.sandbox.postgres import APP_ROLE, SRE_ROLE, PostgresServer
from paracle_nb.sandbox.redis_server import RedisServer
from paracle_nb.secrets import fingerprint

log = logging.getLogger(__name__)

NAMESPACE = "paracle-prod"
CONTEXT = "paracle-sandbox"


class Lab:
    """The whole lab; a context manager that stops everything it started."""

    def __init__(self, base_dir: str | pathlib.Path | None = None, *,
                 max_connections: int = 40, redis_maxmemory: str = "32mb") -> None:
        self._own_dir = base_dir is None
        self.dir = pathlib.Path(base_dir or tempfile.mkdtemp(prefix="paracle-lab-"))
        self.postgres = PostgresServer(max_connections=max_connections)
        self.redis = RedisServer(maxmemory=redis_maxmemory,
                                 maxmemory_policy="noeviction")
        self.kube = KubeAPIServer()
        # LLM providers, the API stand-in and Prometheus (when installed).
        self.live = LiveServices()
        self.parameters_file = self.dir / "parameters.yaml"
        self.active: dict[str, Any] = {}
        self._baseline: incidents.HeldSessions | None = None

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Lab:
        """Start every server healthy and write the parameters file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.postgres.start()
            self.redis.start()
            self.kube.start()
        except BaseException:
            self.stop()
            raise

        self.load_scenario("healthy")
        # No token: kubectl sends credentials only over TLS, and the lab's
        # API server speaks plain HTTP on loopback.
        kubeconfig = self.kube.write_kubeconfig(
            self.dir / "kubeconfig", namespace=NAMESPACE, context=CONTEXT)
        schema.seed_schema(self.postgres)
        # A healthy API keeps a few pooled sessions open and some keys cached.
        self._baseline = incidents.idle_connections(self.postgres, "paracle-api",
                                                    n=5)
        incidents.seed_redis(self.redis)
        try:
            self.live.start(self, NAMESPACE)
        except BaseException:
            self.stop()
            raise
        self.write_parameters(self.parameters_file, kubeconfig)
        log.info("lab up: postgres :%s, redis :%s, kubernetes %s",
                 self.postgres.port, self.redis.port, self.kube.url)
        return self

    @property
    def parameters(self) -> dict[str, Any]:
        """The parameters that point a runbook at this lab (no secrets)."""
        return {
            "environment": "sandbox",
            "kubeconfig": str(self.dir / "kubeconfig"),
            "kube_context": CONTEXT,
            "namespace": NAMESPACE,
            "app_label": "app=paracle-api",
            "postgres_dsn": self.postgres.dsn(SRE_ROLE),
            "postgres_password_file": str(self.postgres.password_file(SRE_ROLE)),
            "redis_url": self.redis.url,
            "redis_password_file": str(self.redis.password_file),
            "timeout_seconds": 5.0,
            **self.live.parameters,
        }

    def write_parameters(self, path: str | pathlib.Path,
                         kubeconfig: pathlib.Path | None = None) -> pathlib.Path:
        """Write the lab's parameters file (credentials stay in their files)."""
        target = pathlib.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        header = "# The local incident lab (paracle-nb sandbox). Generated.\n"
        partial = target.with_name(f".{target.name}.tmp")
        partial.write_text(header + yaml.safe_dump(self.parameters, sort_keys=False))
        partial.replace(target)
        return target

    def load_scenario(self, name: str) -> None:
        """Serve a scenario whose API Secret points at the lab's Postgres."""
        self.kube.load_scenario(name)
        self.write_database_url()

    def write_database_url(self, password: str | None = None) -> str:
        """Set the API's DATABASE_URL to the lab Postgres; return its fingerprint.

        The app role with its real password unless ``password`` is given
        (a stale one, for the connection-failure incident).
        """
        password = password or self.postgres.password(APP_ROLE)
        url = (f"postgresql://{APP_ROLE}:{password}@{self.postgres.host}:"
               f"{self.postgres.port}/paracle")
        self.write_secret("paracle-secrets", {"DATABASE_URL": url})
        return fingerprint(url)

    def write_secret(self, name: str, values: dict[str, str]) -> None:
        """Set keys of a Secret in the lab namespace (base64, as a cluster does)."""
        secret = self.kube.store.get("Secret", NAMESPACE, name) or {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": NAMESPACE}}
        data = secret.setdefault("data", {})
        for key, value in values.items():
            data[key] = base64.b64encode(value.encode()).decode()
        self.kube.store.put(secret)

    def reproduce(self, incident: str, **options: Any) -> Any:
        """Put the lab into one of :data:`INCIDENTS`; return its evidence."""
        if incident not in INCIDENTS:
            raise SandboxError(f"unknown incident {incident!r}; known: "
                               f"{', '.join(INCIDENTS)}")
        if incident in self.active:
            return self.active[incident]
        start, _ = INCIDENTS[incident]
        self.active[incident] = start(self, **options)
        log.info("incident %s reproduced", incident)
        return self.active[incident]

    @contextlib.contextmanager
    def incident(self, name: str, **options: Any) -> Iterator[Any]:
        """Hold the lab in one incident for the ``with`` block, then heal it."""
        evidence = self.reproduce(name, **options)
        try:
            yield evidence
        finally:
            self.heal(name)

    def heal(self, incident: str | None = None) -> None:
        """Take the lab out of one incident, or all of them."""
        names = [incident] if incident else list(self.active)
        for name in names:
            if name in self.active:
                _, stop = INCIDENTS[name]
                stop(self, self.active.pop(name))

    def stop(self) -> None:
        """Release every incident and stop every server we started."""
        try:
            self.heal()
            if self._baseline is not None:
                self._baseline.release(wait=0)
        finally:
            self.live.stop()
            for server in (self.kube, self.redis, self.postgres):
                try:
                    server.stop()
                except Exception as exc:  # stop the others regardless
                    log.warning("could not stop %s: %s", server, exc)
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)


def _kube_healthy(lab: Lab, _: Any) -> None:
    """Load the healthy cluster again."""
    lab.load_scenario("healthy")


def _database_refused(lab: Lab) -> dict[str, str]:
    """API pods crash-loop: the DATABASE_URL Secret holds a stale password."""
    lab.load_scenario("crashloop-db-connection")
    # The role's password was rotated; the Secret kept the old one.
    stale = secrets.token_urlsafe(18)
    return {"secret_fingerprint": lab.write_database_url(stale), "user": APP_ROLE}


def _scenario(name: str) -> Callable[[Lab], str]:
    def load(lab: Lab) -> str:
        lab.load_scenario(name)
        return name

    load.__doc__ = _scenario_summary(name)
    return load


def _scenario_summary(name: str) -> str:
    """Return the first comment line of a scenario file."""
    path = pathlib.Path(__file__).parent / "scenarios" / f"{name}.yaml"
    words: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or (words and not line[1:].strip()):
            break
        words.extend(line[1:].split())
    text = " ".join(words)
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def _pool(lab: Lab, *, fill_reserved: bool = False) -> incidents.HeldSessions:
    """Every Postgres slot an application may use is held by paracle-api."""
    return incidents.exhaust_connections(lab.postgres, application="paracle-api",
                                         fill_reserved=fill_reserved)


def _pool_all(lab: Lab) -> incidents.HeldSessions:
    """Every Postgres slot, the superusers' reserved ones too, is taken."""
    return _pool(lab, fill_reserved=True)


def _release(lab: Lab, held: incidents.HeldSessions) -> None:
    held.release()


def _redis_oom(lab: Lab) -> incidents.RedisOOM:
    """Redis is full with noeviction: writes fail with OOM."""
    return incidents.fill_until_oom(lab.redis)


def _redis_recover(lab: Lab, _: Any) -> None:
    incidents.recover_redis(lab.redis)
    incidents.seed_redis(lab.redis)


# name -> (put the lab into it, take the lab out of it)
INCIDENTS: dict[str, tuple[Callable[..., Any], Callable[[Lab, Any], None]]] = {
    "crashloop-oom": (_scenario("crashloop-oom"), _kube_healthy),
    "crashloop-db-connection": (_database_refused, _kube_healthy),
    "crashloop-missing-env": (_scenario("crashloop-missing-env"), _kube_healthy),
    "image-pull-error": (_scenario("image-pull-error"), _kube_healthy),
    "pool-exhausted": (_pool, _release),
    "pool-exhausted-all-slots": (_pool_all, _release),
    "redis-oom": (_redis_oom, _redis_recover),
    # Slow database queries: real sessions of the API.
    "slow-queries": (db_incidents.start_slow_queries, db_incidents.stop),
    "lock-contention": (db_incidents.start_lock_contention, db_incidents.stop),
    "long-running-query": (db_incidents.start_long_running_query,
                           db_incidents.stop),
    # Redis connections and latency.
    "redis-max-clients": (redis_incidents.start_max_clients,
                          redis_incidents.stop),
    "redis-max-clients-full": (redis_incidents.start_max_clients_full,
                               redis_incidents.stop),
    "redis-idle-connections": (redis_incidents.start_idle_connections,
                               redis_incidents.stop),
    "redis-slow": (redis_incidents.start_slow, redis_incidents.stop),
    # Scheduling and service access: cluster state only.
    "pending-insufficient-cpu": (_scenario("pending-insufficient-cpu"), _kube_healthy),
    "pending-node-selector": (_scenario("pending-node-selector"), _kube_healthy),
    "pending-taint": (_scenario("pending-taint"), _kube_healthy),
    "pdb-blocking": (_scenario("pdb-blocking"), _kube_healthy),
    "service-selector-mismatch": (_scenario("service-selector-mismatch"),
                                  _kube_healthy),
    "service-no-endpoints": (_scenario("service-no-endpoints"), _kube_healthy),
    "ingress-backend-missing": (_scenario("ingress-backend-missing"), _kube_healthy),
    "load-balancer-pending": (_scenario("load-balancer-pending"), _kube_healthy),
    "dns-down": (_scenario("dns-down"), _kube_healthy),
    # High API latency: the API stand-in under load, one cause at a time.
    "latency-slow-db": (latency.slow_db, latency.heal),
    "latency-llm-timeout": (latency.llm_timeout, latency.heal),
    "latency-slow-redis": (latency.slow_redis, latency.heal),
    "latency-concurrency": (latency.too_many_requests, latency.heal),
    # 500 errors and LLM provider errors: real failures under paced load.
    "errors-unhandled-exception": (errors.unhandled_exception, errors.heal),
    "errors-missing-dependency": (errors.missing_dependency, errors.heal),
    "errors-config-error": (errors.config_error, errors.heal),
    "llm-rate-limited": (errors.llm_rate_limited, errors.heal),
    "llm-invalid-key": (errors.llm_invalid_key, errors.heal),
    "llm-outage": (errors.llm_outage, errors.heal),
}
