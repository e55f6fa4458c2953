"""Scenario files: the cluster state the lab serves, written as YAML.

A scenario is a mapping with ``objects`` (Kubernetes objects as a real
cluster returns them) and ``logs`` (``{namespace, pod, container, previous,
text}``). Any string ``now``, ``now-5m`` or ``now-2h30m`` in an object turns
into an RFC 3339 time relative to loading. The loader fills in what a person
should not have to compute: uids, and the uid of every owner reference,
event ``involvedObject`` and endpoint ``targetRef``.

A scenario may start from another one with ``base: <name>``, then

* ``objects`` add objects or replace the base's of the same kind and name;
* ``patches`` change base objects: ``{kind, namespace, name, merge}`` with
  a JSON merge patch, or ``strategic`` with a strategic merge patch;
* ``remove`` drops base objects: ``{kind, namespace, name}``;
* ``logs`` replace the base's log of the same container.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from paracle_nb.errors import SandboxError

from .discovery import REGISTRY
from .patching import merge_patch, strategic_merge_patch
from .store import ObjectStore
from .timeutil import resolve_relative, utcnow

log = logging.getLogger(__name__)

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
ScenarioSource = str | Path | Mapping[str, Any]
Obj = dict[str, Any]

_UID_NAMESPACE = uuid.UUID("6f1c2b1e-3d0a-4c55-9b8e-5a1a0c4e2f10")
_MAX_BASE_DEPTH = 8
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PARSED: dict[tuple[Path, int], Any] = {}  # scenario files by path and mtime


class ScenarioError(SandboxError):
    """A scenario cannot be found, parsed or made consistent."""


def scenario_names() -> list[str]:
    """Return the names of the scenarios shipped with the lab."""
    return sorted(path.stem for path in SCENARIO_DIR.glob("*.yaml"))


def _scenario_path(source: str | Path, relative_to: Path | None) -> Path:
    text = str(source)
    shipped = SCENARIO_DIR / (text if text.endswith(".yaml") else f"{text}.yaml")
    candidates = [shipped, Path(source)]
    if relative_to is not None:
        candidates.insert(0, relative_to / text)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ScenarioError(
        f"no scenario {text!r}; shipped ones are: {', '.join(scenario_names())}",
        target="kubeapi",
        step="load scenario",
    )


def read_scenario(
    source: ScenarioSource, *, relative_to: Path | None = None, depth: int = 0
) -> dict[str, Any]:
    """Return a scenario's ``objects`` and ``logs``, with its base folded in."""
    if depth > _MAX_BASE_DEPTH:
        raise ScenarioError(
            "scenario bases nest too deep (a cycle?)", step="load scenario"
        )

    if isinstance(source, Mapping):
        document: Any = copy.deepcopy(dict(source))
        folder = relative_to
    else:
        path = _scenario_path(source, relative_to)
        document = copy.deepcopy(_parse(path))
        folder = path.parent
    if not isinstance(document, dict):
        raise ScenarioError("a scenario must be a YAML mapping", step="load scenario")

    if not document.get("base"):
        return {
            "objects": list(document.get("objects") or []),
            "logs": list(document.get("logs") or []),
        }
    base = read_scenario(document["base"], relative_to=folder, depth=depth + 1)
    return _fold(base, document)


def _parse(path: Path) -> Any:
    """Return the parsed YAML of ``path``, parsed once per version of the file."""
    key = (path.resolve(), path.stat().st_mtime_ns)
    if key not in _PARSED:
        try:
            _PARSED[key] = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
        except yaml.YAMLError as exc:
            raise ScenarioError(
                f"scenario {path.name} is not valid YAML: {exc}"
            ) from exc
    return _PARSED[key]


def _identity(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    metadata = obj.get("metadata") or obj
    return (
        str(obj.get("kind", "")),
        str(metadata.get("namespace") or ""),
        str(metadata.get("name", "")),
    )


def _log_key(entry: Mapping[str, Any]) -> tuple[str, str, str, bool]:
    return (
        entry["namespace"],
        entry["pod"],
        entry["container"],
        bool(entry.get("previous", False)),
    )


def _fold(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` changed by ``overlay``'s objects, patches, removals and logs."""
    objects = {_identity(obj): obj for obj in base["objects"]}

    for target in overlay.get("remove") or []:
        if objects.pop(_identity(target), None) is None:
            raise ScenarioError(f"cannot remove {_identity(target)}: not in the base")
    for patch in overlay.get("patches") or []:
        key = _identity(patch)
        if key not in objects:
            raise ScenarioError(f"cannot patch {key}: not in the base")
        if "strategic" in patch:
            objects[key] = strategic_merge_patch(objects[key], patch["strategic"])
        else:
            objects[key] = merge_patch(objects[key], patch.get("merge") or {})
    for obj in overlay.get("objects") or []:
        objects[_identity(obj)] = obj

    logs = {_log_key(entry): entry for entry in base["logs"]}
    for entry in overlay.get("logs") or []:
        logs[_log_key(entry)] = entry
    return {"objects": list(objects.values()), "logs": list(logs.values())}


def _resolve_times(value: Any, now: dt.datetime) -> Any:
    if isinstance(value, str):
        resolved = resolve_relative(value, now) if value.startswith("now") else None
        return resolved or value
    if isinstance(value, dict):
        return {k: _resolve_times(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_times(v, now) for v in value]
    return value


def _check(obj: Any, index: int) -> None:
    if not isinstance(obj, dict) or not obj.get("kind"):
        raise ScenarioError(f"object #{index} of the scenario has no kind")
    if not (obj.get("metadata") or {}).get("name"):
        raise ScenarioError(f"object #{index} ({obj['kind']}) has no metadata.name")
    if REGISTRY.by_kind(obj["kind"], obj.get("apiVersion")) is None:
        raise ScenarioError(f"object #{index}: the lab serves no kind {obj['kind']!r}")


def _link_references(objects: list[Obj]) -> None:
    """Give every reference to another object of the scenario that object's uid."""
    uids: dict[tuple[str, str, str], str] = {}
    for obj in objects:
        metadata = obj["metadata"]
        resource = REGISTRY.by_kind(obj["kind"], obj.get("apiVersion"))
        if resource is not None and resource.namespaced:
            metadata.setdefault("namespace", "default")
        kind, namespace, name = _identity(obj)
        metadata.setdefault(
            "uid", str(uuid.uuid5(_UID_NAMESPACE, f"{kind}/{namespace}/{name}"))
        )
        uids[(kind, namespace, name)] = metadata["uid"]

    def link(ref: Obj, namespace: str) -> None:
        kind = ref.get("kind", "")
        resource = REGISTRY.by_kind(kind) if kind else None
        if resource is not None:
            ref.setdefault("apiVersion", resource.api_version)
            namespace = ref.get("namespace", namespace) if resource.namespaced else ""
        uid = uids.get((kind, namespace, ref.get("name", "")))
        if uid and not ref.get("uid"):
            ref["uid"] = uid

    for obj in objects:
        namespace = obj["metadata"].get("namespace", "")
        for owner in obj["metadata"].get("ownerReferences") or []:
            link(owner, namespace)
            owner.setdefault("controller", True)
            owner.setdefault("blockOwnerDeletion", True)
        if isinstance(obj.get("involvedObject"), dict):
            link(obj["involvedObject"], namespace)
        for subset in obj.get("subsets") or []:
            for address in (subset.get("addresses") or []) + (
                subset.get("notReadyAddresses") or []
            ):
                if isinstance(address.get("targetRef"), dict):
                    link(address["targetRef"], namespace)


def load_scenario(
    store: ObjectStore, source: ScenarioSource, *, now: dt.datetime | None = None
) -> int:
    """Replace the whole state of ``store`` with a scenario; return the object count."""
    scenario = read_scenario(source)
    now = now or utcnow()

    objects = [_resolve_times(obj, now) for obj in scenario["objects"]]
    for index, obj in enumerate(objects):
        _check(obj, index)
    _link_references(objects)

    store.clear()
    for obj in objects:
        store.put(obj)
    for index, entry in enumerate(scenario["logs"]):
        try:
            namespace, pod, container, previous = _log_key(entry)
        except KeyError as exc:
            raise ScenarioError(f"log entry #{index} lacks {exc.args[0]!r}") from exc
        store.set_logs(namespace, pod, container, str(entry.get("text", "")), previous)

    name = source if isinstance(source, (str, Path)) else "<mapping>"
    log.info("kubeapi: loaded scenario %s (%d objects)", name, len(objects))
    return len(objects)
