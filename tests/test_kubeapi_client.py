# The client types every model field Optional; these tests read fields the
# scenario guarantees, so mypy's None checks are noise here.
# mypy: disable-error-code="union-attr, index, operator, arg-type, type-var, misc"
"""The official Python client against the lab's Kubernetes API server."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from paracle_nb.sandbox.kubeapi import KubeAPIServer, scenario_names

pytestmark = pytest.mark.servers

NS = "paracle-prod"
POD = "paracle-api-7c9f8d6b5-x2v7k"
POD_UID = "3b0d6c1e-8f4a-4a57-9c21-5e7f0a9d1b01"


@pytest.fixture
def lab() -> Iterator[KubeAPIServer]:
    with KubeAPIServer() as server:
        server.load_scenario("crashloop-oom")
        yield server


def _client(lab: KubeAPIServer, kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def api(lab: KubeAPIServer, tmp_path: Path) -> Iterator[client.ApiClient]:
    api_client = _client(lab, lab.write_kubeconfig(tmp_path / "kubeconfig"))
    yield api_client
    _close(api_client)


def _close(api_client: client.ApiClient) -> None:
    api_client.rest_client.pool_manager.clear()
    api_client.close()


def _raw(
    lab: KubeAPIServer,
    method: str,
    path: str,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """Send one request with the standard library; return status and body."""
    url = urlsplit(lab.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- discovery -------------------------------------------------------------------


def test_discovery_lists_core_and_group_versions(api: client.ApiClient) -> None:
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "policy", "networking.k8s.io", "metrics.k8s.io"} <= groups
    assert client.VersionApi(api).get_code().major == "1"

    resources = {r.name: r for r in client.AppsV1Api(api).get_api_resources().resources}
    assert resources["deployments"].short_names == ["deploy"]
    assert {"deployments/scale", "deployments/status"} <= set(resources)
    core = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    assert core["pods/log"].verbs == ["get"]
    assert core["nodes"].namespaced is False


@pytest.mark.parametrize("scenario", scenario_names())
def test_every_scenario_object_fits_the_client_models(scenario: str) -> None:
    # The client validates required fields: a scenario missing one breaks reads.
    lab = KubeAPIServer(scenario=scenario)
    models = client.ApiClient()
    try:
        for resource in lab.store.registry.resources:
            if resource.group == "metrics.k8s.io":
                continue
            model = "CoreV1Event" if resource.kind == "Event" else f"V1{resource.kind}"
            for obj in lab.store.list(resource):
                models.deserialize(json.dumps(obj), model, "application/json")
    finally:
        models.close()


# -- pods, logs, events ------------------------------------------------------------


def test_list_pods_by_label_and_field_selector(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    by_label = core.list_namespaced_pod(NS, label_selector="app=paracle-api")
    assert sorted(p.metadata.name for p in by_label.items) == [
        "paracle-api-7c9f8d6b5-hz8rw",
        "paracle-api-7c9f8d6b5-m4q9t",
        POD,
    ]
    assert by_label.kind == "PodList" and by_label.metadata.resource_version

    on_node_a = core.list_namespaced_pod(
        NS,
        label_selector="app in (paracle-api,postgres)",
        field_selector="spec.nodeName=node-a",
    )
    assert sorted(p.metadata.name for p in on_node_a.items) == [POD, "postgres-0"]
    not_running = core.list_namespaced_pod(NS, field_selector="status.phase!=Running")
    assert not_running.items == []


def test_list_pods_in_all_namespaces(api: client.ApiClient) -> None:
    pods = client.CoreV1Api(api).list_pod_for_all_namespaces(
        label_selector="k8s-app=kube-dns"
    )
    assert [(p.metadata.namespace, p.metadata.name) for p in pods.items] == [
        ("kube-system", "coredns-5d78c9869d-q8x2n")
    ]


def test_read_pod_shows_the_oom_kill(api: client.ApiClient) -> None:
    pod = client.CoreV1Api(api).read_namespaced_pod(POD, NS)
    api_status, shipper = pod.status.container_statuses
    assert api_status.state.waiting.reason == "CrashLoopBackOff"
    assert api_status.last_state.terminated.reason == "OOMKilled"
    assert api_status.last_state.terminated.exit_code == 137
    assert api_status.restart_count == 7
    assert shipper.ready and shipper.restart_count == 0
    assert pod.metadata.owner_references[0].kind == "ReplicaSet"

    # `now-2h10m` in the scenario became a real time when it loaded.
    age = dt.datetime.now(dt.timezone.utc) - pod.metadata.creation_timestamp
    assert dt.timedelta(hours=2, minutes=9) < age < dt.timedelta(hours=2, minutes=12)


def test_missing_pod_is_a_404_status(api: client.ApiClient) -> None:
    with pytest.raises(ApiException) as caught:
        client.CoreV1Api(api).read_namespaced_pod("nope", NS)
    assert caught.value.status == 404
    status = json.loads(caught.value.body)
    assert (status["kind"], status["reason"]) == ("Status", "NotFound")
    assert status["message"] == 'pods "nope" not found'


def test_previous_log_of_the_crashed_container(api: client.ApiClient) -> None:
    text = client.CoreV1Api(api).read_namespaced_pod_log(
        POD, NS, container="api", previous=True, tail_lines=3
    )
    lines = text.splitlines()
    assert len(lines) == 3
    assert "rss_mb=503 limit_mb=512" in lines[1]
    assert lines[2].endswith('msg="request sta')


def test_log_errors_match_a_real_cluster(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as no_container:
        core.read_namespaced_pod_log(POD, NS)
    assert no_container.value.status == 400
    assert "choose one of: [api log-shipper]" in no_container.value.body

    with pytest.raises(ApiException) as never_restarted:
        core.read_namespaced_pod_log(POD, NS, container="log-shipper", previous=True)
    assert never_restarted.value.status == 400


def test_log_timestamps_prefix_each_line(api: client.ApiClient) -> None:
    text = client.CoreV1Api(api).read_namespaced_pod_log(
        POD, NS, container="api", timestamps=True, tail_lines=1
    )
    stamp, _, line = text.strip().partition(" ")
    assert stamp == "2026-12-04T15:57:15.477Z"
    assert line.startswith("ts=2026-12-04T15:57:15.477Z")


def test_followed_log_streams_appended_lines(lab: KubeAPIServer) -> None:
    url = urlsplit(lab.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request(
            "GET",
            f"/api/v1/namespaces/{NS}/pods/{POD}/log"
            "?container=api&follow=true&tailLines=1",
        )
        response = connection.getresponse()
        assert response.getheader("Content-Type").startswith("text/plain")
        assert b"redis connected" in response.readline()

        lab.store.append_logs(
            NS, POD, "api", 'level=info msg="listening" addr=0.0.0.0:8000'
        )
        assert b'msg="listening"' in response.readline()
    finally:
        connection.close()


def test_events_of_one_pod_by_involved_object_uid(api: client.ApiClient) -> None:
    events = client.CoreV1Api(api).list_namespaced_event(
        NS, field_selector=f"involvedObject.uid={POD_UID}"
    )
    assert {e.involved_object.name for e in events.items} == {POD}
    backoff = next(e for e in events.items if e.reason == "BackOff")
    assert backoff.type == "Warning" and backoff.count == 29
    assert backoff.source.component == "kubelet"
    assert backoff.last_timestamp > backoff.first_timestamp


def test_node_events_carry_the_kernel_oom_kills(api: client.ApiClient) -> None:
    events = client.CoreV1Api(api).list_event_for_all_namespaces(
        field_selector="reason=OOMKilling,involvedObject.kind=Node"
    )
    assert sorted(e.involved_object.name for e in events.items) == [
        "node-a",
        "node-b",
        "node-c",
    ]


def test_list_nodes(api: client.ApiClient) -> None:
    nodes = client.CoreV1Api(api).list_node()
    assert [n.metadata.name for n in nodes.items] == ["node-a", "node-b", "node-c"]
    node = nodes.items[0]
    assert node.status.allocatable["memory"] == "16Gi"
    assert node.metadata.labels["topology.kubernetes.io/zone"] == "lab-region-1a"


def test_read_secret(api: client.ApiClient) -> None:
    secret = client.CoreV1Api(api).read_namespaced_secret("paracle-secrets", NS)
    assert secret.type == "Opaque"
    assert {"DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"} <= set(
        secret.data
    )


# -- deployments -------------------------------------------------------------------


def test_read_deployment_status_of_the_crashloop(api: client.ApiClient) -> None:
    deployment = client.AppsV1Api(api).read_namespaced_deployment("paracle-api", NS)
    assert deployment.status.unavailable_replicas == 3
    assert not deployment.status.available_replicas
    available = next(c for c in deployment.status.conditions if c.type == "Available")
    assert available.status == "False"
    container = deployment.spec.template.spec.containers[0]
    assert container.resources.limits["memory"] == "512Mi"
    assert container.env_from[0].config_map_ref.name == "paracle-config"


def test_dict_patch_is_strategic_and_keeps_other_containers(
    api: client.ApiClient,
) -> None:
    apps = client.AppsV1Api(api)
    before = apps.read_namespaced_deployment("paracle-api", NS)
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "api", "resources": {"limits": {"memory": "1Gi"}}}
                    ]
                }
            }
        }
    }
    after = apps.patch_namespaced_deployment("paracle-api", NS, patch)

    api_container, shipper = after.spec.template.spec.containers
    assert api_container.resources.limits == {"cpu": "1", "memory": "1Gi"}
    assert [e.name for e in api_container.env] == [
        e.name for e in before.spec.template.spec.containers[0].env
    ]
    assert shipper.name == "log-shipper"
    assert after.metadata.generation == before.metadata.generation + 1
    assert int(after.metadata.resource_version) > int(before.metadata.resource_version)

    # The lab settles the rollout at once, so the next read shows it done.
    reread = apps.read_namespaced_deployment("paracle-api", NS)
    assert reread.status.observed_generation == reread.metadata.generation
    assert reread.status.ready_replicas == reread.status.updated_replicas == 3


def test_json_patch_from_a_list_body(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    body = [{"op": "add", "path": "/metadata/labels/owner", "value": "sre"}]
    patched = apps.patch_namespaced_deployment("paracle-api", NS, body)
    assert patched.metadata.labels["owner"] == "sre"


def test_scale_subresource(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    scale = apps.patch_namespaced_deployment_scale(
        "paracle-api", NS, {"spec": {"replicas": 5}}
    )
    assert scale.spec.replicas == 5
    assert scale.status.selector == "app=paracle-api"

    deployment = apps.read_namespaced_deployment("paracle-api", NS)
    assert deployment.spec.replicas == 5 and deployment.status.available_replicas == 5
    scale = apps.read_namespaced_stateful_set_scale("postgres", NS)
    assert scale.spec.replicas == 1
    scale.spec.replicas = 2
    apps.replace_namespaced_stateful_set_scale("postgres", NS, scale)
    postgres = apps.read_namespaced_stateful_set("postgres", NS)
    assert postgres.spec.replicas == postgres.status.ready_replicas == 2


def test_status_subresource_changes_only_status(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    patched = apps.patch_namespaced_deployment_status(
        "paracle-api", NS, {"status": {"readyReplicas": 1}, "spec": {"replicas": 9}}
    )
    assert patched.status.ready_replicas == 1
    assert patched.spec.replicas == 3


def test_patch_content_types(lab: KubeAPIServer) -> None:
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/paracle-api"
    merge = json.dumps({"metadata": {"annotations": {"team": "sre"}}})
    status, body = _raw(
        lab, "PATCH", path, merge, {"Content-Type": "application/merge-patch+json"}
    )
    assert status == 200
    assert json.loads(body)["metadata"]["annotations"]["team"] == "sre"

    status, body = _raw(
        lab, "PATCH", path, "{}", {"Content-Type": "application/apply-patch+yaml"}
    )
    assert status == 415 and json.loads(body)["reason"] == "UnsupportedMediaType"


TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def test_lists_come_as_tables_when_asked(lab: KubeAPIServer) -> None:
    path = f"/api/v1/namespaces/{NS}/pods?labelSelector=app%3Dparacle-api"
    status, body = _raw(lab, "GET", path, headers={"Accept": TABLE})
    table = json.loads(body)
    assert status == 200
    assert (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    columns = [c["name"] for c in table["columnDefinitions"]]
    first = dict(zip(columns, table["rows"][0]["cells"], strict=True))
    assert (first["Ready"], first["Status"]) == ("1/2", "CrashLoopBackOff")
    assert first["Restarts"].startswith("12 (")
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"

    status, body = _raw(
        lab, "GET", f"{path}&includeObject=Object", headers={"Accept": TABLE}
    )
    assert json.loads(body)["rows"][0]["object"]["kind"] == "Pod"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", f"/api/v1/namespaces/{NS}/pods/{POD}", 405),
        ("PUT", f"/api/v1/namespaces/{NS}/pods", 405),
        ("DELETE", f"/apis/metrics.k8s.io/v1beta1/namespaces/{NS}/pods/{POD}", 405),
        ("GET", f"/api/v1/namespaces/{NS}/pods/{POD}/exec", 405),
        ("GET", "/api/v1/widgets", 404),
        ("GET", "/apis/nope.example/v1", 404),
    ],
)
def test_what_the_lab_does_not_serve_is_a_status(
    lab: KubeAPIServer, method: str, path: str, status: int
) -> None:
    answered, body = _raw(lab, method, path, "{}")
    assert answered == status
    assert json.loads(body)["kind"] == "Status"


# -- other groups ------------------------------------------------------------------


def test_metrics_of_pods_and_nodes(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    pods = custom.list_namespaced_custom_object("metrics.k8s.io", "v1beta1", NS, "pods")
    usage = {
        item["metadata"]["name"]: item["containers"][0]["usage"]["memory"]
        for item in pods["items"]
    }
    assert usage[POD] == "497Mi"
    nodes = custom.list_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes")
    assert [n["metadata"]["name"] for n in nodes["items"]] == [
        "node-a",
        "node-b",
        "node-c",
    ]
    assert pods["kind"] == "PodMetricsList"


def test_pod_disruption_budget_and_ingress(api: client.ApiClient) -> None:
    pdb = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget(
        "paracle-api-pdb", NS
    )
    assert pdb.spec.min_available == 2 and pdb.status.disruptions_allowed == 0
    ingresses = client.NetworkingV1Api(api).list_namespaced_ingress(NS)
    backend = ingresses.items[0].spec.rules[0].http.paths[0].backend.service
    assert (backend.name, backend.port.number) == ("paracle-api", 8000)


# -- writes and their conflicts ----------------------------------------------------


def test_create_replace_delete_a_config_map(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    body = {"metadata": {"name": "test-kubeapi-cm"}, "data": {"a": "1"}}
    created = core.create_namespaced_config_map(NS, body)
    assert created.metadata.uid and created.metadata.namespace == NS

    with pytest.raises(ApiException) as taken:
        core.create_namespaced_config_map(NS, body)
    assert taken.value.status == 409 and "AlreadyExists" in taken.value.body

    created.data = {"a": "2"}
    replaced = core.replace_namespaced_config_map("test-kubeapi-cm", NS, created)
    assert replaced.data == {"a": "2"}
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("test-kubeapi-cm", NS, created)
    assert stale.value.status == 409

    core.delete_namespaced_config_map("test-kubeapi-cm", NS)
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("test-kubeapi-cm", NS)
    assert gone.value.status == 404


def test_create_in_a_missing_namespace_is_404(api: client.ApiClient) -> None:
    with pytest.raises(ApiException) as caught:
        client.CoreV1Api(api).create_namespaced_config_map(
            "no-such-ns", {"metadata": {"name": "test-kubeapi-orphan"}}
        )
    assert caught.value.status == 404


def test_watch_reports_changes_after_a_resource_version(
    lab: KubeAPIServer, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    listed = core.list_namespaced_config_map(NS)
    config_map = lab.store.get("configmaps", NS, "paracle-config")
    assert config_map is not None
    config_map["data"]["LLM_TIMEOUT"] = "120"
    lab.store.put(config_map)

    events = list(
        watch.Watch().stream(
            core.list_namespaced_config_map,
            NS,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("MODIFIED", "paracle-config")
    ]
    assert events[0]["object"].data["LLM_TIMEOUT"] == "120"


def test_watch_streams_a_change_made_while_watching(
    lab: KubeAPIServer, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    stream = watch.Watch()
    delete = threading.Timer(
        0.3, lambda: lab.store.delete("configmaps", NS, "paracle-config")
    )
    delete.start()
    seen = []
    for event in stream.stream(core.list_namespaced_config_map, NS, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            stream.stop()
    delete.join()
    assert seen == [("ADDED", "paracle-config"), ("DELETED", "paracle-config")]


# -- the lab's own controls --------------------------------------------------------


def test_token_in_kubeconfig_is_then_required(
    lab: KubeAPIServer, tmp_path: Path
) -> None:
    with_token = _client(
        lab, lab.write_kubeconfig(tmp_path / "a", token="lab-token-123")
    )
    without = _client(lab, lab.write_kubeconfig(tmp_path / "b"))
    try:
        assert client.CoreV1Api(with_token).list_node().items
        with pytest.raises(ApiException) as caught:
            client.CoreV1Api(without).list_node()
        assert caught.value.status == 401
    finally:
        _close(with_token)
        _close(without)
    assert (tmp_path / "a").stat().st_mode & 0o077 == 0


def test_injected_failures_answer_a_status_then_stop(
    lab: KubeAPIServer, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    lab.fail(r"/namespaces/paracle-prod/pods$", 403, times=1)
    with pytest.raises(ApiException) as forbidden:
        core.list_namespaced_pod(NS)
    status = json.loads(forbidden.value.body)
    assert forbidden.value.status == 403 and status["reason"] == "Forbidden"
    assert 'cannot list resource "pods"' in status["message"]
    assert core.list_namespaced_pod(NS).items

    lab.fail(r"/nodes", 500)
    for _ in range(2):
        with pytest.raises(ApiException) as broken:
            core.list_node()
        assert broken.value.status == 500
    lab.fail_clear()
    assert core.list_node().items
    assert ("GET", "/api/v1/nodes") in lab.requests


def test_requests_are_recorded_from_many_threads(lab: KubeAPIServer) -> None:
    def ask() -> None:
        for _ in range(5):
            assert _raw(lab, "GET", "/api/v1/namespaces")[0] == 200

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert lab.requests.count(("GET", "/api/v1/namespaces")) == 20


def test_load_scenario_replaces_the_whole_state(lab: KubeAPIServer) -> None:
    lab.store.put(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "test-kubeapi-left", "namespace": NS},
        }
    )
    lab.load_scenario("healthy")
    assert lab.store.get("configmaps", NS, "test-kubeapi-left") is None
    pod = lab.store.get("pods", NS, POD)
    assert pod is not None
    assert pod["status"]["containerStatuses"][0]["state"].get("running") is not None
