"""The scheduling and service-access runbooks, run against the lab's incidents.

One lab for the module; each test puts its Kubernetes API into one incident
(a scenario served for real over HTTP), runs the runbook through papermill,
and checks the recorded verdict names that cause, and only that one, with
the values the scenario holds.
"""

import json

import pytest

from paracle_nb import run

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

SCHEDULING = "kubernetes/pods-not-scheduling"
SERVICE = "kubernetes/service-not-accessible"
MI = 2**20


def _run(lab, name, tmp_path):
    result = run.run(name, lab.parameters_file, artifacts=tmp_path / "artifacts")
    assert result.failed is None, result.failed
    assert result.notebook.exists() and result.html.exists()
    notebook = json.loads(result.notebook.read_text())
    assert notebook["metadata"]["paracle"]["verdict"] == result.verdict.to_dict()
    written = b"".join(p.read_bytes() for p in result.folder.iterdir())
    for secret in (lab.postgres.password("paracle_sre"), lab.redis.password):
        assert secret.encode() not in written
    return result


def _incident(lab, incident, name, tmp_path):
    with lab.incident(incident):
        return _run(lab, name, tmp_path)


@pytest.mark.parametrize("name", [SCHEDULING, SERVICE])
def test_healthy_lab_has_no_problem(lab, tmp_path, name):
    result = _run(lab, name, tmp_path)
    assert not result.verdict.problem, result.verdict.to_dict()
    assert result.verdict.cause is None


def test_scale_up_beyond_free_cpu_is_insufficient_resources(lab, tmp_path):
    result = _incident(lab, "pending-insufficient-cpu", SCHEDULING, tmp_path)

    assert result.verdict.causes == ["insufficient-resources"]
    evidence = result.verdict.finding("insufficient-resources").evidence
    assert evidence["resource"] == "cpu"
    assert evidence["requested_per_pod"] == 2.01
    assert evidence["max_free"] == 1.89 and evidence["max_free_node"] == "node-b"
    assert evidence["nodes"] == 3 and evidence["nodes_reported"] == 3
    assert evidence["pending_pods"] == 3
    assert evidence["request_that_fits"] == 1.49

    html = result.html.read_text()
    assert "data:image/png;base64" in html and "node requests" in html
    assert "--requests=cpu=1450m" in html


def test_unmatched_node_selector_is_named_with_the_nodes_labels(lab, tmp_path):
    result = _incident(lab, "pending-node-selector", SCHEDULING, tmp_path)

    assert result.verdict.causes == ["node-selector-mismatch"]
    evidence = result.verdict.finding("node-selector-mismatch").evidence
    assert evidence["selector"] == {"node.kubernetes.io/instance-type": "n2-highmem-8"}
    assert evidence["nodes_have"] == {"node.kubernetes.io/instance-type":
                                      ["n2-standard-4"]}
    assert evidence["matching_nodes"] == 0 and evidence["nodes_reported"] == 3
    assert evidence["pods"] == ["paracle-api-5f6d8c7b4-j6v2d"]
    assert "node.kubernetes.io/instance-type" in result.html.read_text()


def test_untolerated_taint_is_named_with_key_value_effect(lab, tmp_path):
    result = _incident(lab, "pending-taint", SCHEDULING, tmp_path)

    assert result.verdict.causes == ["taint-not-tolerated"]
    evidence = result.verdict.finding("taint-not-tolerated").evidence
    assert (evidence["taint_key"], evidence["taint_value"],
            evidence["taint_effect"]) == ("dedicated", "batch", "NoSchedule")
    assert evidence["nodes"] == ["node-a", "node-b", "node-c"]
    assert evidence["pending_pods"] == 1 and evidence["nodes_reported"] == 3
    assert "tolerations" in result.html.read_text()


def test_pdb_allowing_no_disruption_blocks_the_drain(lab, tmp_path):
    result = _incident(lab, "pdb-blocking", SCHEDULING, tmp_path)

    assert result.verdict.causes == ["pdb-blocking"]
    evidence = result.verdict.finding("pdb-blocking").evidence
    assert evidence["pdb"] == "paracle-api-pdb"
    assert evidence["disruptions_allowed"] == 0
    assert evidence["min_available"] == 3 and evidence["max_unavailable"] is None
    assert (evidence["current_healthy"], evidence["desired_healthy"],
            evidence["expected_pods"]) == (3, 3, 3)
    assert evidence["evictions_refused"] == 37
    assert evidence["pods_blocked"] == ["paracle-api-7c9f8d6b5-m4q9t"]
    assert evidence["cordoned_nodes"] == ["node-b"]

    html = result.html.read_text()
    assert "minAvailable" in html and "delete pdb paracle-api-pdb" not in html


def test_service_selector_that_picks_no_pod(lab, tmp_path):
    result = _incident(lab, "service-selector-mismatch", SERVICE, tmp_path)

    assert result.verdict.causes == ["selector-mismatch"]
    evidence = result.verdict.finding("selector-mismatch").evidence
    assert evidence["selector"] == {"app": "paracle-api", "tier": "backend"}
    assert evidence["matching_pods"] == 0
    assert evidence["mismatched"] == {"tier": {"wanted": "backend",
                                               "pods_have": ["api"]}}
    assert evidence["pod_labels"]["tier"] == ["api"]
    assert "selector" in result.html.read_text()


def test_pods_matching_but_not_ready_leave_no_endpoint(lab, tmp_path):
    result = _incident(lab, "service-no-endpoints", SERVICE, tmp_path)

    assert result.verdict.causes == ["no-ready-endpoints"]
    evidence = result.verdict.finding("no-ready-endpoints").evidence
    assert evidence["matching_pods"] == 3 and evidence["ready_pods"] == 0
    assert evidence["ready_addresses"] == 0 and evidence["not_ready_addresses"] == 3


def test_ingress_backend_port_that_does_not_exist(lab, tmp_path):
    result = _incident(lab, "ingress-backend-missing", SERVICE, tmp_path)

    assert result.verdict.causes == ["ingress-backend-missing"]
    evidence = result.verdict.finding("ingress-backend-missing").evidence
    assert evidence["ingress"] == "paracle-ingress"
    assert (evidence["host"], evidence["path"]) == ("api.paracle.example.invalid", "/")
    assert (evidence["backend_service"], evidence["backend_port"]) == ("paracle-api",
                                                                       80)
    assert evidence["service_exists"] and not evidence["port_exists"]
    assert evidence["service_ports"] == ["8000 (http)"]
    assert '"value":{"number":8000}' in result.html.read_text().replace(
        "&quot;", '"')


def test_load_balancer_never_provisioned(lab, tmp_path):
    result = _incident(lab, "load-balancer-pending", SERVICE, tmp_path)

    assert result.verdict.causes == ["load-balancer-pending"]
    evidence = result.verdict.finding("load-balancer-pending").evidence
    assert evidence["service"] == "paracle-api"
    assert evidence["external"] == "<pending>"
    assert 24 * 60 <= evidence["age_s"] <= 30 * 60
    assert evidence["failures"] == 9
    assert evidence["last_event"].startswith("SyncLoadBalancerFailed: ")
    assert "quota exceeded" in evidence["last_event"]


def test_coredns_crash_loop_is_dns_unavailable(lab, tmp_path):
    result = _incident(lab, "dns-down", SERVICE, tmp_path)

    assert result.verdict.causes == ["dns-unavailable"]
    evidence = result.verdict.finding("dns-unavailable").evidence
    assert evidence["pod_status"] == {"coredns-5d78c9869d-q8x2n": "CrashLoopBackOff"}
    assert evidence["restarts"] == {"coredns-5d78c9869d-q8x2n": 14}
    assert evidence["ready_pods"] == 0
    html = result.html.read_text()
    assert "plugin/loop" in html
    assert "nslookup paracle-api.paracle-prod.svc.cluster.local" in html
