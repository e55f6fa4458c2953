"""Scheduling and service-access rules on hand-built cluster objects (no servers)."""

import datetime as dt

import pandas as pd
import pytest

from paracle_nb import actions, failed_scheduling, kube_network, kube_nodes
from paracle_nb.diagnosis import scheduling, service
from paracle_nb.runbook import Unavailable
from paracle_nb.target import Target

GI = 2**30


# -- the FailedScheduling message ---------------------------------------------------

@pytest.mark.parametrize("message, total, expected", [
    ("0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, "
     "2 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption "
     "victims found for incoming pod.",
     3, [(1, "taint", "dedicated=gpu"), (2, "insufficient", "cpu")]),
    ("0/5 nodes are available: 1 node(s) had taint {node-role.kubernetes.io/master: "
     "}, that the pod didn't tolerate, 4 node(s) didn't match Pod's node "
     "affinity/selector.",
     5, [(1, "taint", "node-role.kubernetes.io/master"), (4, "node-selector", "")]),
    ("0/4 nodes are available: 1 node(s) were unschedulable, 3 Insufficient memory.",
     4, [(1, "unschedulable", ""), (3, "insufficient", "memory")]),
    ("0/6 nodes are available: 2 Insufficient cpu, 2 Insufficient memory, 3 node(s) "
     "had volume node affinity conflict.",
     6, [(2, "insufficient", "cpu"), (2, "insufficient", "memory"),
         (3, "volume", "")]),
    ("0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
     "preemption: 0/3 nodes are available: 3 Preemption is not helpful for "
     "scheduling.",
     3, [(None, "volume", "")]),
    ("0/1 nodes are available: 1 Too many pods.", 1, [(1, "insufficient", "pods")]),
    ("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.",
     3, [(3, "pod-affinity", "")]),
    ("0/2 nodes are available: 2 Insufficient nvidia.com/gpu.", 2,
     [(2, "insufficient", "nvidia.com/gpu")]),
])
def test_failed_scheduling_message_is_taken_apart(message, total, expected):
    failure = failed_scheduling.parse_failed_scheduling(message)
    assert failure.available == 0 and failure.total == total
    assert [(r.nodes, r.category, r.detail) for r in failure.reasons] == expected
    assert ("preemption" in message) == bool(failure.preemption)


def test_a_message_without_node_counts_is_kept_whole():
    failure = failed_scheduling.parse_failed_scheduling(
        "skip schedule deleting pod: ns/p")
    assert failure.total is None
    assert [(r.nodes, r.category) for r in failure.reasons] == [(None, "other")]


def _event(pod, message, count=1, minutes_ago=1, reason="FailedScheduling"):
    seen = dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc) - dt.timedelta(
        minutes=minutes_ago)
    return {"last_seen": seen, "type": "Warning", "reason": reason,
            "object": f"pod/{pod}", "count": count, "message": message}


def test_scheduling_reasons_count_nodes_from_each_pods_latest_message():
    events = pd.DataFrame([
        _event("a", "0/3 nodes are available: 3 Insufficient cpu.", 5, 1),
        _event("a", "0/3 nodes are available: 2 Insufficient cpu.", 2, 30),
        _event("b", "0/3 nodes are available: 1 node(s) had untolerated taint "
               "{dedicated: gpu}, 2 Insufficient cpu.", 4, 2),
        _event("b", "Successfully assigned", reason="Scheduled"),
    ])
    reasons = failed_scheduling.scheduling_reasons(events)
    rows = {r.reason: r for r in reasons.itertuples()}
    assert rows["Insufficient cpu"].nodes == 3
    assert rows["Insufficient cpu"].pods == 2
    assert rows["Insufficient cpu"].events == 11
    taint = rows["node(s) had untolerated taint {dedicated: gpu}"]
    assert (taint.nodes, taint.category, taint.detail) == (1, "taint", "dedicated=gpu")
    assert set(reasons["total_nodes"]) == {3}


# -- nodes, pods, selectors, taints ---------------------------------------------------

def _node(name, cpu="4", memory="16Gi", labels=None, taints=None, ready=True,
          unschedulable=False):
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                  **(labels or {})}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "conditions": [{"type": "Ready",
                                       "status": "True" if ready else "False"}]}}


def _pod(name, cpu="500m", memory="256Mi", node=None, owner="api-rs", **spec):
    status = {"phase": "Running" if node else "Pending"}
    return {"metadata": {"name": name, "labels": {"app": "api"},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": owner}]},
            "spec": {"nodeName": node, "containers": [
                {"name": "api", "resources": {"requests": {"cpu": cpu,
                                                           "memory": memory}}}],
                     **spec},
            "status": status}


def test_pod_requests_count_init_containers_and_overhead_like_the_scheduler():
    pod = _pod("p", cpu="500m", memory="256Mi",
               initContainers=[{"name": "migrate", "resources": {
                   "requests": {"cpu": "2", "memory": "64Mi"}}}],
               overhead={"cpu": "100m"})
    requests = kube_nodes.pod_requests(pod)
    assert requests["cpu"] == pytest.approx(2.1)
    assert requests["memory"] == 256 * 2**20


def test_tolerations_follow_operator_key_value_and_effect():
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    assert kube_nodes.tolerates([{"operator": "Exists"}], taint)
    assert kube_nodes.tolerates([{"key": "dedicated", "operator": "Exists"}], taint)
    assert kube_nodes.tolerates([{"key": "dedicated", "operator": "Equal",
                                  "value": "gpu", "effect": "NoSchedule"}], taint)
    assert not kube_nodes.tolerates([{"key": "dedicated", "operator": "Equal",
                                      "value": "batch"}], taint)
    assert not kube_nodes.tolerates([{"key": "dedicated", "operator": "Exists",
                                      "effect": "NoExecute"}], taint)


def test_node_selector_and_required_affinity_terms():
    pod = _pod("p", nodeSelector={"pool": "api"}, affinity={"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In",
                                   "values": ["a"]}]},
            {"matchExpressions": [{"key": "cores", "operator": "Gt",
                                   "values": ["8"]}]}]}}})
    assert kube_nodes.matches_node(pod, {"pool": "api", "zone": "a"})
    assert kube_nodes.matches_node(pod, {"pool": "api", "zone": "b", "cores": "16"})
    assert not kube_nodes.matches_node(pod, {"pool": "api", "zone": "b"})
    assert not kube_nodes.matches_node(pod, {"pool": "batch", "zone": "a"})
    assert kube_nodes.matches_node(_pod("q"), {})


def _fit(pending, nodes, running=()):
    allocation = kube_nodes.node_allocation(nodes, list(running))
    return (kube_nodes.pending_table(pending), kube_nodes.fit_table(pending, nodes,
                                                                    allocation),
            kube_nodes.selector_table(pending, nodes))


def test_a_taint_on_one_node_is_not_the_cause_when_the_others_are_full():
    nodes = [_node("gpu-1", taints=[{"key": "dedicated", "value": "gpu",
                                     "effect": "NoSchedule"}]),
             _node("n1"), _node("n2")]
    running = [_pod("r1", cpu="3", node="n1"), _pod("r2", cpu="3500m", node="n2")]
    pending, fit, selectors = _fit([_pod("p1", cpu="2"), _pod("p2", cpu="2")],
                                   nodes, running)
    [finding] = scheduling.diagnose_scheduling(pending, None, fit, selectors)
    assert finding.cause == "insufficient-resources"
    evidence = finding.evidence
    assert evidence["resource"] == "cpu"
    assert evidence["requested_per_pod"] == 2.0
    assert evidence["max_free"] == 1.0 and evidence["max_free_node"] == "n1"
    assert evidence["nodes"] == 2 and evidence["pending_pods"] == 2
    assert evidence["request_that_fits"] == 0.5


def test_selector_and_taint_both_named_when_each_leaves_no_node():
    taint = {"key": "upgrade", "value": "pending", "effect": "NoSchedule"}
    nodes = [_node(n, labels={"pool": "general"}, taints=[taint]) for n in ("a", "b")]
    pending, fit, selectors = _fit([_pod("p", nodeSelector={"pool": "highmem"})],
                                   nodes)
    findings = scheduling.diagnose_scheduling(pending, None, fit, selectors)
    by_cause = {f.cause: f for f in findings}
    assert set(by_cause) == {"taint-not-tolerated", "node-selector-mismatch"}
    taint_evidence = by_cause["taint-not-tolerated"].evidence
    assert (taint_evidence["taint_key"], taint_evidence["taint_value"],
            taint_evidence["taint_effect"]) == ("upgrade", "pending", "NoSchedule")
    assert taint_evidence["nodes"] == ["a", "b"]
    selector = by_cause["node-selector-mismatch"].evidence
    assert selector["selector"] == {"pool": "highmem"}
    assert selector["nodes_have"] == {"pool": ["general"]}


def test_cordoned_and_not_ready_nodes_are_not_candidates():
    nodes = [_node("a", unschedulable=True), _node("b", ready=False), _node("c")]
    pending, fit, _ = _fit([_pod("p")], nodes)
    assert list(fit["blocked_by"]) == ["node not schedulable"] * 2 + [""]
    # It fits on c: whatever holds it back, it is none of the named causes.
    [finding] = scheduling.diagnose_scheduling(pending, None, fit)
    assert finding.cause == "pods-pending"
    assert kube_nodes.cordoned_nodes(nodes) == ["a"]


def test_without_nodes_the_scheduler_events_name_the_cause():
    pending = kube_nodes.pending_table([_pod("p", cpu="2")])
    reasons = failed_scheduling.scheduling_reasons(pd.DataFrame([
        _event("p", "0/3 nodes are available: 3 Insufficient memory.")]))
    fit = Unavailable("Fit of pending pods", RuntimeError("forbidden"))
    [finding] = scheduling.diagnose_scheduling(pending, reasons, fit)
    assert finding.cause == "insufficient-resources"
    assert finding.evidence["resource"] == "memory"
    assert finding.evidence["nodes_reported"] == 3


def test_pending_pods_with_no_known_cause_are_still_reported():
    pending = kube_nodes.pending_table([_pod("p")])
    reasons = failed_scheduling.scheduling_reasons(pd.DataFrame([_event(
        "p", "0/3 nodes are available: pod has unbound immediate "
             "PersistentVolumeClaims.")]))
    [finding] = scheduling.diagnose_scheduling(pending, reasons, None)
    assert finding.cause == "pods-pending"
    assert "PersistentVolumeClaims" in finding.summary


def test_no_pending_pod_no_scheduling_finding():
    assert scheduling.diagnose_scheduling(kube_nodes.pending_table([]), None,
                                          None) == []


@pytest.mark.parametrize("free, pods, current, expected", [
    ([1.49, 1.89, 1.89], 3, 2.01, 1.49),
    ([4.0], 4, 2.0, 1.0),
    ([1.0, 1.0], 1, 0.5, 0.5),
    ([0.0, 0.0], 2, 1.0, None),
])
def test_request_that_fits(free, pods, current, expected):
    assert scheduling.request_that_fits(free, pods, current) == expected


# -- PodDisruptionBudgets -------------------------------------------------------------

def _pdbs(**status):
    row = {"pdb": "api-pdb", "min_available": 3, "max_unavailable": None,
           "selector": "app=api", "expected_pods": 3, "current_healthy": 3,
           "desired_healthy": 3, "disruptions_allowed": 0, **status}
    return pd.DataFrame([row])


def test_a_budget_of_zero_blocks_drains_and_refusals_make_it_critical():
    [quiet] = scheduling.diagnose_pdbs(_pdbs())
    assert quiet.cause == "pdb-blocking" and quiet.severity.value == "warning"
    refusals = pd.DataFrame([{
        "last_seen": None, "reason": "EvictionBlocked", "object": "pod/api-1",
        "count": 7, "message": "Cannot evict pod as it would violate the pod's "
                               "disruption budget."}])
    [loud] = scheduling.diagnose_pdbs(_pdbs(), refusals, ["node-b"])
    assert loud.severity.value == "critical"
    assert loud.evidence["evictions_refused"] == 7
    assert loud.evidence["pods_blocked"] == ["api-1"]
    assert loud.evidence["cordoned_nodes"] == ["node-b"]
    assert (loud.evidence["min_available"], loud.evidence["current_healthy"],
            loud.evidence["desired_healthy"]) == (3, 3, 3)


def test_a_budget_spent_by_unhealthy_pods_is_not_the_cause():
    [finding] = scheduling.diagnose_pdbs(_pdbs(min_available=2, current_healthy=0,
                                               desired_healthy=2))
    assert finding.cause == "pdb-budget-spent" and finding.severity.value == "info"
    assert scheduling.diagnose_pdbs(_pdbs(disruptions_allowed=1)) == []


def test_pdb_plan_loosens_the_budget_and_never_deletes_it():
    plan = actions.plan_pdb_budget(Target(), {"pdb": "api-pdb", "min_available": 3,
                                              "expected_pods": 3})
    assert plan.changes.iloc[0]["after"] == 2
    assert "delete" not in plan.command
    assert '{"spec":{"minAvailable":2}}' in plan.command
    plan = actions.plan_pdb_budget(Target(), {"pdb": "api-pdb", "min_available": None,
                                              "max_unavailable": 0,
                                              "expected_pods": 3})
    assert '"maxUnavailable":1' in plan.command


# -- services ---------------------------------------------------------------------

def _svc(name, selector=None, ports=((8000, "http"),), kind="ClusterIP",
         external=None, age_min=30):
    created = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=age_min)
    return {"metadata": {"name": name,
                         "creationTimestamp": created.isoformat()},
            "spec": {"type": kind, "selector": selector or {},
                     "ports": [{"port": p, "name": n} for p, n in ports]},
            "status": {"loadBalancer": {"ingress": external} if external else {}}}


def _api_pod(name, labels, ready=True):
    return {"metadata": {"name": name, "labels": labels},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def test_a_selector_that_picks_no_pod_is_named_with_the_pods_labels():
    svc = _svc("api", {"app": "api", "tier": "backend"})
    pods = [_api_pod(f"api-{i}", {"app": "api", "tier": "api"}) for i in range(3)]
    selection = kube_network.selected_pods(svc, pods)
    mismatch = kube_network.selector_mismatch(svc["spec"]["selector"], pods)
    labels = kube_network.label_values(pods)
    [finding] = service.diagnose_selection("api", svc["spec"]["selector"], selection,
                                           mismatch, None, labels)
    assert finding.cause == "selector-mismatch"
    assert finding.evidence["matching_pods"] == 0
    assert finding.evidence["mismatched"] == {
        "tier": {"wanted": "backend", "pods_have": ["api"]}}
    assert finding.evidence["pod_labels"] == {"app": ["api"], "tier": ["api"]}

    plan = actions.plan_service_selector(Target(), "api", finding.evidence)
    assert '{"spec":{"selector":{"tier":"api"}}}' in plan.command


def test_matching_pods_that_are_not_ready_leave_no_endpoint():
    svc = _svc("api", {"app": "api"})
    pods = [_api_pod(f"api-{i}", {"app": "api"}, ready=False) for i in range(2)]
    endpoints = kube_network.endpoint_table({"subsets": [{
        "notReadyAddresses": [{"ip": "10.0.0.1", "targetRef": {"name": "api-0"}},
                              {"ip": "10.0.0.2", "targetRef": {"name": "api-1"}}],
        "ports": [{"port": 8000}]}]})
    [finding] = service.diagnose_selection("api", {"app": "api"},
                                           kube_network.selected_pods(svc, pods),
                                           {}, endpoints)
    assert finding.cause == "no-ready-endpoints"
    assert (finding.evidence["matching_pods"], finding.evidence["ready_pods"],
            finding.evidence["ready_addresses"],
            finding.evidence["not_ready_addresses"]) == (2, 0, 0, 2)


def test_ready_pods_behind_a_good_selector_are_fine():
    svc = _svc("api", {"app": "api"})
    pods = [_api_pod("api-0", {"app": "api"})]
    endpoints = kube_network.endpoint_table({"subsets": [{
        "addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 8000}]}]})
    assert service.diagnose_selection("api", {"app": "api"},
                                      kube_network.selected_pods(svc, pods),
                                      {}, endpoints) == []


def _ingress(service_name, port):
    return {"metadata": {"name": "web"}, "spec": {"rules": [{
        "host": "api.example.invalid", "http": {"paths": [{
            "path": "/v1", "backend": {"service": {"name": service_name,
                                                   "port": port}}}]}}]}}


@pytest.mark.parametrize("backend, port, missing", [
    ("api", {"number": 80}, "port"),
    ("api-v2", {"number": 8000}, "service"),
])
def test_ingress_backend_missing_service_or_port(backend, port, missing):
    backends = kube_network.ingress_backends(_ingress(backend, port), [_svc("api")])
    [finding] = service.diagnose_ingress(backends)
    assert finding.cause == "ingress-backend-missing"
    assert finding.evidence["missing"] == missing
    assert finding.evidence["backend_service"] == backend
    assert finding.evidence["service_ports"] == (["8000 (http)"] if missing == "port"
                                                 else [])
    plan = actions.plan_ingress_backend(Target(), finding.evidence, "api")
    assert "/spec/rules/0/http/paths/0/backend/service" in plan.command


def test_ingress_port_by_name_counts_as_existing():
    backends = kube_network.ingress_backends(_ingress("api", {"name": "http"}),
                                             [_svc("api")])
    assert service.diagnose_ingress(backends) == []


def test_load_balancer_pending_only_after_patience_or_a_failure():
    events = pd.DataFrame([{
        "last_seen": None, "first_seen": None, "type": "Warning",
        "reason": "SyncLoadBalancerFailed", "count": 4,
        "message": "Error syncing load balancer: quota exceeded"}])
    services = [_svc("old", kind="LoadBalancer", age_min=25),
                _svc("new", kind="LoadBalancer", age_min=1),
                _svc("done", kind="LoadBalancer", external=[{"ip": "192.0.2.7"}])]
    balancers = kube_network.load_balancers(services, {"old": events})
    findings = {f.cause: f for f in service.diagnose_load_balancers(balancers)}
    assert set(findings) == {"load-balancer-pending", "load-balancer-provisioning"}
    pending = findings["load-balancer-pending"].evidence
    assert pending["service"] == "old" and pending["failures"] == 4
    assert pending["age_s"] >= 25 * 60
    assert "quota exceeded" in pending["last_event"]


def test_dns_unavailable_without_a_ready_coredns_pod():
    dns = pd.DataFrame([{"pod": "coredns-1", "status": "CrashLoopBackOff",
                         "ready": "0/1", "restarts": 14, "node": "n",
                         "age_s": 1.0}])
    [finding] = service.diagnose_dns(dns)
    assert finding.cause == "dns-unavailable"
    assert finding.evidence["restarts"] == {"coredns-1": 14}
    healthy = dns.assign(status="Running", ready="1/1")
    assert service.diagnose_dns(healthy) == []


def test_dns_check_is_only_planned():
    plan = actions.plan_dns_check(Target(namespace="prod"), "api", 8000)
    assert "nslookup api.prod.svc.cluster.local" in plan.command
    assert "kubectl run" in plan.command
    assert "not run" in " ".join(plan.notes).lower()
