"""A large lab cluster: 10,000 pods and 50,000 events, served from a child process.

The pods and events are copies of the shipped scenarios' own: most API
pods run, some crash-loop after OOM kills, some wait unscheduled for CPU.
``python -m bench.kube_cluster KUBECONFIG`` serves it until its stdin
closes; :class:`LargeCluster` starts and stops that process.
"""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.common import PYTHON, ROOT, BenchmarkError, python_env
from paracle_nb.sandbox.kubeapi import KubeAPIServer
from paracle_nb.sandbox.kubeapi.scenario import read_scenario

PODS = 10_000
EVENTS = 50_000
CRASHING = 300
PENDING = 200
NAMESPACE = "paracle-prod"

Obj = dict[str, Any]


def large_scenario(pods: int = PODS, events: int = EVENTS) -> dict[str, Any]:
    """Return a scenario with ``pods`` API pods and ``events`` pod events."""
    pending = read_scenario("pending-insufficient-cpu")
    crashing = read_scenario("crashloop-oom")
    base = [o for o in pending["objects"] if o["kind"] not in ("Pod", "Event")]
    templates = {
        "running": _pod(pending, "paracle-api-7c9f8d6b5-x2v7k"),
        "pending": _pod(pending, "paracle-api-7c9f8d6b5-q7d2p"),
        "crashing": _pod(crashing, "paracle-api-7c9f8d6b5-x2v7k"),
    }
    event_templates = {
        "running": _events(crashing, "paracle-api-7c9f8d6b5-hz8rw", "Normal"),
        "pending": _events(pending, "paracle-api-7c9f8d6b5-q7d2p", "Warning"),
        "crashing": _events(crashing, "paracle-api-7c9f8d6b5-x2v7k", "Warning"),
    }

    # Pods that run fill every node, so the pending ones fit on none.
    nodes = [o["metadata"]["name"] for o in base if o["kind"] == "Node"]
    made_pods: list[Obj] = []
    states: dict[str, str] = {}
    for index in range(pods):
        state = ("crashing" if index < CRASHING else
                 "pending" if index < CRASHING + PENDING else "running")
        name = f"paracle-api-7c9f8d6b5-{index:05d}"
        pod = _copy_pod(templates[state], name)
        if state != "pending":
            pod["spec"]["nodeName"] = nodes[index % len(nodes)]
        made_pods.append(pod)
        states[name] = state

    made_events: list[Obj] = []
    cycle = itertools.cycle(made_pods)
    while len(made_events) < events:
        pod = next(cycle)
        choices = event_templates[states[pod["metadata"]["name"]]]
        template = choices[len(made_events) % len(choices)]
        made_events.append(_copy_event(template, pod, len(made_events)))
    return {"objects": base + made_pods + made_events, "logs": []}


def _pod(scenario: dict[str, Any], name: str) -> Obj:
    return next(o for o in scenario["objects"]
                if o["kind"] == "Pod" and o["metadata"]["name"] == name)


def _events(scenario: dict[str, Any], pod: str, kind: str) -> list[Obj]:
    found = [o for o in scenario["objects"] if o["kind"] == "Event"
             and o["involvedObject"]["name"] == pod]
    return sorted(found, key=lambda e: e["type"] != kind)


def _copy_pod(template: Obj, name: str) -> Obj:
    pod = copy.deepcopy(template)
    pod["metadata"]["name"] = name
    pod["metadata"].pop("uid", None)
    return pod


def _copy_event(template: Obj, pod: Obj, index: int) -> Obj:
    event = copy.deepcopy(template)
    name = pod["metadata"]["name"]
    event["metadata"]["name"] = f"{name}.{index:08x}"
    event["metadata"].pop("uid", None)
    event["involvedObject"] = {"kind": "Pod", "name": name, "namespace": NAMESPACE}
    event["message"] = event.get("message", "").replace(
        template["involvedObject"]["name"], name)
    return event


class LargeCluster:
    """The large cluster served by a child process; a context manager."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self._child: subprocess.Popen[str] | None = None

    def __enter__(self) -> LargeCluster:
        self._child = subprocess.Popen(
            [PYTHON, "-m", "bench.kube_cluster", str(self.kubeconfig)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=ROOT, env=python_env())
        assert self._child.stdout is not None
        ready = self._child.stdout.readline().strip()
        if ready != "ready":
            self.__exit__(None, None, None)
            raise BenchmarkError(f"the large cluster did not start ({ready!r})")
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.stdin:
            child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def serve(kubeconfig: Path) -> None:
    """Serve the large cluster on loopback until stdin closes."""
    with KubeAPIServer(scenario=large_scenario()) as server:
        server.write_kubeconfig(kubeconfig, namespace=NAMESPACE)
        print("ready", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
