"""What the lab does instead of running controllers: settle a rollout.

The lab keeps pods exactly as the scenario wrote them. Only a workload's own
status moves: after its spec changes through the API, it reports the rollout
as complete, so ``kubectl rollout status`` and ``kubectl scale`` finish. The
store's ``rollout_delay`` can slow that down: the status first shows the new
generation observed and no replica updated, and catches up after the delay,
or never (``None``), for a rollout that hangs.
"""

from __future__ import annotations

from typing import Any

from .selectors import selector_string
from .timeutil import format_time, utcnow

Obj = dict[str, Any]

SCALABLE_KINDS = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})


def _condition(kind: str, reason: str, message: str) -> dict[str, str]:
    now = format_time(utcnow())
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    }


def settle_rollout(obj: Obj) -> Obj:
    """Return ``obj`` with its status showing the current spec fully rolled out."""
    kind = obj.get("kind")
    if kind not in SCALABLE_KINDS:
        return obj

    name = obj["metadata"]["name"]
    replicas = int((obj.get("spec") or {}).get("replicas", 1))
    status = obj.setdefault("status", {})
    status.update(
        observedGeneration=obj["metadata"].get("generation", 1),
        replicas=replicas,
        readyReplicas=replicas,
        availableReplicas=replicas,
    )
    if kind == "ReplicaSet":
        status["fullyLabeledReplicas"] = replicas
        return obj

    status["updatedReplicas"] = replicas
    status.pop("unavailableReplicas", None)
    if kind == "StatefulSet":
        status["currentReplicas"] = replicas
        if status.get("updateRevision"):
            status["currentRevision"] = status["updateRevision"]
        return obj

    status["conditions"] = [
        _condition(
            "Available",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        ),
        _condition(
            "Progressing",
            "NewReplicaSetAvailable",
            f'ReplicaSet "{name}" has successfully progressed.',
        ),
    ]
    return obj


# Known shortcoming: a rollout held forever never turns its Progressing
# condition to ProgressDeadlineExceeded, as a real controller does after
# progressDeadlineSeconds; clients see it only as not complete.
def start_rollout(obj: Obj) -> Obj:
    """Return ``obj`` with its status showing a rollout begun: none updated yet."""
    if obj.get("kind") not in SCALABLE_KINDS:
        return obj

    name = obj["metadata"]["name"]
    status = obj.setdefault("status", {})
    status["observedGeneration"] = obj["metadata"].get("generation", 1)
    status["updatedReplicas"] = 0
    if obj.get("kind") == "Deployment":
        kept = [c for c in status.get("conditions") or []
                if c.get("type") != "Progressing"]
        status["conditions"] = [*kept, _condition(
            "Progressing", "ReplicaSetUpdated",
            f'ReplicaSet "{name}" is progressing.')]
    return obj


def scale_of(obj: Obj) -> Obj:
    """Return the autoscaling/v1 ``Scale`` of a Deployment or StatefulSet."""
    metadata = obj["metadata"]
    spec = obj.get("spec") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            key: metadata[key]
            for key in (
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "creationTimestamp",
            )
            if key in metadata
        },
        "spec": {"replicas": int(spec.get("replicas", 1))},
        "status": {
            "replicas": int((obj.get("status") or {}).get("replicas", 0)),
            "selector": selector_string(spec.get("selector")),
        },
    }


def rescale(obj: Obj, replicas: Any) -> Obj:
    """Return ``obj`` with ``spec.replicas`` set; ``ValueError`` if not a count."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError(
            f"spec.replicas must be a non-negative integer, not {replicas!r}"
        )
    obj.setdefault("spec", {})["replicas"] = replicas
    return obj
