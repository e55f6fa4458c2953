"""Crashloop and pending-pod analysis of 10,000 pods and 50,000 events.

Baseline: ``kubectl get pods,events -A -o json`` against the same lab API
server, which only fetches. Ours: the steps the ``api/pods-crashing`` and
``kubernetes/pods-not-scheduling`` runbooks take with the library (pods,
containers, crashing containers, pod events, pending pods, scheduling
reasons, nodes, node allocation, fit and selectors, and both diagnoses),
timed in a fresh Python whose peak memory is the child's own.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.common import BenchmarkError, Result, in_turns, timed_child, timed_python
from bench.kube_cluster import CRASHING, EVENTS, NAMESPACE, PENDING, PODS, LargeCluster

NAME = "kube-analysis"
TARGET = 1.5
MEMORY_LIMIT = 500 << 20
WHAT = (f"crashloop + pending analysis of {PODS} pods, {EVENTS} events "
        "vs kubectl get pods,events -A -o json")


def run(repeat: int, workdir: Path) -> Result:
    """Serve the large cluster, check the analysis once, then time both in turns."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise BenchmarkError("kubectl is not installed (the baseline needs it)")
    kubeconfig = workdir / "kubeconfig"
    result = Result(NAME, TARGET, memory_limit=MEMORY_LIMIT)
    setup = ("from paracle_nb.target import Target\n"
             "from bench.kube_analysis import analyse\n"
             f"target = Target(kubeconfig={str(kubeconfig)!r}, "
             f"namespace={NAMESPACE!r}, timeout_seconds=300)")
    check = f"{setup}\nfound = analyse(target)\n" + _CHECK

    with LargeCluster(kubeconfig):
        timed_python(check, "pass")

        def baseline():  # type: ignore[no-untyped-def]
            with (workdir / "kubectl.json").open("wb") as out:
                return timed_child([kubectl, "--kubeconfig", str(kubeconfig), "get",
                                    "pods,events", "-A", "-o", "json"], stdout=out)

        in_turns(result, repeat, ours=lambda: timed_python(setup, "analyse(target)"),
                 baseline=baseline)
    peaks = sorted(r.peak_bytes >> 20 for r in result.baseline)
    result.notes.append(f"kubectl peak memory: {peaks[len(peaks) // 2]} MB (median)")
    return result


def analyse(target: Any) -> dict[str, Any]:
    """Run both runbooks' reading and diagnosis steps; return what they found.

    Each phase keeps tables, not the API's lists, once it is done with
    them: ten thousand pods as parsed JSON are a few hundred megabytes.
    """
    crash = _crashloop(target)
    scheduling = _pending(target, crash.pop("waiting"), crash["events"])
    return {"pods": crash["pods"], "crashing": crash["crashing"],
            "pending": scheduling["pending"], "events": len(crash["events"]),
            "causes": sorted(crash["causes"] | scheduling["causes"])}


def _crashloop(target: Any) -> dict[str, Any]:
    """The api/pods-crashing steps: pods, containers, events, diagnosis."""
    from paracle_nb import kube, kube_nodes
    from paracle_nb.diagnosis import pods as diagnosis

    raw_pods = kube.list_pods(target, target.app_label)
    pods = kube.pod_table(raw_pods)
    containers = kube.container_table(raw_pods)
    waiting = kube_nodes.pending_pods(raw_pods)
    del raw_pods

    crashing = diagnosis.crashing_containers(containers)
    events = kube.pod_events(target, pods)
    findings = diagnosis.diagnose_pods_crashing(containers, events=events)
    return {"pods": len(pods), "crashing": len(crashing), "events": events,
            "waiting": waiting, "causes": {f.cause for f in findings}}


def _pending(target: Any, waiting: list[dict[str, Any]], events: Any
             ) -> dict[str, Any]:
    """The kubernetes/pods-not-scheduling steps on the pending pods found."""
    from paracle_nb import failed_scheduling, kube_nodes
    from paracle_nb.diagnosis import scheduling as diagnosis

    pending = kube_nodes.pending_table(waiting)
    reasons = failed_scheduling.scheduling_reasons(events)
    nodes = kube_nodes.list_nodes(target)
    allocation = kube_nodes.node_allocation(nodes, kube_nodes.pods_on_nodes(target))
    fit = kube_nodes.fit_table(waiting, nodes, allocation)
    selectors = kube_nodes.selector_table(waiting, nodes)
    findings = diagnosis.diagnose_scheduling(pending, reasons, fit, selectors)
    return {"pending": len(pending), "causes": {f.cause for f in findings}}


_CHECK = f"""
wanted = {{"pods": {PODS}, "crashing": {CRASHING}, "pending": {PENDING}}}
got = {{key: found[key] for key in wanted}}
if got != wanted or "insufficient-resources" not in found["causes"] \\
        or "oom-killed" not in found["causes"]:
    raise SystemExit(f"the analysis found {{found}}, expected {{wanted}}")
"""
