"""The lab's Kubernetes API server: start, stop, scenarios, kubeconfig, faults."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from paracle_nb.errors import SandboxError
from paracle_nb.sandbox import procs

from .handler import KubeAPIHandler
from .operations import Request, verb_of
from .routing import parse_resource_path
from .scenario import ScenarioSource, load_scenario
from .status import REASONS, ApiError
from .store import ObjectStore

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

_FAILURE_MESSAGES = {
    401: "Unauthorized",
    404: "the server could not find the requested resource",
    409: "Operation cannot be fulfilled: the object has been modified",
    429: "Too many requests, please try again later.",
    500: "Internal error occurred: the lab was told to fail this request",
    503: "the server is currently unable to handle the request",
    504: "Timeout: request did not complete within the allowed duration",
}


class _RequestLog(list[tuple[str, str]]):
    """A list of ``(method, path)`` whose appends are safe across threads."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def append(self, item: tuple[str, str]) -> None:
        with self._lock:
            super().append(item)


@dataclass
class _Failure:
    pattern: re.Pattern[str]
    status: int
    remaining: int | None
    method: str | None
    message: str | None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], lab: KubeAPIServer) -> None:
        self.lab = lab
        super().__init__(address, KubeAPIHandler)


class KubeAPIServer(procs.LabServer):
    """A Kubernetes API server on loopback, serving a scenario's cluster state.

    The official Python client and ``kubectl`` both work against it::

        with KubeAPIServer() as srv:
            srv.load_scenario("crashloop-oom")
            kubeconfig = srv.write_kubeconfig(tmp_path / "kubeconfig")
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        scenario: ScenarioSource | None = None,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise SandboxError(f"the lab's API server binds loopback only, not {host}")
        self.host = host
        self.port = port
        self.store = ObjectStore()
        self.requests: list[tuple[str, str]] = _RequestLog()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._tokens: set[str] = set()
        self._failures: list[_Failure] = []
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        if scenario is not None:
            self.load_scenario(scenario)

    # -- life cycle --------------------------------------------------------

    @property
    def url(self) -> str:
        """Return ``http://127.0.0.1:PORT``; the server must be started."""
        if self._httpd is None:
            raise SandboxError("the lab's API server is not started", target="kubeapi")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving in a daemon thread; return ``self``."""
        if self._httpd is not None:
            return self
        try:
            self._httpd = _HTTPServer((self.host, self.port), self)
        except OSError as exc:
            raise SandboxError(
                f"cannot listen on {self.host}:{self.port}: {exc}", target="kubeapi"
            ) from exc

        self.port = self._httpd.server_address[1]
        self.stopping.clear()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"kubeapi-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("kubeapi: serving on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection; safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return

        # Streams (watch, log follow) wait on the store: wake them to leave.
        self.stopping.set()
        with self.store.changed:
            self.store.changed.notify_all()

        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("kubeapi: stopped (port %s)", self.port)

    # -- state -------------------------------------------------------------

    def load_scenario(self, source: ScenarioSource) -> int:
        """Replace the whole cluster state with a scenario; return its object count.

        ``source`` is the name of a shipped scenario (``"healthy"``), a path
        to a YAML file, or a mapping of the same shape.
        """
        self.store.rollout_delay = 0.0
        return load_scenario(self.store, source)

    def pace_rollouts(self, delay: float | None) -> None:
        """Make rollouts complete ``delay`` seconds after a spec change.

        0 (what :meth:`load_scenario` sets) completes them at once; ``None``
        leaves them stuck in progress, as a rollout whose new pods never get
        ready.
        """
        self.store.rollout_delay = delay

    def write_kubeconfig(
        self,
        path: str | os.PathLike[str],
        namespace: str = "paracle-prod",
        context: str = "paracle-sandbox",
        token: str | None = None,
    ) -> Path:
        """Write a kubeconfig pointing at this server; return its path.

        With ``token`` the user authenticates with that bearer token, and the
        server from then on answers 401 to requests without a known token.

        Known shortcoming: kubectl (client-go) sends a kubeconfig's
        credentials only over TLS and the lab serves plain HTTP, so once a
        token is required kubectl is refused; the Python client sends it.
        """
        user: dict[str, Any] = {}
        if token is not None:
            user["token"] = token
            with self._lock:
                self._tokens.add(token)

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [
                {
                    "name": context,
                    "context": {
                        "cluster": context,
                        "user": context,
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": context,
            "preferences": {},
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle, sort_keys=False)
        log.info("kubeapi: wrote kubeconfig %s (context %s)", target, context)
        return target

    # -- fault injection ---------------------------------------------------

    def fail(
        self,
        path_regex: str,
        status: int,
        times: int | None = None,
        *,
        method: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer requests whose path matches ``path_regex`` with ``status``.

        The answer is a proper ``Status`` object. ``times`` limits how many
        requests fail (``None``: until :meth:`fail_clear`); ``method`` limits
        it to one HTTP method. The regex is searched in the path, without the
        query string.
        """
        failure = _Failure(re.compile(path_regex), status, times, method, message)
        with self._lock:
            self._failures.append(failure)

    def fail_clear(self) -> None:
        """Forget every failure set with :meth:`fail`."""
        with self._lock:
            self._failures.clear()

    # -- used by the request handler ---------------------------------------

    def _connection_opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _connection_closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _authorize(self, header: str | None) -> None:
        with self._lock:
            tokens = set(self._tokens)
        if not tokens:
            return
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() == "bearer" and any(
            hmac.compare_digest(given.strip(), token) for token in tokens
        ):
            return
        raise ApiError(401, "Unauthorized")

    def _inject_failure(self, method: str, path: str) -> None:
        """Raise the failure set with :meth:`fail` that matches this request."""
        with self._lock:
            failure = next(
                (
                    f
                    for f in self._failures
                    if f.method in (None, method) and f.pattern.search(path)
                ),
                None,
            )
            if failure is None:
                return
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)

        status = failure.status
        message = failure.message or _failure_message(status, method, path)
        raise ApiError(status, message, reason=REASONS.get(status, "Unknown"))


def _failure_message(status: int, method: str, path: str) -> str:
    """Return what a real API server says for ``status`` on this request."""
    if status != 403:
        return _FAILURE_MESSAGES.get(status, f"the lab was told to answer {status}")
    try:
        target = parse_resource_path(path)
    except ApiError:
        return (
            f'forbidden: User "system:anonymous" cannot {method.lower()} path "{path}"'
        )

    resource = target.resource.plural
    if target.subresource:
        resource += f"/{target.subresource}"
    verb = verb_of(Request(method), target)
    where = f' in the namespace "{target.namespace}"' if target.namespace else ""
    qualified = (
        f"{resource}.{target.resource.group}" if target.resource.group else resource
    )
    name = f' "{target.name}"' if target.name else ""
    return (
        f"{qualified}{name} is forbidden: User "
        '"system:serviceaccount:paracle-prod:paracle-runbook" cannot '
        f'{verb} resource "{resource}" in API group "{target.resource.group}"{where}'
    )
