"""Reading a request: which resource a path names, and what the client accepts."""

from __future__ import annotations

from dataclasses import dataclass

from .discovery import REGISTRY, Registry, Resource
from .status import ApiError


@dataclass(frozen=True)
class ResourcePath:
    """A path under ``/api/v1`` or ``/apis/<group>/<version>``, taken apart.

    ``namespace`` is ``None`` for cluster-scoped resources and for lists
    across all namespaces; ``name`` is ``None`` for collections.
    """

    resource: Resource
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def _unknown() -> ApiError:
    return ApiError(404, "the server could not find the requested resource")


def parse_resource_path(path: str, registry: Registry = REGISTRY) -> ResourcePath:
    """Return what ``path`` names; a 404 ``ApiError`` if the lab serves no such thing.

    >>> parse_resource_path("/apis/apps/v1/namespaces/prod/deployments/api/scale")
    ... # doctest: +ELLIPSIS
    ResourcePath(resource=Resource(group='apps', ...), namespace='prod', \
name='api', subresource='scale')
    """
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise _unknown()

    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        scoped = registry.by_path(group, version, rest[2])
        if scoped is not None and scoped.namespaced:
            namespace, rest = rest[1], rest[2:]

    resource = registry.by_path(group, version, rest[0])
    if resource is None or len(rest) > 3:
        raise _unknown()
    if resource.namespaced and namespace is None and len(rest) > 1:
        raise _unknown()

    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if subresource is not None and subresource not in resource.subresources:
        raise _unknown()
    return ResourcePath(resource, namespace, name, subresource)


def _media_ranges(accept: str) -> list[tuple[float, dict[str, str]]]:
    ranges = []
    for position, entry in enumerate(accept.split(",")):
        parts = [p.strip() for p in entry.split(";")]
        params = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        params["type"] = parts[0].lower()
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        # Earlier entries win ties, as the client listed them in preference order.
        ranges.append((quality - position * 1e-6, params))
    return sorted(ranges, key=lambda r: -r[0])


def wanted_view(accept: str | None) -> tuple[str, str] | None:
    """Return ``(as, apiVersion)`` when the client asks for a meta.k8s.io view.

    ``as`` is ``Table``, ``PartialObjectMetadata`` or
    ``PartialObjectMetadataList``; ``None`` means the plain object or list.

    >>> wanted_view("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    ('Table', 'meta.k8s.io/v1')
    """
    for quality, params in _media_ranges(accept or ""):
        if quality <= 0:
            continue
        view = params.get("as")
        if params["type"] in ("application/json", "*/*") and view is None:
            return None
        if view and params.get("g") == "meta.k8s.io":
            return view, f"meta.k8s.io/{params.get('v', 'v1')}"
    return None


def flag(value: str | None) -> bool:
    """Return a boolean query parameter: ``true``/``True``/``1`` are true."""
    return (value or "").lower() in ("true", "1", "yes")


def integer(value: str | None, name: str) -> int | None:
    """Return an integer query parameter, or a 400 ``ApiError`` if it is not one."""
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, not {value!r}") from None
