# The client types every model field Optional; these tests read fields the
# scenario guarantees, so mypy's None checks are noise here.
# mypy: disable-error-code="union-attr, index, operator, arg-type, type-var, misc"
"""kubectl against the lab's Kubernetes API server, as an on-call engineer runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from paracle_nb.sandbox.kubeapi import KubeAPIServer

KUBECTL = shutil.which("kubectl")

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.servers,
    pytest.mark.skipif(
        KUBECTL is None, reason="kubectl is not installed (not on PATH)"
    ),
]

NS = "paracle-prod"
POD = "paracle-api-7c9f8d6b5-x2v7k"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]
NEW_IMAGE = {"name": "api", "image": "registry.example.invalid/paracle-api:v1.0.4"}


@pytest.fixture
def lab() -> Iterator[KubeAPIServer]:
    with KubeAPIServer() as server:
        server.load_scenario("crashloop-oom")
        yield server


def _runner(kubeconfig: Path, home: Path) -> Kubectl:
    """Return a function running kubectl against ``kubeconfig``, bounded in time."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}

    def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        result = subprocess.run(
            [
                KUBECTL,
                f"--kubeconfig={kubeconfig}",
                f"--cache-dir={home / 'cache'}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    return kubectl


@pytest.fixture
def kubectl(lab: KubeAPIServer, tmp_path: Path) -> Kubectl:
    return _runner(lab.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path)


@pytest.fixture
def apps(lab: KubeAPIServer, tmp_path: Path) -> Iterator[client.AppsV1Api]:
    kubeconfig = lab.write_kubeconfig(tmp_path / "client-kubeconfig")
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    yield client.AppsV1Api(api_client)
    api_client.rest_client.pool_manager.clear()
    api_client.close()


def _rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()[1:]]


def _api_container(apps: client.AppsV1Api) -> client.V1Container:
    deployment = apps.read_namespaced_deployment("paracle-api", NS)
    containers = deployment.spec.template.spec.containers
    assert [c.name for c in containers] == ["api", "log-shipper"]
    return containers[0]


# -- reading -----------------------------------------------------------------------


def test_get_pods_shows_crashloop_status_and_restarts(kubectl: Kubectl) -> None:
    output = kubectl("get", "pods").stdout
    assert output.split()[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    rows = {row[0]: row for row in _rows(output)}
    assert rows[POD][1:4] == ["1/2", "CrashLoopBackOff", "7"]
    assert rows[POD][4].startswith("(") and rows[POD][5] == "ago)"
    assert rows["postgres-0"][1:4] == ["1/1", "Running", "0"]


def test_get_pods_wide_shows_ip_and_node(kubectl: Kubectl) -> None:
    output = kubectl("get", "pods", "-o", "wide").stdout
    assert "IP" in output.split()[:8] and "NODE" in output.split()[:9]
    line = next(line for line in output.splitlines() if line.startswith(POD))
    assert "10.244.1.14" in line.split() and "node-a" in line.split()


def test_get_pods_by_label(kubectl: Kubectl) -> None:
    rows = _rows(kubectl("get", "pods", "-l", "app=paracle-api").stdout)
    assert len(rows) == 3 and all(row[0].startswith("paracle-api-") for row in rows)


def test_get_pods_in_all_namespaces(kubectl: Kubectl) -> None:
    output = kubectl("get", "pods", "-A").stdout
    assert output.split()[0] == "NAMESPACE"
    namespaces = {row[0] for row in _rows(output)}
    assert namespaces == {"kube-system", "paracle-prod"}


def test_get_deployments_and_services_together(kubectl: Kubectl) -> None:
    output = kubectl("get", "deploy,svc").stdout
    deployment = next(
        line.split() for line in output.splitlines() if "paracle-api" in line
    )
    assert deployment[:4] == ["deployment.apps/paracle-api", "0/3", "3", "0"]
    assert "service/postgres-primary" in output and "5432/TCP" in output


def test_describe_pod_shows_oom_kill_and_events(kubectl: Kubectl) -> None:
    output = kubectl("describe", "pod", POD).stdout
    assert "Reason:       OOMKilled" in output
    assert "Exit Code:    137" in output
    assert "Restart Count:  7" in output
    events = output.split("Events:")[1]
    assert "BackOff" in events and "(x29 over" in events
    assert "Back-off restarting failed container api" in events


def test_logs_of_the_previous_api_container(kubectl: Kubectl) -> None:
    output = kubectl("logs", POD, "-c", "api", "--previous").stdout
    assert 'msg="memory high" rss_mb=471 limit_mb=512' in output
    assert output.rstrip().endswith('msg="request sta')


def test_logs_tail_uses_the_default_container(kubectl: Kubectl) -> None:
    kubectl_result = kubectl("logs", POD, "--tail=2")
    lines = kubectl_result.stdout.splitlines()
    assert len(lines) == 2 and "logger=paracle.cache" in lines[1]


def test_logs_tail_of_a_healthy_pod(lab: KubeAPIServer, kubectl: Kubectl) -> None:
    lab.load_scenario("healthy")
    lines = kubectl("logs", POD, "-c", "api", "--tail=5").stdout.splitlines()
    assert len(lines) == 5
    assert all('msg="request finished"' in line for line in lines)


def test_top_pods(kubectl: Kubectl) -> None:
    rows = {row[0]: row for row in _rows(kubectl("top", "pods").stdout)}
    # The api container at 497Mi plus its sidecar at 38Mi.
    assert rows[POD][1:] == ["890m", "535Mi"]


def test_top_nodes(kubectl: Kubectl) -> None:
    rows = {row[0]: row for row in _rows(kubectl("top", "nodes").stdout)}
    assert set(rows) == {"node-a", "node-b", "node-c"}
    assert rows["node-a"][1:3] == ["1150m", "28%"]


# -- changing the deployment ---------------------------------------------------------


def test_set_env_adds_then_removes_a_variable(
    kubectl: Kubectl, apps: client.AppsV1Api
) -> None:
    before = _api_container(apps)
    kubectl("set", "env", "deployment/paracle-api", "FOO=bar")

    api = _api_container(apps)
    env = {e.name: e for e in api.env}
    assert env["FOO"].value == "bar"
    assert [e.name for e in api.env] == [e.name for e in before.env] + ["FOO"]
    assert env["OPENAI_API_KEY"].value_from.secret_key_ref.name == "paracle-secrets"
    assert api.env_from == before.env_from

    kubectl("set", "env", "deployment/paracle-api", "FOO-")
    assert [e.name for e in _api_container(apps).env] == [e.name for e in before.env]


def test_scale(kubectl: Kubectl, apps: client.AppsV1Api) -> None:
    kubectl("scale", "deployment/paracle-api", "--replicas=5")
    deployment = apps.read_namespaced_deployment("paracle-api", NS)
    assert deployment.spec.replicas == 5
    assert deployment.status.ready_replicas == 5


def test_set_resources_changes_one_limit(
    kubectl: Kubectl, apps: client.AppsV1Api
) -> None:
    kubectl(
        "set", "resources", "deployment/paracle-api", "-c", "api", "--limits=memory=1Gi"
    )
    api = _api_container(apps)
    assert api.resources.limits == {"cpu": "1", "memory": "1Gi"}
    assert api.resources.requests == {"cpu": "500m", "memory": "256Mi"}


def test_rollout_restart_then_status(kubectl: Kubectl, apps: client.AppsV1Api) -> None:
    kubectl("rollout", "restart", "deployment/paracle-api")
    template = apps.read_namespaced_deployment("paracle-api", NS).spec.template
    assert "kubectl.kubernetes.io/restartedAt" in template.metadata.annotations

    status = kubectl("rollout", "status", "deployment/paracle-api", "--timeout=10s")
    assert 'deployment "paracle-api" successfully rolled out' in status.stdout


@pytest.mark.parametrize(
    ("patch_type", "patch", "check"),
    [
        (
            "strategic",
            {"spec": {"template": {"spec": {"containers": [NEW_IMAGE]}}}},
            lambda d: d.spec.template.spec.containers[0].image.endswith(":v1.0.4"),
        ),
        (
            "merge",
            {"metadata": {"labels": {"owner": "sre"}}},
            lambda d: d.metadata.labels["owner"] == "sre",
        ),
        (
            "json",
            [{"op": "replace", "path": "/spec/replicas", "value": 4}],
            lambda d: d.spec.replicas == 4,
        ),
    ],
)
def test_patch_each_type(
    kubectl: Kubectl,
    apps: client.AppsV1Api,
    patch_type: str,
    patch: object,
    check: Callable[[client.V1Deployment], bool],
) -> None:
    kubectl(
        "patch",
        "deployment",
        "paracle-api",
        "--type",
        patch_type,
        "-p",
        json.dumps(patch),
    )
    deployment = apps.read_namespaced_deployment("paracle-api", NS)
    assert check(deployment)
    assert len(deployment.spec.template.spec.containers) == 2


# -- access and failures -------------------------------------------------------------


def test_without_a_token_kubectl_is_refused(lab: KubeAPIServer, tmp_path: Path) -> None:
    lab.write_kubeconfig(tmp_path / "for-the-client", token="lab-token-kubectl")
    plain = _runner(lab.write_kubeconfig(tmp_path / "plain"), tmp_path)
    refused = plain("get", "nodes", check=False)
    assert refused.returncode != 0
    assert "You must be logged in to the server" in refused.stderr


@pytest.mark.xfail(
    strict=True,
    reason="client-go sends a kubeconfig's credentials only over TLS, and the lab "
    "serves plain HTTP: kubectl never sends the token",
)
def test_kubectl_sends_the_kubeconfig_token(lab: KubeAPIServer, tmp_path: Path) -> None:
    kubeconfig = lab.write_kubeconfig(tmp_path / "token", token="lab-token-kubectl")
    assert "node-a" in _runner(kubeconfig, tmp_path)("get", "nodes").stdout


def test_forbidden_list_reads_like_rbac(lab: KubeAPIServer, kubectl: Kubectl) -> None:
    lab.fail(r"/namespaces/paracle-prod/secrets", 403)
    refused = kubectl("get", "secrets", check=False)
    assert refused.returncode != 0
    assert 'secrets is forbidden: User "system:serviceaccount' in refused.stderr
