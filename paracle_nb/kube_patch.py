"""Patches to one named Kubernetes object, planned, applied and verified.

The machinery behind every applicable Kubernetes plan
(:mod:`paracle_nb.actions_kubernetes`). An :class:`Edit` names one object
in the target's namespace, how to read the planned fields from it as they
are shown, their values after, and the patch that makes them so. Applying

1. re-reads every object and refuses if a planned field no longer shows
   its "before" value;
2. patches each object, with its resourceVersion as a precondition, so a
   change made in between makes the API answer 409 instead of being
   overwritten;
3. re-reads the objects to check every field, and waits, with a bound, for
   the rollout of a changed deployment.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from paracle_nb import kube
from paracle_nb.errors import ParacleError, ParameterError
from paracle_nb.findings import Finding, Severity
from paracle_nb.target import Target

log = logging.getLogger(__name__)

Obj = dict[str, Any]

REMEDIATION_ROLE = "paracle-nb-remediate"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# Shown values: a field the object lacks, one the plan removes, and one set
# to the moment of applying (a restart's timestamp).
ABSENT = "(none)"
REMOVED = "(removed)"
APPLY_TIME = "(the time applied)"

# kind -> (client API, method suffix, resource as RBAC names it)
_OBJECTS = {
    "deployment": ("apps", "deployment", "deployments"),
    "deployment/scale": ("apps", "deployment_scale", "deployments/scale"),
    "secret": ("core", "secret", "secrets"),
    "configmap": ("core", "config_map", "configmaps"),
    "serviceaccount": ("core", "service_account", "serviceaccounts"),
    "service": ("core", "service", "services"),
    "poddisruptionbudget": ("policy", "pod_disruption_budget",
                            "poddisruptionbudgets"),
    "ingress": ("networking", "ingress", "ingresses"),
}


@dataclasses.dataclass
class Edit:
    """One object's planned change.

    ``read`` returns the planned fields of a live object as shown in the
    plan (a Secret's value only as its fingerprint); ``patch`` returns the
    patch body for the live object as it is when applied.
    """

    kind: str
    name: str
    read: Callable[[Obj], dict[str, Any]]
    before: dict[str, Any]
    after: dict[str, Any]
    patch: Callable[[Obj], Any]
    content_type: str = STRATEGIC

    @property
    def object(self) -> str:
        return f"{self.kind.split('/')[0]}/{self.name}"

    def rows(self) -> list[dict[str, Any]]:
        """Return one plan row per field that changes."""
        return [{"object": self.object, "field": field,
                 "before": self.before.get(field, ABSENT), "after": after}
                for field, after in self.after.items()
                if not _same(after, self.before.get(field, ABSENT))]


def read_object(target: Target, kind: str, name: str) -> Obj:
    """Return one object of the target's namespace, as the API sent it."""
    group, suffix, _ = _OBJECTS[kind]
    method = getattr(_api(target, group), f"read_namespaced_{suffix}")
    return dict(kube._call(target, f"read {kind} {name}", method, name,
                           target.namespace))


def patch_object(target: Target, kind: str, name: str, body: Any,
                 content_type: str = STRATEGIC) -> Obj:
    """Patch one object of the target's namespace; return it as patched."""
    group, suffix, _ = _OBJECTS[kind]
    method = getattr(_api(target, group), f"patch_namespaced_{suffix}")
    log.info("patching %s %s in %s", kind, name, target.namespace)
    return dict(kube._call(target, f"patch {kind} {name}", method, name,
                           target.namespace, body, _content_type=content_type))


def _api(target: Target, group: str) -> Any:
    return {"apps": kube._apps, "core": kube._core, "policy": kube._policy,
            "networking": kube._networking}[group](target)


def needs(edits: list[Edit]) -> str:
    """Return which role and verbs applying these edits takes."""
    resources = list(dict.fromkeys(_OBJECTS[e.kind][2] for e in edits))
    return (f"needs the {REMEDIATION_ROLE} Role (deploy/kubernetes/"
            f"rbac-remediation.yaml): get and patch {', '.join(resources)}; "
            "the read-only runbook role cannot change objects.")


# -- applying -----------------------------------------------------------------

def execute(target: Target, edits: list[Edit]) -> dict[str, Any]:
    """Apply the edits in order, each only if its object is still as planned."""
    live = {(edit.kind, edit.name): read_object(target, edit.kind, edit.name)
            for edit in edits}
    for edit in edits:
        _check_unchanged(edit, live[edit.kind, edit.name])

    written = []
    for edit in edits:
        current = live[edit.kind, edit.name]
        body = with_precondition(edit.patch(current), edit.content_type,
                                 current["metadata"]["resourceVersion"])
        result = patch_object(target, edit.kind, edit.name, body, edit.content_type)
        written.append({"object": edit.object, "fields": sorted(edit.after),
                        "resourceVersion": result.get("metadata", {})
                        .get("resourceVersion")})
    return {"patched": written}


def _check_unchanged(edit: Edit, live: Obj) -> None:
    now = edit.read(live)
    # A restart's annotation may move in between: the restart is still wanted.
    moved = {field: now.get(field, ABSENT) for field, after in edit.after.items()
             if after != APPLY_TIME
             and not _same(edit.before.get(field, ABSENT), now.get(field, ABSENT))}
    if moved:
        raise ParacleError(f"{edit.object} changed since the plan was made "
                           f"({', '.join(f'{k} is now {v}' for k, v in moved.items())})"
                           "; not applied: plan again", target="kubernetes")


def with_precondition(body: Any, content_type: str, resource_version: str) -> Any:
    """Return the patch made conditional on the object's resourceVersion."""
    if content_type == JSON_PATCH:
        return [{"op": "test", "path": "/metadata/resourceVersion",
                 "value": resource_version}, *body]
    metadata = {**(body.get("metadata") or {}), "resourceVersion": resource_version}
    return {**body, "metadata": metadata}


def _same(expected: Any, seen: Any) -> bool:
    if expected == REMOVED:
        return seen in (ABSENT, REMOVED, "(unset)")
    if expected == APPLY_TIME:
        return False  # a fresh timestamp always differs from the one before
    return str(expected) == str(seen)


# -- verifying ----------------------------------------------------------------

def verify(target: Target, edits: list[Edit], applied: dict[str, Any], *,
           rollout: str | None, rollout_timeout: float) -> Finding:
    """Re-read the objects, check each planned field, wait for the rollout."""
    after: dict[str, Any] = {}
    wrong: list[str] = []
    for edit in edits:
        now = edit.read(read_object(target, edit.kind, edit.name))
        after.setdefault(edit.object, {}).update(
            {field: now.get(field, ABSENT) for field in edit.after})
        for field, expected in edit.after.items():
            seen = now.get(field, ABSENT)
            changed = expected == APPLY_TIME and seen != edit.before.get(field)
            if not (changed or _same(expected, seen)):
                wrong.append(f"{edit.object} {field} is {seen}, not {expected}")

    status = wait_for_rollout(target, rollout, rollout_timeout) if rollout else None
    if status is not None:
        after["rollout"] = status
    evidence = {**applied, "after": after}
    if wrong:
        return Finding("remediation-incomplete", Severity.CRITICAL,
                       "Patched, but " + "; ".join(wrong) + ".", evidence)
    if status is not None and not status["complete"]:
        return Finding("rollout-timed-out", Severity.WARNING,
                       rollout_summary(rollout or "", status), evidence)
    done = f" {rollout_summary(rollout or '', status)}" if status else ""
    return Finding("remediation-applied", Severity.INFO,
                   f"Patched {', '.join(dict.fromkeys(e.object for e in edits))}; "
                   f"every planned field reads as planned.{done}", evidence)


def rollout_state(deployment: Obj) -> dict[str, Any]:
    """Return a deployment's rollout numbers and whether it is complete.

    Complete: the controller saw the latest spec (observedGeneration), and
    every wanted replica runs it and is available.
    """
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    state = {
        "generation": int(deployment["metadata"].get("generation", 0)),
        "observed_generation": int(status.get("observedGeneration", 0)),
        "replicas": wanted,
        "updated": int(status.get("updatedReplicas", 0)),
        "current": int(status.get("replicas", 0)),
        "available": int(status.get("availableReplicas", 0)),
    }
    stalled = any(c.get("reason") == "ProgressDeadlineExceeded"
                  for c in status.get("conditions") or [])
    state["complete"] = (state["observed_generation"] >= state["generation"]
                         and state["updated"] == state["current"] == wanted
                         and state["available"] == wanted)
    state["stalled"] = stalled and not state["complete"]
    return state


def wait_for_rollout(target: Target, deployment: str, timeout: float,
                     poll: float = 0.25) -> dict[str, Any]:
    """Poll a deployment until its rollout completes, stalls or ``timeout`` ends."""
    started = time.monotonic()
    while True:
        state = rollout_state(read_object(target, "deployment", deployment))
        waited = time.monotonic() - started
        if state["complete"] or state["stalled"] or waited >= timeout:
            return {**state, "waited_s": round(waited, 1),
                    "timeout_s": timeout}
        time.sleep(min(poll, max(timeout - waited, 0.0)))


def rollout_summary(deployment: str, state: dict[str, Any]) -> str:
    """Return one sentence on a rollout: complete, stalled or timed out."""
    numbers = (f"{state['updated']} of {state['replicas']} replicas updated, "
               f"{state['available']} available (generation "
               f"{state['generation']}, observed {state['observed_generation']})")
    if state["complete"]:
        return f"Rollout of deployment/{deployment} complete: {numbers}."
    if state["stalled"]:
        return (f"Rollout of deployment/{deployment} exceeded its progress "
                f"deadline: {numbers}.")
    return (f"Rollout of deployment/{deployment} not complete after "
            f"{state['waited_s']:g} s (the bound): {numbers}. Check the new "
            "pods' events; roll back with kubectl rollout undo.")


# -- reading pod templates ----------------------------------------------------

def container_of(deployment: Obj, container: str) -> Obj:
    """Return a container of a deployment's pod template; say which exist."""
    containers = deployment["spec"]["template"]["spec"].get("containers") or []
    for entry in containers:
        if entry["name"] == container:
            return dict(entry)
    names = ", ".join(c["name"] for c in containers)
    raise ParameterError(f"deployment {deployment['metadata']['name']} has no "
                         f"container {container!r} (it has: {names})")


def template_patch(pod_spec: Obj | None = None, annotations: Obj | None = None
                   ) -> Obj:
    """Return a strategic merge patch of a deployment's pod template."""
    template: Obj = {}
    if annotations:
        template["metadata"] = {"annotations": annotations}
    if pod_spec:
        template["spec"] = pod_spec
    return {"spec": {"template": template}}
