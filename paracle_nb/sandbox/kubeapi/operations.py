"""The verbs of the lab's Kubernetes API: list, get, create, update, patch, delete.

Each operation takes a parsed request and returns a :class:`Reply`; the HTTP
layer only moves bytes. Streaming answers (watch, ``follow``) live there.
"""

from __future__ import annotations

import builtins
import copy
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .patching import InvalidPatch, json_patch, merge_patch, strategic_merge_patch
from .podlogs import check_previous, choose_container, render_log
from .routing import ResourcePath, flag, integer, wanted_view
from .selectors import (
    InvalidSelector,
    matches_fields,
    matches_labels,
    parse_field_selector,
    parse_label_selector,
)
from .status import ApiError, bad_request, not_found
from .store import ObjectStore
from .tables import partial_list, to_table
from .timeutil import utcnow
from .workloads import (
    SCALABLE_KINDS,
    rescale,
    scale_of,
    settle_rollout,
    start_rollout,
)

Obj = dict[str, Any]

log = logging.getLogger(__name__)

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"

_VERB_OF_METHOD = {
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


@dataclass
class Request:
    """What the HTTP layer read: method, query parameters, headers and body."""

    method: str
    query: Mapping[str, str] = field(default_factory=dict)
    accept: str | None = None
    content_type: str | None = None
    body: bytes = b""

    def json(self) -> Any:
        """Return the body as JSON; a 400 when it is not."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}") from None


@dataclass
class Reply:
    """An answer: a JSON document (dict) or raw bytes, with its status code."""

    code: int
    body: Obj | bytes
    content_type: str = JSON


def verb_of(request: Request, target: ResourcePath) -> str:
    """Return the RBAC verb of a request, e.g. ``list`` or ``patch``."""
    if request.method == "GET":
        if target.name:
            return "get"
        return "watch" if flag(request.query.get("watch")) else "list"
    if request.method == "DELETE" and not target.name:
        return "deletecollection"
    return _VERB_OF_METHOD.get(request.method, request.method.lower())


_COLLECTION_VERBS = frozenset({"list", "watch", "create", "deletecollection"})


def refuse_unserved(target: ResourcePath, verb: str) -> None:
    """Raise the 405 for a verb the path does not take, as discovery says."""
    subresource = target.subresource
    if subresource not in (None, "status", "scale", "log"):
        plural = target.resource.plural
        raise ApiError(405, f"the lab does not serve {plural}/{subresource}")

    if subresource == "log":
        allowed: tuple[str, ...] = ("get",)
    elif subresource:
        allowed = ("get", "update", "patch")
    else:
        allowed = target.resource.verbs
    if verb not in allowed or (verb in _COLLECTION_VERBS) != (target.name is None):
        where = "a collection" if target.name is None else "an object"
        raise ApiError(
            405, f"{verb} is not allowed on {where} of {target.resource.plural}"
        )


class ResourceOperations:
    """Serves resource requests from an :class:`ObjectStore`."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def handle(self, target: ResourcePath, request: Request) -> Reply:
        """Answer one request on a resource path (never a streaming one)."""
        verb = verb_of(request, target)
        refuse_unserved(target, verb)

        if target.subresource == "log":
            return self.pod_log(target, request)
        if target.subresource == "scale":
            return self.scale(target, request)
        if verb == "list":
            return self.list(target, request)
        if verb == "get":
            return self.get(target, request)
        if verb == "create":
            return self.create(target, request)
        if verb == "delete":
            return self.delete(target)
        if verb == "deletecollection":
            return self.delete_collection(target, request)
        return self.update(target, request)

    # -- reads -------------------------------------------------------------

    def matching(self, target: ResourcePath, query: Mapping[str, str]) -> list[Obj]:
        """Return the objects of a collection that pass its selectors."""
        labels, fields = selectors_of(query)
        return [
            obj
            for obj in self.store.list(target.resource, target.namespace)
            if matches_labels(labels, obj["metadata"].get("labels"))
            and matches_fields(fields, obj)
        ]

    def list(self, target: ResourcePath, request: Request) -> Reply:
        objects = self.matching(target, request.query)
        revision = str(self.store.revision)
        resource = target.resource

        view = wanted_view(request.accept)
        if view and view[0] == "Table":
            include = request.query.get("includeObject") or "Metadata"
            table = to_table(
                objects,
                resource.kind,
                revision=revision,
                now=utcnow(),
                include_object=include,
                api_version=view[1],
            )
            return Reply(200, table)
        if view and view[0].startswith("PartialObjectMetadata"):
            return Reply(200, partial_list(objects, revision, view[1]))
        return Reply(
            200,
            {
                "kind": resource.list_kind,
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": revision},
                "items": objects,
            },
        )

    def read(self, target: ResourcePath) -> Obj:
        """Return the object a path names; 404 if there is none."""
        assert target.name is not None
        obj = self.store.get(target.resource, target.namespace, target.name)
        if obj is None:
            raise not_found(target.resource.plural, target.resource.group, target.name)
        return obj

    def get(self, target: ResourcePath, request: Request) -> Reply:
        obj = self.read(target)
        view = wanted_view(request.accept)
        if view and view[0] == "Table":
            include = request.query.get("includeObject") or "Metadata"
            revision = obj["metadata"]["resourceVersion"]
            return Reply(
                200,
                to_table(
                    [obj],
                    target.resource.kind,
                    revision=revision,
                    now=utcnow(),
                    include_object=include,
                    api_version=view[1],
                ),
            )
        if view and view[0] == "PartialObjectMetadata":
            partial = {
                "kind": view[0],
                "apiVersion": view[1],
                "metadata": obj["metadata"],
            }
            return Reply(200, partial)
        return Reply(200, obj)

    def pod_log(self, target: ResourcePath, request: Request) -> Reply:
        """Answer ``GET .../pods/<name>/log`` (without ``follow``)."""
        _, _, lines = self.log_source(target, request)
        query = request.query
        body = render_log(
            lines,
            tail_lines=integer(query.get("tailLines"), "tailLines"),
            timestamps=flag(query.get("timestamps")),
            limit_bytes=integer(query.get("limitBytes"), "limitBytes"),
        )
        return Reply(200, body, TEXT)

    def log_source(
        self, target: ResourcePath, request: Request
    ) -> tuple[Obj, str, builtins.list[Any]]:
        """Return the pod, the container and its recorded log lines."""
        pod = self.read(target)
        container = choose_container(pod, request.query.get("container"))
        previous = flag(request.query.get("previous"))
        namespace = pod["metadata"]["namespace"]
        lines = self.store.logs(namespace, pod["metadata"]["name"], container, previous)
        if previous:
            check_previous(pod, container, lines)
        return pod, container, lines or []

    # -- writes ------------------------------------------------------------

    def create(self, target: ResourcePath, request: Request) -> Reply:
        resource = target.resource
        obj = request.json()
        if not isinstance(obj, dict):
            raise bad_request(f"a {resource.kind} must be a JSON object")
        if obj.get("kind") not in (None, resource.kind):
            raise bad_request(f"the body is a {obj.get('kind')}, not a {resource.kind}")

        metadata = obj.setdefault("metadata", {})
        if resource.namespaced:
            body_ns = metadata.get("namespace")
            if body_ns and target.namespace and body_ns != target.namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request"
                )
            metadata["namespace"] = target.namespace or body_ns or "default"
            if self.store.get("namespaces", None, metadata["namespace"]) is None:
                raise not_found("namespaces", "", metadata["namespace"])
        return Reply(201, self.store.create(resource, obj))

    def delete(self, target: ResourcePath) -> Reply:
        assert target.name is not None
        deleted = self.store.delete(target.resource, target.namespace, target.name)
        if deleted is None:
            raise not_found(target.resource.plural, target.resource.group, target.name)
        return Reply(200, deleted)

    def delete_collection(self, target: ResourcePath, request: Request) -> Reply:
        resource = target.resource
        deleted = []
        for obj in self.matching(target, request.query):
            metadata = obj["metadata"]
            gone = self.store.delete(
                resource, metadata.get("namespace"), metadata["name"]
            )
            if gone is not None:
                deleted.append(gone)
        return Reply(
            200,
            {
                "kind": resource.list_kind,
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(self.store.revision)},
                "items": deleted,
            },
        )

    def update(self, target: ResourcePath, request: Request) -> Reply:
        """Answer PUT and PATCH on an object or its ``status``."""
        assert target.name is not None
        body = request.json()
        status_only = target.subresource == "status"
        keeps_status = "status" in target.resource.subresources and not status_only

        def change(current: Obj) -> Obj:
            if request.method == "PATCH":
                new = apply_patch(current, request.content_type, body)
            elif isinstance(body, dict):
                new = body
            else:
                raise bad_request(f"a {target.resource.kind} must be a JSON object")

            # Status and spec travel separately, as on a real API server.
            if status_only:
                status = new.get("status")
                new = dict(current, status=status) if status is not None else current
            elif keeps_status:
                new = {k: v for k, v in new.items() if k != "status"}
                if "status" in current:
                    new["status"] = current["status"]
            return self._after_spec_change(target, current, new)

        return Reply(200, self._update(target, change))

    def scale(self, target: ResourcePath, request: Request) -> Reply:
        """Answer GET, PUT and PATCH on ``.../<workload>/scale``."""
        if request.method == "GET":
            return Reply(200, scale_of(self.read(target)))
        body = request.json()

        def change(current: Obj) -> Obj:
            if request.method == "PATCH":
                scale = apply_patch(scale_of(current), request.content_type, body)
            elif isinstance(body, dict):
                scale = body
            else:
                raise bad_request("a Scale must be a JSON object")
            try:
                replicas = (scale.get("spec") or {}).get("replicas")
                new = rescale(copy.deepcopy(current), replicas)
            except ValueError as exc:
                raise ApiError(422, str(exc)) from None

            # A stale resourceVersion in the Scale makes the store answer 409.
            wanted = (scale.get("metadata") or {}).get("resourceVersion")
            if wanted:
                new["metadata"]["resourceVersion"] = wanted
            return self._after_spec_change(target, current, new)

        return Reply(200, scale_of(self._update(target, change)))

    def _after_spec_change(self, target: ResourcePath, current: Obj, new: Obj) -> Obj:
        """Start a workload's rollout when its spec changed; settle it as paced.

        The store's ``rollout_delay`` says when: 0 at once, a number of
        seconds later (the rollout stays in progress until then), or, with
        ``None``, never.
        """
        kind = current.get("kind")
        if kind not in SCALABLE_KINDS or new.get("spec") == current.get("spec"):
            return new
        new["kind"] = kind
        metadata = new.setdefault("metadata", {})
        generation = int(current["metadata"].get("generation", 1)) + 1
        metadata["generation"] = generation

        delay = self.store.rollout_delay
        if delay == 0:
            return settle_rollout(new)
        if delay is not None:
            timer = threading.Timer(delay, self._settle_later,
                                    (target, generation))
            timer.daemon = True
            timer.start()
        return start_rollout(new)

    def _settle_later(self, target: ResourcePath, generation: int) -> None:
        """Complete a paced rollout, unless a newer spec change came since."""

        def settle(current: Obj) -> Obj:
            if current["metadata"].get("generation") != generation:
                return current
            return settle_rollout(current)

        try:
            self._update(target, settle)
        except ApiError:  # the object is gone, e.g. another scenario loaded
            log.debug("rollout of %s not settled: object gone", target.name)

    def _update(self, target: ResourcePath, change: Callable[[Obj], Obj]) -> Obj:
        assert target.name is not None
        return self.store.update(target.resource, target.namespace, target.name, change)


def apply_patch(current: Obj, content_type: str | None, patch: Any) -> Obj:
    """Apply a patch body of the given content type; 415 for unsupported types."""
    media = (content_type or "").split(";")[0].strip().lower()
    try:
        if media == STRATEGIC:
            return strategic_merge_patch(current, patch)
        if media == MERGE:
            patched = merge_patch(current, patch)
        elif media == JSON_PATCH:
            patched = json_patch(current, patch)
        elif media == APPLY:
            raise ApiError(415, "server-side apply is not supported by the lab")
        else:
            raise ApiError(415, f"the patch content type {media!r} is not supported")
    except InvalidPatch as exc:
        raise ApiError(422, f"the patch cannot be applied: {exc.message}") from None
    if not isinstance(patched, dict):
        raise ApiError(422, "the patch does not leave an object")
    return patched


def selectors_of(query: Mapping[str, str]) -> tuple[list[Any], list[Any]]:
    """Return the parsed ``labelSelector`` and ``fieldSelector``; 400 if invalid."""
    try:
        return (
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(query.get("fieldSelector")),
        )
    except InvalidSelector as exc:
        raise bad_request(f"unable to parse requirement: {exc.message}") from None
