"""The lab's live half: LLM providers, the API stand-in, Prometheus.

:class:`LiveServices` starts a fake provider per name, the API stand-in
(real Postgres and Redis behind it, its log lines appended to the
``paracle-api`` pods' logs in the lab's Kubernetes API), and Prometheus
scraping the stand-in every second, if Prometheus is installed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from paracle_nb.errors import MissingServerBinary, SandboxError
from paracle_nb.sandbox.api_service import ApiConfig, ApiService
from paracle_nb.sandbox.app_code import ClusterSettings
from paracle_nb.sandbox.llm_provider import FakeLLMProvider
from paracle_nb.sandbox.load import Load
from paracle_nb.sandbox.postgres import APP_ROLE
from paracle_nb.sandbox.prometheus import PrometheusServer

T = TypeVar("T")

if TYPE_CHECKING:
    import psycopg

    from paracle_nb.sandbox.kubeapi.store import ObjectStore
    from paracle_nb.sandbox.lab import Lab

log = logging.getLogger(__name__)

API_JOB = "paracle-api"
API_LABEL = ("app", "paracle-api")
# A healthy LLM call takes 200 ms: the twelve workers then serve about 57
# requests a second, so a hundred at once queue for real, at a load the
# lab's Python handles without itself becoming the bottleneck.
HEALTHY_LLM_LATENCY = 0.2


class LiveServices:
    """Providers, API stand-in and Prometheus of one lab; start and stop."""

    def __init__(self, providers: Sequence[str] = ("openai", "anthropic"), *,
                 config: ApiConfig | None = None, prometheus: bool = True) -> None:
        self.providers = {name: FakeLLMProvider(name, latency=HEALTHY_LLM_LATENCY)
                          for name in providers}
        self.config = config or ApiConfig()
        self.want_prometheus = prometheus
        self.api: ApiService | None = None
        self.prometheus: PrometheusServer | None = None
        self.prometheus_missing: str | None = None
        self._pods = _PodNames()

    @property
    def parameters(self) -> dict[str, Any]:
        """``api_url`` and ``prometheus_url`` of what runs (no secrets)."""
        values: dict[str, Any] = {}
        if self.api is not None:
            values["api_url"] = self.api.url
        if self.prometheus is not None:
            values["prometheus_url"] = self.prometheus.url
        return values

    def start(self, lab: Lab, namespace: str) -> None:
        """Start providers, the API stand-in and (if installed) Prometheus."""
        for provider in self.providers.values():
            provider.start()
        store = lab.kube.store
        self._pods.store, self._pods.namespace = store, namespace
        # The stand-in's settings and provider keys come from the cluster.
        self.cluster = ClusterSettings(store, namespace)
        self.api = ApiService(
            lambda: _api_session(lab),
            lab.redis.client(client_name="paracle-api"),
            {name: p.url for name, p in self.providers.items()},
            config=self.config, pods=self._pods,
            log_sink=lambda pod, text: store.append_logs(namespace, pod, "api",
                                                         text),
            settings=self.cluster.check_settings,
            api_keys=self.cluster.api_key).start()
        if self.want_prometheus:
            self._start_prometheus(f"{self.api.host}:{self.api.port}")

    def _start_prometheus(self, api_target: str) -> None:
        try:
            self.prometheus = PrometheusServer({API_JOB: [api_target]}).start()
        except MissingServerBinary as exc:
            self.prometheus_missing = str(exc)
            log.warning("the lab runs without Prometheus: %s", exc)

    def stop(self) -> None:
        """Stop everything started, each whatever the others do."""
        parts: list[Any] = [self.prometheus, self.api, *self.providers.values()]
        for part in parts:
            if part is None:
                continue
            try:
                part.stop()
            except Exception as exc:
                log.warning("could not stop %r: %s", part, exc)
        self.api = self.prometheus = None

    def require_api(self) -> ApiService:
        """Return the running API stand-in, or say that it is not running."""
        if self.api is None:
            raise SandboxError("the lab's API stand-in is not running")
        return self.api

    def heal(self) -> None:
        """Every provider answering, no API fault."""
        for provider in self.providers.values():
            provider.set_mode("ok")
        if self.api is not None:
            for fault in list(self.api.faults):
                self.api.set_fault(fault, False)
            self.api.raise_in_requests(None)

    def load(self, **options: Any) -> Load:
        """Return a (not started) load against the API stand-in's run endpoint."""
        if self.api is None:
            raise RuntimeError("the API stand-in is not running")
        return Load(self.api.url, **options)


def _api_session(lab: Lab) -> psycopg.Connection[Any]:
    """Open one of the API's Postgres sessions, its backend at low priority.

    In production the database has machines of its own; here it shares a
    few cores with the runbook under test, so the API's backends yield the
    CPU (niceness 10, no parallel workers, which would not inherit it).
    """
    conn = lab.postgres.connect(APP_ROLE, "paracle-api",
                                options="-c max_parallel_workers_per_gather=0")
    try:
        os.setpriority(os.PRIO_PROCESS, conn.info.backend_pid, 10)
    except OSError as exc:  # not ours to renice: run at normal priority
        log.debug("could not lower the priority of backend %d: %s",
                  conn.info.backend_pid, exc)
    return conn


class _PodNames:
    """The API pods of the lab's cluster, looked up at most once a second."""

    def __init__(self) -> None:
        self.store: ObjectStore | None = None
        self.namespace = ""
        self._names: list[str] = []
        self._read = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> list[str]:
        with self._lock:
            if self.store is not None and time.monotonic() - self._read > 1.0:
                key, value = API_LABEL
                self._names = [
                    pod["metadata"]["name"]
                    for pod in self.store.list("Pod", self.namespace)
                    if pod["metadata"].get("labels", {}).get(key) == value]
                self._read = time.monotonic()
            return list(self._names)


def settle(read: Callable[[], T], good: Callable[[T], bool], what: str,
           timeout: float, *, not_before: float = 0.0) -> T:
    """Poll ``read`` until its value is ``good`` (and ``not_before`` passed).

    Raises SandboxError naming ``what`` and the last value after ``timeout``
    seconds past ``not_before`` (or now).
    """
    deadline = max(time.monotonic(), not_before) + timeout
    while True:
        value = read()
        if time.monotonic() >= not_before and good(value):
            return value
        if time.monotonic() > deadline:
            raise SandboxError(f"{what} did not settle in {timeout:g}s "
                               f"(last: {value})")
        time.sleep(0.5)
