"""Pure parts of the lab's Kubernetes API: selectors, patches, times, tables."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml

from paracle_nb.sandbox.kubeapi.patching import (
    InvalidPatch,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from paracle_nb.sandbox.kubeapi.podlogs import (
    check_previous,
    choose_container,
    render_log,
)
from paracle_nb.sandbox.kubeapi.routing import parse_resource_path, wanted_view
from paracle_nb.sandbox.kubeapi.scenario import ScenarioError, read_scenario
from paracle_nb.sandbox.kubeapi.selectors import (
    InvalidSelector,
    matches_fields,
    matches_labels,
    parse_field_selector,
    parse_label_selector,
    selector_string,
)
from paracle_nb.sandbox.kubeapi.status import ApiError
from paracle_nb.sandbox.kubeapi.store import ExpiredRevision, LogLine, ObjectStore
from paracle_nb.sandbox.kubeapi.tables import pod_phase_text, to_table
from paracle_nb.sandbox.kubeapi.timeutil import human_duration, resolve_relative

NOW = dt.datetime(2026, 12, 4, 15, 4, 5, tzinfo=dt.timezone.utc)
LABELS = {"app": "paracle-api", "tier": "api", "version": "3"}


# -- label selectors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=paracle-api", True),
        ("app==paracle-api", True),
        ("app!=paracle-api", False),
        ("app!=redis", True),
        ("missing!=x", True),
        ("tier in (api, worker)", True),
        ("tier in (worker)", False),
        ("tier notin (worker,cron)", True),
        ("missing notin (a)", True),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app=paracle-api,tier in (api),!canary", True),
        ("app=paracle-api,tier=web", False),
        ("version>2", True),
        ("version<3", False),
        ("", True),
    ],
)
def test_label_selector_matches_like_a_cluster(selector: str, expected: bool) -> None:
    assert matches_labels(parse_label_selector(selector), LABELS) is expected


@pytest.mark.parametrize("selector", ["app=bad value", "a b c", "=x", "tier in (a b)"])
def test_malformed_label_selector_is_refused(selector: str) -> None:
    with pytest.raises(InvalidSelector):
        parse_label_selector(selector)


def test_selector_string_renders_match_labels_and_expressions() -> None:
    selector = {
        "matchLabels": {"app": "paracle-api"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["api", "web"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    text = selector_string(selector)
    assert text == "app=paracle-api,tier in (api,web),!canary"
    assert matches_labels(parse_label_selector(text), LABELS)


# -- field selectors ---------------------------------------------------------

POD = {
    "metadata": {"name": "paracle-api-1", "namespace": "paracle-prod"},
    "spec": {"nodeName": "node-a", "hostNetwork": False},
    "status": {"phase": "Running"},
}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("metadata.name=paracle-api-1", True),
        ("metadata.name==paracle-api-1", True),
        ("metadata.name!=paracle-api-1", False),
        ("status.phase=Running,spec.nodeName=node-a", True),
        ("status.phase=Running,spec.nodeName!=node-a", False),
        ("metadata.namespace=paracle-prod", True),
        ("spec.hostNetwork=false", True),
        ("status.reason=", True),
        ("status.reason=Evicted", False),
    ],
)
def test_field_selector_reads_dotted_paths(selector: str, expected: bool) -> None:
    assert matches_fields(parse_field_selector(selector), POD) is expected


def test_field_selector_values_may_escape_commas_and_equals() -> None:
    requirements = parse_field_selector(r"message=a\,b\=c,type=Warning")
    assert [r.values[0] for r in requirements] == ["a,b=c", "Warning"]
    assert matches_fields(requirements, {"message": "a,b=c", "type": "Warning"})


def test_field_selector_without_operator_is_refused() -> None:
    with pytest.raises(InvalidSelector):
        parse_field_selector("status.phase")


# -- JSON merge patch (RFC 7386) -----------------------------------------------


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_follows_rfc_7386(
    target: object, patch: object, result: object
) -> None:
    assert merge_patch(target, patch) == result


def test_merge_patch_leaves_its_input_alone() -> None:
    target = {"a": {"b": 1}}
    merge_patch(target, {"a": {"b": 2}})
    assert target == {"a": {"b": 1}}


# -- JSON patch (RFC 6902) -----------------------------------------------------


def test_json_patch_applies_every_operation() -> None:
    doc: dict[str, Any] = {
        "spec": {"replicas": 3, "containers": [{"name": "api"}]},
        "a/b": {"~c": 1},
    }
    patched = json_patch(
        doc,
        [
            {"op": "test", "path": "/spec/replicas", "value": 3},
            {"op": "replace", "path": "/spec/replicas", "value": 5},
            {"op": "add", "path": "/spec/containers/-", "value": {"name": "log"}},
            {"op": "add", "path": "/spec/containers/0/env", "value": []},
            {"op": "copy", "from": "/spec/replicas", "path": "/spec/minReplicas"},
            {"op": "move", "from": "/a~1b/~0c", "path": "/moved"},
            {"op": "remove", "path": "/a~1b"},
        ],
    )
    assert patched == {
        "spec": {
            "replicas": 5,
            "minReplicas": 5,
            "containers": [{"name": "api", "env": []}, {"name": "log"}],
        },
        "moved": 1,
    }
    assert doc["spec"]["replicas"] == 3


@pytest.mark.parametrize(
    "operations",
    [
        [{"op": "test", "path": "/spec/replicas", "value": 4}],
        [{"op": "remove", "path": "/spec/missing"}],
        [{"op": "replace", "path": "/nothing/here", "value": 1}],
        [{"op": "add", "path": "/spec/list/7", "value": 1}],
        [{"op": "frobnicate", "path": "/spec"}],
        {"op": "add"},
    ],
)
def test_json_patch_that_cannot_apply_is_refused(operations: object) -> None:
    with pytest.raises(InvalidPatch):
        json_patch({"spec": {"replicas": 3, "list": []}}, operations)  # type: ignore


# -- strategic merge patch ---------------------------------------------------

API = {
    "name": "api",
    "image": "api:1",
    "env": [
        {"name": "LOG_LEVEL", "value": "info"},
        {"name": "DB", "valueFrom": {"secretKeyRef": {"key": "x"}}},
    ],
    "ports": [{"name": "http", "containerPort": 8000}],
    "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
}
SHIPPER = {"name": "log-shipper", "image": "log:2"}


def _template(**pod_spec: object) -> dict:
    """Return a deployment (or a patch to one) with this pod template spec."""
    return {"spec": {"template": {"spec": pod_spec}}}


def _deployment() -> dict:
    doc = _template(
        containers=[API, SHIPPER], volumes=[{"name": "tmp", "emptyDir": {}}]
    )
    doc["spec"]["template"]["metadata"] = {"annotations": {"a": "1"}}
    return doc


def _containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def _patched_api(**fields: object) -> dict:
    """Return the api container after a patch of only these of its fields."""
    patch = _template(containers=[{"name": "api", **fields}])
    return _containers(strategic_merge_patch(_deployment(), patch))[0]


def test_strategic_patch_of_one_container_keeps_the_others() -> None:
    patch = _template(
        containers=[{"name": "api", "env": [{"name": "FOO", "value": "b"}]}]
    )
    api, shipper = _containers(strategic_merge_patch(_deployment(), patch))
    assert [e["name"] for e in api["env"]] == ["LOG_LEVEL", "DB", "FOO"]
    assert api["image"] == "api:1"
    assert shipper == SHIPPER


def test_strategic_patch_merges_resources_as_a_map() -> None:
    api = _patched_api(resources={"limits": {"memory": "1Gi"}})
    assert api["resources"] == {"limits": {"cpu": "1", "memory": "1Gi"}}


def test_strategic_patch_deletes_and_orders_like_kubectl_set_env() -> None:
    # What `kubectl set env deployment/x FOO-` sends, after FOO was added.
    added = _template(
        containers=[{"name": "api", "env": [{"name": "FOO", "value": "b"}]}]
    )
    doc = strategic_merge_patch(_deployment(), added)
    patch = _template(
        **{
            "$setElementOrder/containers": [{"name": "api"}, {"name": "log-shipper"}],
            "containers": [
                {
                    "$setElementOrder/env": [{"name": "DB"}, {"name": "LOG_LEVEL"}],
                    "env": [{"$patch": "delete", "name": "FOO"}],
                    "name": "api",
                }
            ],
        }
    )
    api = _containers(strategic_merge_patch(doc, patch))[0]
    assert [e["name"] for e in api["env"]] == ["DB", "LOG_LEVEL"]


def test_strategic_patch_of_the_last_item_leaves_no_empty_list() -> None:
    patch = _template(volumes=[{"name": "tmp", "$patch": "delete"}])
    patched = strategic_merge_patch(_deployment(), patch)
    assert "volumes" not in patched["spec"]["template"]["spec"]


def test_strategic_patch_merges_ports_by_container_port() -> None:
    ports = [{"containerPort": 8000, "name": "web"}, {"containerPort": 9090}]
    assert _patched_api(ports=ports)["ports"] == [
        {"name": "web", "containerPort": 8000},
        {"containerPort": 9090},
    ]


def test_strategic_patch_merges_volume_mounts_by_mount_path() -> None:
    mounts = [{"mountPath": "/tmp", "readOnly": True}, {"mountPath": "/c", "name": "c"}]
    assert _patched_api(volumeMounts=mounts)["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp", "readOnly": True},
        {"mountPath": "/c", "name": "c"},
    ]


def test_strategic_patch_replace_directive_on_list_and_map() -> None:
    patch = _template(containers=[{"$patch": "replace"}, {"name": "only"}])
    patch["spec"]["template"]["metadata"] = {
        "annotations": {"$patch": "replace", "b": "2"}
    }
    patched = strategic_merge_patch(_deployment(), patch)
    assert patched["spec"]["template"]["metadata"]["annotations"] == {"b": "2"}
    assert _containers(patched) == [{"name": "only"}]


def test_strategic_patch_delete_directive_on_a_map() -> None:
    patch = {"spec": {"template": {"metadata": {"annotations": {"$patch": "delete"}}}}}
    patched = strategic_merge_patch(_deployment(), patch)
    assert "annotations" not in patched["spec"]["template"]["metadata"]


def test_strategic_patch_retain_keys_drops_the_rest() -> None:
    doc = {
        "spec": {
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}
        }
    }
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert strategic_merge_patch(doc, patch) == {
        "spec": {"strategy": {"type": "Recreate"}}
    }


def test_strategic_patch_null_removes_and_lists_without_key_replace() -> None:
    doc = {"spec": {"replicas": 3, "args": ["--a", "--b"], "paused": True}}
    patch = {"spec": {"paused": None, "args": ["--c"]}}
    assert strategic_merge_patch(doc, patch) == {
        "spec": {"replicas": 3, "args": ["--c"]}
    }


def test_strategic_patch_merges_finalizers_and_deletes_from_primitive_lists() -> None:
    doc = {"metadata": {"finalizers": ["a", "b"]}}
    added = strategic_merge_patch(doc, {"metadata": {"finalizers": ["c"]}})
    assert added["metadata"]["finalizers"] == ["a", "b", "c"]
    removed = strategic_merge_patch(
        added, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}}
    )
    assert removed["metadata"]["finalizers"] == ["a", "c"]


def test_strategic_patch_item_without_its_merge_key_is_refused() -> None:
    with pytest.raises(InvalidPatch):
        strategic_merge_patch(
            _deployment(),
            {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}},
        )


# -- times ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", "2026-12-04T15:04:05Z"),
        ("now-5m", "2026-12-04T14:59:05Z"),
        ("now-2h30m", "2026-12-04T12:34:05Z"),
        ("now-1d", "2026-12-03T15:04:05Z"),
        ("now-90s", "2026-12-04T15:02:35Z"),
        ("nowhere", None),
        ("2026-12-04T15:04:05Z", None),
    ],
)
def test_relative_times_resolve_against_load_time(
    text: str, expected: str | None
) -> None:
    assert resolve_relative(text, NOW) == expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (45, "45s"),
        (119, "119s"),
        (303, "5m3s"),
        (1800, "30m"),
        (7800, "130m"),
        (4 * 3600 + 20 * 60, "4h20m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (40 * 86400, "40d"),
    ],
)
def test_ages_read_like_kubectl(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


# -- pod status and tables -----------------------------------------------------


def _pod(*states: dict, phase: str = "Running") -> dict:
    statuses = [
        {"name": f"c{i}", "ready": "running" in s, "restartCount": 0, "state": s}
        for i, s in enumerate(states)
    ]
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-12-04T14:04:05Z"},
        "spec": {"containers": [{"name": s["name"]} for s in statuses]},
        "status": {"phase": phase, "containerStatuses": statuses},
    }


@pytest.mark.parametrize(
    ("pod", "status"),
    [
        (_pod({"running": {}}), "Running"),
        (
            _pod({"waiting": {"reason": "CrashLoopBackOff"}}, {"running": {}}),
            "CrashLoopBackOff",
        ),
        (_pod({"terminated": {"reason": "OOMKilled", "exitCode": 137}}), "OOMKilled"),
        (
            _pod({"waiting": {"reason": "ImagePullBackOff"}}, phase="Pending"),
            "ImagePullBackOff",
        ),
        (
            _pod(
                {"terminated": {"reason": "Completed", "exitCode": 0}},
                phase="Succeeded",
            ),
            "Completed",
        ),
        (_pod({"terminated": {"exitCode": 2}}, phase="Failed"), "ExitCode:2"),
        (_pod(phase="Pending"), "Pending"),
    ],
)
def test_pod_status_column_matches_kubectl(pod: dict, status: str) -> None:
    assert pod_phase_text(pod) == status


def test_pod_table_has_kubectl_columns_and_partial_objects() -> None:
    pod = _pod({"waiting": {"reason": "CrashLoopBackOff"}}, {"running": {}})
    pod["status"]["containerStatuses"][0].update(
        restartCount=7,
        lastState={
            "terminated": {"reason": "OOMKilled", "finishedAt": "2026-12-04T15:00:05Z"}
        },
    )
    table = to_table([pod], "Pod", revision="9", now=NOW)

    names = [c["name"] for c in table["columnDefinitions"]]
    assert names[:5] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert table["rows"][0]["cells"][:5] == [
        "p",
        "1/2",
        "CrashLoopBackOff",
        "7 (4m ago)",
        "60m",
    ]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    wide = [c["name"] for c in table["columnDefinitions"] if c["priority"] == 1]
    assert wide[:2] == ["IP", "Node"]


def test_table_without_known_columns_shows_name_and_age() -> None:
    table = to_table([{"metadata": {"name": "x"}}], "PodMetrics", revision="1", now=NOW)
    assert table["rows"][0]["cells"] == ["x", "<unknown>"]


# -- routing -------------------------------------------------------------------


def test_paths_name_resource_namespace_name_and_subresource() -> None:
    path = parse_resource_path("/apis/apps/v1/namespaces/prod/deployments/api/scale")
    assert (path.resource.kind, path.namespace, path.name, path.subresource) == (
        "Deployment",
        "prod",
        "api",
        "scale",
    )
    everywhere = parse_resource_path("/api/v1/pods")
    assert (everywhere.resource.kind, everywhere.namespace) == ("Pod", None)
    namespace = parse_resource_path("/api/v1/namespaces/prod")
    assert (namespace.resource.kind, namespace.name) == ("Namespace", "prod")


@pytest.mark.parametrize(
    "path",
    ["/api/v1/frobs", "/apis/apps/v2/deployments", "/api/v1/namespaces/x/pods/p/bogus"],
)
def test_unknown_paths_are_404(path: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_resource_path(path)
    assert caught.value.code == 404


def test_accept_header_selects_table_view() -> None:
    kubectl = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,"
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    )
    assert wanted_view(kubectl) == ("Table", "meta.k8s.io/v1")
    assert wanted_view("application/json") is None
    assert wanted_view(None) is None
    assert wanted_view(
        "application/json;q=0.9,application/json;as=Table;g=meta.k8s.io;v=v1"
    ) == (
        "Table",
        "meta.k8s.io/v1",
    )


# -- pod logs ------------------------------------------------------------------


def test_log_needs_a_container_name_when_the_pod_has_two() -> None:
    pod = _pod({"running": {}}, {"running": {}})
    with pytest.raises(ApiError) as caught:
        choose_container(pod, None)
    assert caught.value.code == 400
    assert "choose one of: [c0 c1]" in caught.value.message
    assert choose_container(pod, "c1") == "c1"
    with pytest.raises(ApiError):
        choose_container(pod, "nope")


def test_previous_log_of_a_container_that_never_restarted_is_400() -> None:
    pod = _pod({"running": {}})
    with pytest.raises(ApiError) as caught:
        check_previous(pod, "c0", [LogLine(NOW, "x")])
    assert caught.value.code == 400


def test_log_rendering_tails_and_stamps_lines() -> None:
    lines = [LogLine(NOW, f"line {i}") for i in range(5)]
    assert render_log(lines, tail_lines=2) == b"line 3\nline 4\n"
    assert (
        render_log(lines, tail_lines=1, timestamps=True)
        == b"2026-12-04T15:04:05Z line 4\n"
    )
    assert render_log(lines, tail_lines=0) == b""


# -- store and scenarios -------------------------------------------------------


def test_store_fills_metadata_and_counts_generations() -> None:
    store = ObjectStore()
    deployment = {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}
    created = store.put(deployment)
    assert created["metadata"]["namespace"] == "default"
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]

    replaced = store.put({**created, "spec": {"replicas": 2}})
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["metadata"]["generation"] == 2
    assert int(replaced["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"]
    )
    assert store.get("deploy", "default", "d") == replaced
    assert store.delete("Deployment", "default", "d") is not None
    assert store.list("deployments.apps") == []


def test_change_feed_expires_when_the_state_is_replaced() -> None:
    store = ObjectStore()
    resource = store.resource("configmaps")
    store.put({"kind": "ConfigMap", "metadata": {"name": "a", "namespace": "x"}})
    before = store.revision
    store.put({"kind": "ConfigMap", "metadata": {"name": "b", "namespace": "x"}})
    changes = store.changes_since(before, resource)
    assert [c.object["metadata"]["name"] for c in changes] == ["b"]
    store.clear()
    with pytest.raises(ExpiredRevision):
        store.changes_since(before, resource)


OVERLAY = """
base: healthy
patches:
- {kind: Deployment, namespace: paracle-prod, name: paracle-api,
   merge: {spec: {replicas: 1}}}
remove:
- {kind: Ingress, namespace: paracle-prod, name: paracle-ingress}
objects:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: extra, namespace: paracle-prod}}
logs:
- {namespace: paracle-prod, pod: redis-0, container: redis, text: only line}
"""


def test_scenario_with_a_base_patches_adds_and_replaces_logs() -> None:
    scenario = read_scenario(yaml.safe_load(OVERLAY))
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in scenario["objects"]}
    assert by_kind[("Deployment", "paracle-api")]["spec"]["replicas"] == 1
    assert ("Ingress", "paracle-ingress") not in by_kind
    assert ("ConfigMap", "extra") in by_kind
    redis_logs = [entry for entry in scenario["logs"] if entry["pod"] == "redis-0"]
    assert [entry["text"] for entry in redis_logs] == ["only line"]


def test_unknown_scenario_names_the_shipped_ones() -> None:
    with pytest.raises(ScenarioError, match="healthy"):
        read_scenario("no-such-scenario")
