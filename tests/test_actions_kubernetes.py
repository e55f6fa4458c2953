"""Kubernetes remediation against the lab's API: planned, patched, verified."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from paracle_nb import actions, actions_kubernetes, kube_patch
from paracle_nb.actions import Plan
from paracle_nb.actions_errors import plan_set_image
from paracle_nb.errors import KubernetesError
from paracle_nb.latency_plans import plan_scale_replicas
from paracle_nb.remediate import read_audit
from paracle_nb.sandbox.lab import NAMESPACE, Lab
from paracle_nb.secrets import fingerprint
from paracle_nb.target import Target

pytestmark = pytest.mark.servers

API = "paracle-api"
DEPLOY = ("Deployment", API)
# Server-side fields that move with any write, and the status the lab settles.
_MOVING = {("metadata", "resourceVersion"), ("metadata", "generation"),
           ("status",)}
DEPLOYMENT_MANIFESTS = Path(__file__).resolve().parent.parent / "deploy/kubernetes"


@pytest.fixture(autouse=True)
def healthy(lab: Lab, audit: Path) -> Iterator[Path]:
    """Each test starts from the healthy cluster; audit goes to a tmp file."""
    yield audit
    lab.kube.fail_clear()
    lab.load_scenario("healthy")


@pytest.fixture()
def target(lab: Lab) -> Target:
    return Target.from_parameters(lab.parameters)


def _get(lab: Lab, kind: str, name: str) -> dict[str, Any]:
    obj = lab.kube.store.get(kind, NAMESPACE, name)
    assert obj is not None, f"{kind} {name} missing from the lab"
    return obj


def _diff(a: Any, b: Any, path: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    """Return the paths where two objects differ; list items by their name."""
    if path in _MOVING:
        return set()
    if isinstance(a, dict) or isinstance(b, dict):
        a, b = a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {}
        return {p for key in a.keys() | b.keys()
                for p in _diff(a.get(key), b.get(key), (*path, key))}
    if isinstance(a, list) and isinstance(b, list) and all(
            isinstance(i, dict) and "name" in i for i in a + b):
        return _diff({i["name"]: i for i in a}, {i["name"]: i for i in b}, path)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return {p for i, (x, y) in enumerate(zip(a, b, strict=True))
                for p in _diff(x, y, (*path, i))}
    return set() if a == b else {path}


TEMPLATE = ("spec", "template", "spec")
CONTAINER = (*TEMPLATE, "containers", "api")
RESTARTED = ("spec", "template", "metadata", "annotations",
             actions_kubernetes.RESTARTED_AT)


def _new_value_file(tmp_path: Path) -> str:
    path = tmp_path / "new-key"
    path.write_text("sk-lab-rotated-0000000000000000new\n")
    return str(path)


# Each action: how to plan it, and exactly which paths of which objects it
# changes once applied.
CASES: dict[str, tuple[Callable[[Target, Path], Plan],
                       dict[tuple[str, str], set[tuple[Any, ...]]]]] = {
    "memory limit": (
        lambda t, _: actions.plan_memory_limit(t, API, "api", "1Gi"),
        {DEPLOY: {(*CONTAINER, "resources", "limits", "memory")}}),
    "env set and unset": (
        lambda t, _: actions.plan_set_env(t, API, "api",
                                          {"LOG_LEVEL": None, "FEATURE_X": "on"}),
        {DEPLOY: {(*CONTAINER, "env", "LOG_LEVEL", "name"),
                  (*CONTAINER, "env", "LOG_LEVEL", "value"),
                  (*CONTAINER, "env", "FEATURE_X", "name"),
                  (*CONTAINER, "env", "FEATURE_X", "value")}}),
    "image": (
        lambda t, _: plan_set_image(t, API, "api"),
        {DEPLOY: {(*CONTAINER, "image")}}),
    "rollout restart": (
        lambda t, _: actions_kubernetes.rollout_restart(t, API),
        {DEPLOY: {RESTARTED}}),
    "scale": (
        lambda t, _: plan_scale_replicas(t, API, 5),
        {DEPLOY: {("spec", "replicas")}}),
    "secret key then restart": (
        lambda t, tmp: actions_kubernetes.update_secret_key(
            t, "paracle-secrets", "OPENAI_API_KEY", API,
            value_file=_new_value_file(tmp)),
        {("Secret", "paracle-secrets"): {("data", "OPENAI_API_KEY")},
         DEPLOY: {RESTARTED}}),
    "node selector": (
        lambda t, _: actions_kubernetes.patch_node_selector(
            t, API, {"disktype": "ssd"}),
        {DEPLOY: {(*TEMPLATE, "nodeSelector", "disktype")}}),
    "toleration": (
        lambda t, _: actions_kubernetes.add_toleration(
            t, API, {"key": "dedicated", "operator": "Equal", "value": "api",
                     "effect": "NoSchedule"}),
        {DEPLOY: {(*TEMPLATE, "tolerations")}}),
    "image pull secret": (
        lambda t, _: actions_kubernetes.add_image_pull_secret(
            t, "paracle-api", "regcred", API),
        {("ServiceAccount", "paracle-api"): {("imagePullSecrets",)},
         DEPLOY: {RESTARTED}}),
    "default LLM provider": (
        lambda t, _: actions_kubernetes.switch_llm_provider(t, API, "api",
                                                            "anthropic"),
        {DEPLOY: {(*CONTAINER, "env", "DEFAULT_LLM_PROVIDER", "value")}}),
    "fallback LLM providers": (
        lambda t, _: actions_kubernetes.set_fallback_providers(
            t, API, "api", ["anthropic", "openai"]),
        {DEPLOY: {(*CONTAINER, "env", "FALLBACK_PROVIDERS", "name"),
                  (*CONTAINER, "env", "FALLBACK_PROVIDERS", "value")}}),
    "LLM rate limit": (
        lambda t, _: actions_kubernetes.set_llm_rate_limit(t, API, "api", 50),
        {DEPLOY: {(*CONTAINER, "env", "LLM_RATE_LIMIT", "name"),
                  (*CONTAINER, "env", "LLM_RATE_LIMIT", "value")}}),
}


def _snapshot(lab: Lab, objects: Any) -> dict[tuple[str, str], Any]:
    return {key: copy.deepcopy(_get(lab, *key)) for key in objects}


@pytest.mark.parametrize("case", list(CASES))
def test_planning_changes_nothing_and_applying_changes_exactly_the_plan(
        lab: Lab, target: Target, tmp_path: Path, healthy: Path,
        case: str) -> None:
    build, expected = CASES[case]
    before = _snapshot(lab, expected)

    plan = build(target, tmp_path)
    assert _snapshot(lab, expected) == before
    assert not plan.empty and plan.executor is not None
    assert build(target, tmp_path).id == plan.id

    # A batch run that was not started with this plan's id changes nothing.
    assert plan.apply().outcome == "not-confirmed"
    assert _snapshot(lab, expected) == before

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "applied", result.finding.summary
    assert result.finding.cause == "remediation-applied", result.finding.summary
    after = _snapshot(lab, expected)
    assert {key: _diff(before[key], after[key]) for key in expected} == expected
    refused, record = read_audit(healthy)  # every attempt is audited
    assert refused["outcome"] == "not-confirmed"
    assert record["plan_id"] == plan.id and record["outcome"] == "applied"
    assert record["planned"] == plan.rows()
    assert record["after"]["rollout"]["complete"] if DEPLOY in expected else True


def test_a_forbidden_patch_is_a_finding_naming_the_remediation_role(
        lab: Lab, target: Target) -> None:
    lab.kube.fail(rf"/namespaces/{NAMESPACE}/deployments/{API}$", 403,
                  method="PATCH")
    before = _get(lab, *DEPLOY)
    plan = actions_kubernetes.set_image(
        target, API, "api", "registry.example.invalid/paracle-api:v1.0.4")

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "forbidden"
    assert result.finding.cause == "remediation-forbidden"
    assert result.finding.severity.value == "critical"
    assert "paracle-nb-remediate" in result.finding.summary
    assert "patch deployments" in result.finding.summary
    assert _get(lab, *DEPLOY) == before


def test_a_forbidden_scale_names_the_scale_subresource(lab: Lab,
                                                       target: Target) -> None:
    lab.kube.fail(r"/deployments/paracle-api/scale$", 403, method="PATCH")
    plan = actions_kubernetes.scale_replicas(target, API, 4)
    result = plan.apply(confirm=plan.id)
    assert result.outcome == "forbidden"
    assert "deployments/scale" in result.finding.summary
    assert _get(lab, *DEPLOY)["spec"]["replicas"] == 3


def test_a_stuck_rollout_is_a_timed_out_finding_with_its_numbers(
        lab: Lab, target: Target) -> None:
    lab.kube.pace_rollouts(None)
    plan = actions_kubernetes.set_image(
        target, API, "api", "registry.example.invalid/paracle-api:v1.0.4",
        rollout_timeout="1s")

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "applied"
    assert result.finding.cause == "rollout-timed-out"
    assert result.finding.severity.value == "warning"
    rollout = result.finding.evidence["after"]["rollout"]
    assert (rollout["complete"], rollout["updated"], rollout["replicas"]) == (
        False, 0, 3)
    assert rollout["observed_generation"] == rollout["generation"]
    assert "0 of 3 replicas updated" in result.finding.summary


def test_a_slow_rollout_is_waited_for(lab: Lab, target: Target) -> None:
    lab.kube.pace_rollouts(0.5)
    plan = actions_kubernetes.rollout_restart(target, API, rollout_timeout="30s")
    assert _get(lab, *DEPLOY)["status"]["updatedReplicas"] == 3

    result = plan.apply(confirm=plan.id)

    assert result.finding.cause == "remediation-applied", result.finding.summary
    assert result.finding.evidence["after"]["rollout"]["complete"]


def test_a_plan_whose_object_changed_is_reshown_not_applied(
        lab: Lab, target: Target) -> None:
    plan = actions_kubernetes.set_image(
        target, API, "api", "registry.example.invalid/paracle-api:v1.0.4")
    other = actions_kubernetes.set_image(
        target, API, "api", "registry.example.invalid/paracle-api:v1.0.9")
    assert other.apply(confirm=other.id).outcome == "applied"
    moved = _get(lab, *DEPLOY)

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "changed"
    assert result.fresh is not None and result.fresh.id != plan.id
    assert result.fresh.changes.iloc[0]["before"].endswith(":v1.0.9")
    assert _get(lab, *DEPLOY) == moved


def test_a_patch_is_refused_when_the_object_moved_underneath(
        target: Target) -> None:
    body = kube_patch.with_precondition(
        kube_patch.template_patch(annotations={"x": "y"}), kube_patch.STRATEGIC, "1")
    with pytest.raises(KubernetesError) as refused:
        kube_patch.patch_object(target, "deployment", API, body)
    assert refused.value.status == 409


def test_the_new_secret_value_never_shows(lab: Lab, target: Target,
                                          tmp_path: Path, healthy: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    value = "sk-lab-never-shown-4242424242424242"
    monkeypatch.setenv("NEW_OPENAI_KEY", value)
    old = base64.b64decode(_get(lab, "Secret", "paracle-secrets")["data"][
        "OPENAI_API_KEY"]).decode()

    plan = actions_kubernetes.update_secret_key(
        target, "paracle-secrets", "OPENAI_API_KEY", API,
        value_env="NEW_OPENAI_KEY")
    shown = plan._repr_html_() + plan.command + repr(plan.rows())
    result = plan.apply(confirm=plan.id)

    assert result.finding.cause == "remediation-applied", result.finding.summary
    assert f"sha256:{fingerprint(value)}" in shown
    written = " ".join([shown, healthy.read_text(), repr(result.finding.to_dict()),
                        result._repr_html_()])
    encoded = base64.b64encode(value.encode()).decode()
    for secret in (value, encoded, old):
        assert secret not in written
    stored = _get(lab, "Secret", "paracle-secrets")["data"]["OPENAI_API_KEY"]
    assert base64.b64decode(stored).decode() == value


def test_the_same_secret_value_again_is_an_empty_plan(lab: Lab, target: Target,
                                                      tmp_path: Path) -> None:
    current = base64.b64decode(_get(lab, "Secret", "paracle-secrets")["data"][
        "ANTHROPIC_API_KEY"]).decode()
    path = tmp_path / "same"
    path.write_text(current)
    plan = actions_kubernetes.update_secret_key(
        target, "paracle-secrets", "ANTHROPIC_API_KEY", API, value_file=str(path))
    assert plan.empty
    assert plan.apply(confirm=plan.id).outcome == "nothing-to-do"


def test_evidence_plans_apply_after_reading_the_object_again(
        lab: Lab, target: Target) -> None:
    lab.load_scenario("pdb-blocking")
    pdb = ("PodDisruptionBudget", "paracle-api-pdb")
    before = _get(lab, *pdb)
    plan = actions.plan_pdb_budget(target, {"pdb": "paracle-api-pdb",
                                            "min_available": 3,
                                            "expected_pods": 3})
    result = plan.apply(confirm=plan.id)
    assert result.outcome == "applied", result.finding.summary
    assert _diff(before, _get(lab, *pdb)) == {("spec", "minAvailable")}
    assert _get(lab, *pdb)["spec"]["minAvailable"] == 2

    lab.load_scenario("service-selector-mismatch")
    service = ("Service", API)
    before = _get(lab, *service)
    plan = actions.plan_service_selector(target, API, {"mismatched": {
        "tier": {"wanted": "backend", "pods_have": ["api"]}}})
    result = plan.apply(confirm=plan.id)
    assert result.outcome == "applied", result.finding.summary
    assert _diff(before, _get(lab, *service)) == {("spec", "selector", "tier")}


def test_evidence_that_no_longer_holds_is_not_applied(lab: Lab,
                                                      target: Target) -> None:
    lab.load_scenario("pdb-blocking")
    # The finding saw minAvailable 4; the PDB says 3 now.
    plan = actions.plan_pdb_budget(target, {"pdb": "paracle-api-pdb",
                                            "min_available": 4,
                                            "expected_pods": 3})
    result = plan.apply(confirm=plan.id)
    assert result.outcome == "changed"
    assert result.fresh is not None
    assert result.fresh.changes.iloc[0]["before"] == 3
    assert _get(lab, "PodDisruptionBudget", "paracle-api-pdb")["spec"][
        "minAvailable"] == 3


# -- RBAC manifests -------------------------------------------------------------

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection",
               "escalate", "bind", "impersonate", "*"}


def _rules(name: str) -> dict[str, list[dict[str, Any]]]:
    documents = yaml.safe_load_all((DEPLOYMENT_MANIFESTS / name).read_text())
    return {doc["metadata"]["name"]: doc["rules"] for doc in documents
            if doc["kind"] in ("Role", "ClusterRole")}


def test_the_runbook_role_reads_only_and_secrets_only_by_name() -> None:
    roles = _rules("rbac-runbook-readonly.yaml")
    assert roles
    for name, rules in roles.items():
        for rule in rules:
            assert not set(rule["verbs"]) & WRITE_VERBS, (name, rule)
            assert "*" not in rule["resources"], (name, rule)
            if "secrets" in rule["resources"]:
                assert rule["resources"] == ["secrets"]
                assert rule["resourceNames"] and rule["verbs"] == ["get"]
                assert name.endswith("secret")  # a separate, optional Role
    granted = {r for rules in roles.values() for rule in rules
               for r in rule["resources"]}
    assert {"pods", "pods/log", "events", "deployments", "replicasets",
            "services", "endpoints", "endpointslices", "ingresses",
            "configmaps", "poddisruptionbudgets", "nodes"} <= granted


def test_the_remediation_role_patches_and_never_deletes() -> None:
    [rules] = _rules("rbac-remediation.yaml").values()
    verbs = {verb for rule in rules for verb in rule["verbs"]}
    assert not verbs & {"delete", "deletecollection", "create", "*"}
    granted = {r: rule for rule in rules for r in rule["resources"]}
    for resource in ("deployments", "deployments/scale", "serviceaccounts",
                     "poddisruptionbudgets"):
        assert "patch" in granted[resource]["verbs"], resource
    assert granted["secrets"]["resourceNames"] == ["paracle-secrets"]
    assert "update" in granted["secrets"]["verbs"]
