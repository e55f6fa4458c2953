"""The resources the lab serves, and the discovery documents describing them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)
READ_VERBS = ("get", "list")

# Subresources and the verbs each one answers to.
_SUBRESOURCE_VERBS = {
    "status": ("get", "patch", "update"),
    "scale": ("get", "patch", "update"),
    "log": ("get",),
    "exec": ("create", "get"),
    "eviction": ("create",),
    "finalize": ("update",),
    "proxy": ("create", "delete", "get", "patch", "update"),
}


@dataclass(frozen=True)
class Resource:
    """One kind the lab serves, as discovery describes it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        """Return ``v1`` for the core group, ``group/version`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """Return ``(group, plural)``: how the store files this resource."""
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def names(self) -> set[str]:
        """Return every lower-case name a caller may use for this resource."""
        names = {self.plural, self.singular, *self.short_names}
        if self.group:
            names |= {f"{name}.{self.group}" for name in (self.plural, self.singular)}
        return names


@dataclass
class Registry:
    """Resources by name, kind and API path."""

    resources: list[Resource] = field(default_factory=list)

    def by_path(self, group: str, version: str, plural: str) -> Resource | None:
        """Return the resource served at ``/apis/<group>/<version>/<plural>``."""
        for resource in self.resources:
            if resource.key == (group, plural) and resource.version == version:
                return resource
        return None

    def by_kind(self, kind: str, api_version: str | None = None) -> Resource | None:
        """Return the resource of ``kind``, preferring ``api_version``'s group."""
        matches = [r for r in self.resources if r.kind.lower() == kind.lower()]
        if api_version:
            exact = [r for r in matches if r.api_version == api_version]
            matches = exact or matches
        return matches[0] if matches else None

    def resolve(self, kind_or_plural: str) -> Resource | None:
        """Return the resource a caller names by kind, plural or short name.

        The core group wins over others, so ``pods`` is ``v1/Pod`` and the
        metrics are ``PodMetrics`` or ``pods.metrics.k8s.io``.
        """
        wanted = kind_or_plural.lower()
        for resource in self.resources:
            if wanted == resource.kind.lower() or wanted in resource.names():
                return resource
        return None

    def group_versions(self) -> list[tuple[str, str]]:
        """Return ``(group, version)`` of the named groups, in serving order."""
        seen: list[tuple[str, str]] = []
        for resource in self.resources:
            pair = (resource.group, resource.version)
            if resource.group and pair not in seen:
                seen.append(pair)
        return seen


def _core(plural: str, kind: str, *short: str, **kw: Any) -> Resource:
    return Resource("", "v1", plural, kind, short_names=short, **kw)


def _apps(plural: str, kind: str, *short: str) -> Resource:
    return Resource(
        "apps",
        "v1",
        plural,
        kind,
        short_names=short,
        categories=("all",),
        subresources=("scale", "status"),
    )


def _metrics(plural: str, kind: str, namespaced: bool) -> Resource:
    return Resource(
        "metrics.k8s.io", "v1beta1", plural, kind, namespaced, verbs=READ_VERBS
    )


REGISTRY = Registry(
    [
        _core("namespaces", "Namespace", "ns", namespaced=False,
              subresources=("status", "finalize")),
        _core("nodes", "Node", "no", namespaced=False,
              subresources=("status", "proxy")),
        _core("pods", "Pod", "po", categories=("all",),
              subresources=("log", "status", "exec", "eviction")),
        _core("services", "Service", "svc", categories=("all",),
              subresources=("status",)),
        _core("endpoints", "Endpoints", "ep"),
        _core("configmaps", "ConfigMap", "cm"),
        _core("secrets", "Secret"),
        _core("events", "Event", "ev"),
        _core("serviceaccounts", "ServiceAccount", "sa"),
        _core("persistentvolumeclaims", "PersistentVolumeClaim", "pvc",
              subresources=("status",)),
        _apps("deployments", "Deployment", "deploy"),
        _apps("replicasets", "ReplicaSet", "rs"),
        _apps("statefulsets", "StatefulSet", "sts"),
        Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget",
                 short_names=("pdb",), subresources=("status",)),
        Resource("networking.k8s.io", "v1", "ingresses", "Ingress",
                 short_names=("ing",), subresources=("status",)),
        _metrics("pods", "PodMetrics", True),
        _metrics("nodes", "NodeMetrics", False),
    ]
)  # fmt: skip


def _group_entry(group: str, version: str) -> dict[str, Any]:
    group_version = {"groupVersion": f"{group}/{version}", "version": version}
    return {
        "name": group,
        "versions": [group_version],
        "preferredVersion": group_version,
    }


def api_versions(server_address: str) -> dict[str, Any]:
    """Return the ``/api`` document (APIVersions)."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_group_list(registry: Registry = REGISTRY) -> dict[str, Any]:
    """Return the ``/apis`` document (APIGroupList)."""
    groups = [_group_entry(g, v) for g, v in registry.group_versions()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str, registry: Registry = REGISTRY) -> dict[str, Any] | None:
    """Return the ``/apis/<group>`` document, or ``None`` for an unknown group."""
    for known, version in registry.group_versions():
        if known == group:
            return {
                "kind": "APIGroup",
                "apiVersion": "v1",
                **_group_entry(group, version),
            }
    return None


def _subresource_entry(resource: Resource, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": f"{resource.plural}/{name}",
        "singularName": "",
        "namespaced": resource.namespaced,
        "kind": resource.kind,
        "verbs": list(_SUBRESOURCE_VERBS[name]),
    }
    if name == "scale":
        entry.update(group="autoscaling", version="v1", kind="Scale")
    elif name == "eviction":
        entry.update(group="policy", version="v1", kind="Eviction")
    elif name in ("log", "exec", "proxy"):
        entry["kind"] = {"log": "Pod", "exec": "PodExecOptions"}.get(
            name, f"{resource.kind}ProxyOptions"
        )
    return entry


def api_resource_list(
    group: str, version: str, registry: Registry = REGISTRY
) -> dict[str, Any] | None:
    """Return ``/api/v1`` or ``/apis/<group>/<version>`` (APIResourceList)."""
    served = [r for r in registry.resources if (r.group, r.version) == (group, version)]
    if not served:
        return None

    entries: list[dict[str, Any]] = []
    for resource in served:
        entry: dict[str, Any] = {
            "name": resource.plural,
            "singularName": resource.singular,
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": list(resource.verbs),
        }
        if resource.short_names:
            entry["shortNames"] = list(resource.short_names)
        if resource.categories:
            entry["categories"] = list(resource.categories)
        entries.append(entry)
        entries.extend(_subresource_entry(resource, s) for s in resource.subresources)

    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": entries,
    }


def version_info() -> dict[str, str]:
    """Return the ``/version`` document of the lab's API server."""
    return {
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.4-paracle-lab",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.8",
        "compiler": "gc",
        "platform": "linux/amd64",
    }
