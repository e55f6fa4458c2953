"""The HTTP side of the lab's Kubernetes API: routing, bodies, streams."""

from __future__ import annotations

import json
import logging
import select
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from . import discovery
from .operations import (
    TEXT,
    Reply,
    Request,
    ResourceOperations,
    refuse_unserved,
    selectors_of,
)
from .podlogs import render_log
from .routing import ResourcePath, flag, integer, parse_resource_path, wanted_view
from .selectors import matches_fields, matches_labels
from .status import ApiError, status_body
from .store import ExpiredRevision, LogLine
from .tables import to_table
from .timeutil import utcnow

if TYPE_CHECKING:
    from .server import KubeAPIServer

log = logging.getLogger(__name__)

_WATCH_TIMEOUT_MAX = 1800  # seconds; clients re-watch after a timeout
_POLL = 0.5  # seconds between checks that a streaming client is still there


class KubeAPIHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests for a :class:`KubeAPIServer`."""

    protocol_version = "HTTP/1.1"
    server_version = "paracle-lab-kubeapi/1"
    timeout = 300  # an idle keep-alive connection is dropped after this
    # Headers and body go out in separate writes: without this, delayed ACKs
    # hold every response back by tens of milliseconds.
    disable_nagle_algorithm = True

    @property
    def lab(self) -> KubeAPIServer:
        return self.server.lab  # type: ignore[attr-defined,no-any-return]

    def setup(self) -> None:
        super().setup()
        self.lab._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.lab._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("kubeapi %s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- one request -------------------------------------------------------

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        path = "/" + url.path.strip("/")
        query = {
            k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()
        }
        body = self._read_body()
        self.lab.requests.append((method, path))

        try:
            self.lab._authorize(self.headers.get("Authorization"))
            self.lab._inject_failure(method, path)
            request = Request(
                method,
                query,
                accept=self.headers.get("Accept"),
                content_type=self.headers.get("Content-Type"),
                body=body,
            )
            self._route(path, request)
        except ApiError as exc:
            self._send(Reply(exc.code, exc.to_status()))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log.exception("kubeapi: %s %s failed", method, path)
            self._send(
                Reply(500, status_body(500, "Internal error occurred in the lab"))
            )

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _route(self, path: str, request: Request) -> None:
        document = self._discovery(path)
        if document is not None:
            self._send(Reply(200, document))
            return
        if path in ("/healthz", "/livez", "/readyz"):
            self._send(Reply(200, b"ok", TEXT))
            return
        if request.method != "GET" and not path.startswith(("/api/", "/apis/")):
            raise ApiError(405, f"{request.method} is not allowed on {path}")

        target = parse_resource_path(path)
        operations = ResourceOperations(self.lab.store)
        if (
            request.method == "GET"
            and target.name is None
            and flag(request.query.get("watch"))
        ):
            self._watch(target, request)
        elif target.subresource == "log" and flag(request.query.get("follow")):
            self._follow_log(operations, target, request)
        else:
            self._send(operations.handle(target, request))

    def _discovery(self, path: str) -> dict[str, Any] | None:
        parts = [p for p in path.split("/") if p]
        if path == "/version":
            return discovery.version_info()  # type: ignore[return-value]
        if path == "/api":
            return discovery.api_versions(f"{self.lab.host}:{self.lab.port}")
        if path == "/apis":
            return discovery.api_group_list()
        if parts == ["api", "v1"]:
            return discovery.api_resource_list("", "v1")
        if len(parts) == 2 and parts[0] == "apis":
            return discovery.api_group(parts[1]) or _missing()
        if len(parts) == 3 and parts[0] == "apis":
            return discovery.api_resource_list(parts[1], parts[2]) or _missing()
        if path == "/":
            return {"paths": ["/api", "/api/v1", "/apis", "/healthz", "/version"]}
        return None

    # -- writing -----------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        if isinstance(reply.body, bytes):
            body = reply.body
        else:
            body = json.dumps(reply.body, separators=(",", ":")).encode("utf-8")
        self.send_response(reply.code)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(body)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        if not data:
            return  # an empty chunk would end the stream
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _keep_streaming(self, deadline: float) -> bool:
        return (
            time.monotonic() < deadline
            and not self.lab.stopping.is_set()
            and not self._client_gone()
        )

    # -- streams -----------------------------------------------------------

    def _watch(self, target: ResourcePath, request: Request) -> None:
        """Stream watch events: the current objects if asked, then changes."""
        refuse_unserved(target, "watch")
        store = self.lab.store
        labels, fields = selectors_of(request.query)
        timeout = integer(request.query.get("timeoutSeconds"), "timeoutSeconds")
        deadline = time.monotonic() + min(
            timeout or _WATCH_TIMEOUT_MAX, _WATCH_TIMEOUT_MAX
        )
        since_text = request.query.get("resourceVersion") or "0"
        initial = flag(request.query.get("sendInitialEvents")) or since_text == "0"

        view = wanted_view(request.accept)
        include = request.query.get("includeObject") or "Metadata"

        def shown(obj: dict[str, Any]) -> dict[str, Any]:
            # kubectl get -w asks for each event's object as a one-row Table.
            if not view or view[0] != "Table":
                return obj
            revision = obj["metadata"]["resourceVersion"]
            return to_table(
                [obj],
                target.resource.kind,
                revision=revision,
                now=utcnow(),
                include_object=include,
                api_version=view[1],
            )

        def wanted(obj: dict[str, Any]) -> bool:
            namespace = obj["metadata"].get("namespace")
            return (
                (target.namespace is None or namespace == target.namespace)
                and matches_labels(labels, obj["metadata"].get("labels"))
                and matches_fields(fields, obj)
            )

        with store.changed:
            since = (
                store.revision
                if initial
                else integer(since_text, "resourceVersion") or 0
            )
            existing = store.list(target.resource, target.namespace) if initial else []

        self._start_stream("application/json")
        for obj in existing:
            if wanted(obj):
                self._event("ADDED", shown(obj))
        if flag(request.query.get("sendInitialEvents")):
            self._bookmark(target, since)

        while self._keep_streaming(deadline):
            seen = store.revision
            try:
                changes = store.changes_since(since, target.resource)
            except ExpiredRevision as exc:
                self._event("ERROR", status_body(410, exc.message, "Expired"))
                break
            for change in changes:
                if wanted(change.object):
                    self._event(change.type, shown(change.object))
            since = max([since, seen] + [change.revision for change in changes])
            with store.changed:
                if store.revision == seen:
                    store.changed.wait(_POLL)
        self._end_stream()

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        line = json.dumps({"type": kind, "object": obj}, separators=(",", ":"))
        self._chunk(line.encode("utf-8") + b"\n")

    def _bookmark(self, target: ResourcePath, revision: int) -> None:
        metadata = {
            "resourceVersion": str(revision),
            "annotations": {"k8s.io/initial-events-end": "true"},
        }
        resource = target.resource
        self._event(
            "BOOKMARK",
            {
                "kind": resource.kind,
                "apiVersion": resource.api_version,
                "metadata": metadata,
            },
        )

    def _follow_log(
        self, operations: ResourceOperations, target: ResourcePath, request: Request
    ) -> None:
        """Stream a container's log, then each line appended until the client leaves."""
        pod, container, lines = operations.log_source(target, request)
        query = request.query
        timestamps = flag(query.get("timestamps"))
        tail = integer(query.get("tailLines"), "tailLines")

        self._start_stream(TEXT)
        self._chunk(render_log(lines, tail_lines=tail, timestamps=timestamps))
        sent = len(lines)
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        store = self.lab.store
        while self._keep_streaming(float("inf")):
            current: list[LogLine] = store.logs(namespace, name, container) or []
            if len(current) > sent:
                self._chunk(render_log(current[sent:], timestamps=timestamps))
                sent = len(current)
            with store.changed:
                store.changed.wait(_POLL)
        self._end_stream()


def _missing() -> dict[str, Any]:
    raise ApiError(404, "the server could not find the requested resource")
