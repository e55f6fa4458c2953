"""The lab cluster's state: objects, container logs and a change feed.

Every method is thread-safe; what goes in and comes out is a deep copy, so
callers can never change the state behind the store's back.
"""

from __future__ import annotations

import builtins
import copy
import datetime as dt
import logging
import re
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paracle_nb.errors import SandboxError

from .discovery import REGISTRY, Registry, Resource
from .status import already_exists, conflict, not_found
from .timeutil import format_time, parse_time, utcnow

log = logging.getLogger(__name__)

Obj = dict[str, Any]
_LOG_TIME = re.compile(r"(?:^|\s)(?:ts|time)=(\S+)|^(\d{4}-\d\d-\d\dT\S+)")
_CHANGES_KEPT = 2000

# Kinds whose metadata.generation counts spec changes (pods have none in 1.32).
GENERATION_KINDS = frozenset(
    {"Deployment", "ReplicaSet", "StatefulSet", "PodDisruptionBudget", "Ingress"}
)


class UnknownResource(SandboxError):
    """The store was asked for a kind or resource the lab does not serve."""


@dataclass(frozen=True)
class Change:
    """One entry of the change feed, as a watch reports it."""

    revision: int
    type: str  # ADDED, MODIFIED or DELETED
    resource: Resource
    object: Obj


@dataclass(frozen=True)
class LogLine:
    """One line of a container's log and when it was written."""

    time: dt.datetime
    text: str


class ExpiredRevision(SandboxError):
    """A watch asked for changes older than the feed still holds."""


class ObjectStore:
    """Objects by resource, namespace and name, with a global resourceVersion."""

    def __init__(self, registry: Registry = REGISTRY) -> None:
        self.registry = registry
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._logs: dict[tuple[str, str, str, bool], list[LogLine]] = {}
        self._changes: deque[Change] = deque(maxlen=_CHANGES_KEPT)
        self._revision = 0
        self._forgotten = 0  # changes up to this revision are gone from the feed
        # Seconds a workload's rollout takes after a spec change; None: forever.
        self.rollout_delay: float | None = 0.0

    # -- resources ---------------------------------------------------------

    def resource(self, kind_or_plural: str | Resource) -> Resource:
        """Return the resource named by kind, plural or short name."""
        if isinstance(kind_or_plural, Resource):
            return kind_or_plural
        found = self.registry.resolve(kind_or_plural)
        if found is None:
            raise UnknownResource(f"the lab serves no resource {kind_or_plural!r}")
        return found

    def _resource_of(self, obj: Obj) -> Resource:
        kind = obj.get("kind")
        if not kind:
            raise UnknownResource("an object needs a kind", detail=repr(obj)[:200])
        found = self.registry.by_kind(kind, obj.get("apiVersion"))
        if found is None:
            raise UnknownResource(f"the lab serves no kind {kind!r}")
        return found

    @property
    def revision(self) -> int:
        """Return the latest resourceVersion handed out, as an integer."""
        with self._lock:
            return self._revision

    # -- reads -------------------------------------------------------------

    def get(
        self, kind_or_plural: str | Resource, namespace: str | None, name: str
    ) -> Obj | None:
        """Return a copy of one object, or ``None``."""
        resource = self.resource(kind_or_plural)
        with self._lock:
            obj = self._objects.get(resource.key, {}).get(
                _key(resource, namespace, name)
            )
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, kind_or_plural: str | Resource, namespace: str | None = None
    ) -> list[Obj]:
        """Return copies of all objects of a resource, in one namespace or all."""
        resource = self.resource(kind_or_plural)
        with self._lock:
            objects = self._objects.get(resource.key, {})
            return [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(objects.items())
                if namespace is None or not resource.namespaced or ns == namespace
            ]

    # -- writes ------------------------------------------------------------

    def put(self, obj: Obj) -> Obj:
        """Create or replace ``obj``; fill uid, resourceVersion and timestamps."""
        resource = self._resource_of(obj)
        with self._lock:
            stored = self._write(resource, copy.deepcopy(obj))
            return copy.deepcopy(stored)

    def create(self, resource: Resource, obj: Obj) -> Obj:
        """Create ``obj``; 409 AlreadyExists when its name is taken."""
        with self._lock:
            obj = copy.deepcopy(obj)
            self._normalise(resource, obj)
            if self._find(resource, obj) is not None:
                name = obj["metadata"]["name"]
                raise already_exists(resource.plural, resource.group, name)
            for field in ("uid", "resourceVersion", "creationTimestamp", "generation"):
                obj["metadata"].pop(field, None)
            return copy.deepcopy(self._write(resource, obj))

    def update(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        change: Callable[[Obj], Obj],
    ) -> Obj:
        """Replace an object with ``change(copy)``, atomically.

        404 if the object is missing; 409 if the new object names a
        resourceVersion other than the current one. An update that changes
        nothing keeps the resourceVersion.
        """
        with self._lock:
            key = _key(resource, namespace, name)
            current = self._objects.get(resource.key, {}).get(key)
            if current is None:
                raise not_found(resource.plural, resource.group, name)

            new = change(copy.deepcopy(current))
            new.setdefault("metadata", {})
            wanted = new["metadata"].get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise conflict(resource.plural, resource.group, name)

            # Identity is the server's: a body cannot rename or re-create.
            for field in ("name", "namespace", "uid", "creationTimestamp"):
                if field in current["metadata"]:
                    new["metadata"][field] = current["metadata"][field]
            new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            if "generation" in current["metadata"]:
                new["metadata"]["generation"] = current["metadata"]["generation"]
            new["apiVersion"], new["kind"] = resource.api_version, resource.kind
            if new == current:
                return copy.deepcopy(current)
            return copy.deepcopy(self._write(resource, new))

    def delete(
        self, kind_or_plural: str | Resource, namespace: str | None, name: str
    ) -> Obj | None:
        """Delete one object; return what was deleted, or ``None``."""
        resource = self.resource(kind_or_plural)
        with self._lock:
            objects = self._objects.get(resource.key, {})
            obj = objects.pop(_key(resource, namespace, name), None)
            if obj is None:
                return None
            self._revision += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._revision)
            self._record("DELETED", resource, obj)
            return copy.deepcopy(obj)

    def clear(self) -> None:
        """Forget every object and log; watchers must list again."""
        with self._lock:
            self._objects.clear()
            self._logs.clear()
            self._changes.clear()
            self._revision += 1
            self._forgotten = self._revision
            self.changed.notify_all()

    def _normalise(self, resource: Resource, obj: Obj) -> None:
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        metadata = obj.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
        if not metadata.get("name"):
            raise SandboxError(f"a {resource.kind} needs metadata.name")
        if resource.namespaced:
            metadata["namespace"] = metadata.get("namespace") or "default"
        else:
            metadata.pop("namespace", None)

    def _find(self, resource: Resource, obj: Obj) -> Obj | None:
        metadata = obj["metadata"]
        key = (metadata.get("namespace", ""), metadata["name"])
        return self._objects.get(resource.key, {}).get(key)

    def _write(self, resource: Resource, obj: Obj) -> Obj:
        """Store ``obj`` with fresh server-side metadata; the lock is held."""
        self._normalise(resource, obj)
        metadata = obj["metadata"]
        old = self._find(resource, obj)

        counts_generations = resource.kind in GENERATION_KINDS
        if old is not None:
            metadata.setdefault("uid", old["metadata"].get("uid"))
            metadata.setdefault(
                "creationTimestamp", old["metadata"].get("creationTimestamp")
            )
            if counts_generations and obj.get("spec") != old.get("spec"):
                metadata["generation"] = int(old["metadata"].get("generation", 1)) + 1
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", format_time(utcnow()))
        if counts_generations:
            metadata.setdefault("generation", 1)

        self._revision += 1
        metadata["resourceVersion"] = str(self._revision)
        key = (metadata.get("namespace", ""), metadata["name"])
        self._objects.setdefault(resource.key, {})[key] = obj
        self._record("ADDED" if old is None else "MODIFIED", resource, obj)
        log.debug("stored %s %s rv=%s", resource.kind, key, self._revision)
        return obj

    # -- change feed -------------------------------------------------------

    def _record(self, kind: str, resource: Resource, obj: Obj) -> None:
        if len(self._changes) == self._changes.maxlen:
            self._forgotten = self._changes[0].revision
        self._changes.append(Change(self._revision, kind, resource, copy.deepcopy(obj)))
        self.changed.notify_all()

    def changes_since(self, revision: int, resource: Resource) -> builtins.list[Change]:
        """Return the changes to ``resource`` after ``revision``.

        Raises :class:`ExpiredRevision` when the feed no longer reaches back
        that far, as a real API server answers 410 Gone.
        """
        with self._lock:
            if revision < self._forgotten:
                raise ExpiredRevision(f"resourceVersion {revision} is too old")
            return [
                c
                for c in self._changes
                if c.revision > revision and c.resource == resource
            ]

    # -- container logs ----------------------------------------------------

    def set_logs(
        self,
        namespace: str,
        pod: str,
        container: str,
        text: str,
        previous: bool = False,
    ) -> None:
        """Replace the log of a container (or of its previous instance)."""
        with self._lock:
            self._logs[(namespace, pod, container, previous)] = _split_log(text)
            self.changed.notify_all()

    def append_logs(self, namespace: str, pod: str, container: str, text: str) -> None:
        """Append lines to a container's current log, waking followers."""
        with self._lock:
            lines = self._logs.setdefault((namespace, pod, container, False), [])
            lines.extend(_split_log(text))
            self.changed.notify_all()

    def logs(
        self, namespace: str, pod: str, container: str, previous: bool = False
    ) -> builtins.list[LogLine] | None:
        """Return a container's log lines, or ``None`` if it has none recorded."""
        with self._lock:
            lines = self._logs.get((namespace, pod, container, previous))
            return list(lines) if lines is not None else None


def _key(resource: Resource, namespace: str | None, name: str) -> tuple[str, str]:
    return ((namespace or "") if resource.namespaced else "", name)


def _split_log(text: str) -> list[LogLine]:
    """Split ``text`` into lines, each timed by its own ``ts=`` field if any."""
    now = dt.datetime.now(dt.timezone.utc)
    lines = []
    for line in text.splitlines():
        match = _LOG_TIME.search(line)
        stamp = parse_time(match.group(1) or match.group(2)) if match else None
        lines.append(LogLine(stamp or now, line))
    return lines
