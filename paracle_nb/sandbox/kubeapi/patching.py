"""The three patch formats of the Kubernetes API, as pure functions.

* :func:`merge_patch` -- JSON merge patch (RFC 7386);
* :func:`json_patch` -- JSON patch (RFC 6902);
* :func:`strategic_merge_patch` -- Kubernetes' strategic merge patch, which
  merges lists of named items (containers, env, ports...) instead of
  replacing them, and honours the ``$patch``, ``$retainKeys``,
  ``$setElementOrder/`` and ``$deleteFromPrimitiveList/`` directives.
"""

from __future__ import annotations

import copy
from typing import Any

from paracle_nb.errors import SandboxError

# Lists merged item by item, and the keys that name an item, in order of
# preference: a container's ports are keyed by containerPort, a service's by port.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "imagePullSecrets": ("name",),
    "resourceClaims": ("name",),
    "volumeMounts": ("mountPath", "name"),
    "volumeDevices": ("devicePath",),
    "ports": ("containerPort", "port"),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey",),
}

# Lists of plain values merged as sets rather than replaced.
MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})

_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"


class InvalidPatch(SandboxError):
    """A patch document is malformed or cannot be applied to the object."""


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch; ``null`` removes a key.

    >>> merge_patch({"a": 1, "b": {"c": 2}}, {"b": {"c": None, "d": 3}})
    {'a': 1, 'b': {'d': 3}}
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)

    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise InvalidPatch(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, adding: bool) -> int:
    if adding and token == "-":
        return len(container)
    if not token.isdigit():
        raise InvalidPatch(f"list index {token!r} is not a number")
    index = int(token)
    if index > len(container) or (index == len(container) and not adding):
        raise InvalidPatch(f"list index {index} is out of range")
    return index


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    current = doc
    for token in tokens[:-1]:
        if isinstance(current, dict) and token in current:
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(current, token, adding=False)]
        else:
            raise InvalidPatch(f"path {path!r} does not exist")
    return current


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens, path), tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, adding=False)]
    raise InvalidPatch(f"path {path!r} does not exist")


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise InvalidPatch("cannot remove the whole document")
    parent, last = _parent(doc, tokens, path), tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, adding=False))
    raise InvalidPatch(f"path {path!r} does not exist")


def _add(doc: Any, path: str, value: Any, *, replace: bool = False) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens, path), tokens[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise InvalidPatch(f"path {path!r} does not exist")
        parent[last] = value
    elif isinstance(parent, list):
        index = _index(parent, last, adding=not replace)
        if replace:
            parent[index] = value
        else:
            parent.insert(index, value)
    else:
        raise InvalidPatch(f"path {path!r} does not exist")
    return doc


def json_patch(doc: Any, operations: list[dict[str, Any]]) -> Any:
    """Apply an RFC 6902 JSON patch; a failed ``test`` raises :class:`InvalidPatch`.

    >>> json_patch({"a": [1]}, [{"op": "add", "path": "/a/-", "value": 2}])
    {'a': [1, 2]}
    """
    if not isinstance(operations, list):
        raise InvalidPatch("a JSON patch must be a list of operations")

    doc = copy.deepcopy(doc)
    for operation in operations:
        if not isinstance(operation, dict) or "path" not in operation:
            raise InvalidPatch(f"malformed JSON patch operation {operation!r}")
        op, path = operation.get("op"), operation["path"]
        value = copy.deepcopy(operation.get("value"))

        if op == "add":
            doc = _add(doc, path, value)
        elif op == "remove":
            _remove(doc, path)
        elif op == "replace":
            doc = _add(doc, path, value, replace=True)
        elif op in ("move", "copy"):
            source = operation.get("from", "")
            moved = _remove(doc, source) if op == "move" else _get(doc, source)
            doc = _add(doc, path, copy.deepcopy(moved))
        elif op == "test":
            if _get(doc, path) != value:
                raise InvalidPatch(f"test failed: {path!r} is not {value!r}")
        else:
            raise InvalidPatch(f"unknown JSON patch operation {op!r}")
    return doc


def strategic_merge_patch(
    original: dict[str, Any], patch: dict[str, Any]
) -> dict[str, Any]:
    """Apply a Kubernetes strategic merge patch to ``original``.

    A patch of one container keeps the others:

    >>> doc = {"containers": [{"name": "api", "image": "a:1"}, {"name": "log"}]}
    >>> strategic_merge_patch(doc, {"containers": [{"name": "api", "image": "a:2"}]})
    {'containers': [{'name': 'api', 'image': 'a:2'}, {'name': 'log'}]}
    """
    if not isinstance(patch, dict):
        raise InvalidPatch("a strategic merge patch must be a JSON object")
    merged = _merge_map(original, patch)
    if merged is None:
        raise InvalidPatch("a strategic merge patch cannot delete the whole object")
    return merged


def _merge_map(original: Any, patch: dict[str, Any]) -> dict[str, Any] | None:
    """Merge ``patch`` into a map; ``None`` means the map is to be deleted."""
    patch = dict(patch)
    directive = patch.pop("$patch", "merge")
    if directive == "delete":
        return None
    if directive == "replace":
        original = {}
    elif directive != "merge":
        raise InvalidPatch(f"unknown $patch directive {directive!r}")

    # Directives first leave the patch, then apply after the plain keys.
    retain = patch.pop("$retainKeys", None)
    orders = {
        k[len(_ORDER) :]: patch.pop(k) for k in list(patch) if k.startswith(_ORDER)
    }
    deletions = {
        k[len(_DELETE_PRIMITIVE) :]: patch.pop(k)
        for k in list(patch)
        if k.startswith(_DELETE_PRIMITIVE)
    }

    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        current = result.get(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = _merge_map(current, value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            merged_list = _merge_list(key, current, value)
            # An emptied list of named items reads back as absent, as on a server.
            if merged_list or key not in MERGE_KEYS:
                result[key] = merged_list
            else:
                result.pop(key, None)
        else:
            result[key] = value

    for key, unwanted in deletions.items():
        if isinstance(result.get(key), list):
            result[key] = [v for v in result[key] if v not in unwanted]
    for key, order in orders.items():
        if isinstance(result.get(key), list):
            result[key] = _apply_order(key, result[key], order)
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _clean(value: Any) -> Any:
    """Return ``value`` with patch directives stripped, as a new object."""
    if isinstance(value, dict):
        return _merge_map({}, value) or {}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def _merge_key(field: str, items: list[Any]) -> str | None:
    for candidate in MERGE_KEYS.get(field, ()):
        if any(isinstance(item, dict) and candidate in item for item in items):
            return candidate
    return None


def _merge_list(field: str, original: Any, patch: list[Any]) -> list[Any]:
    current = original if isinstance(original, list) else []
    if field in MERGED_PRIMITIVE_LISTS and not any(isinstance(v, dict) for v in patch):
        return list(current) + [v for v in patch if v not in current]

    named = field in MERGE_KEYS and any(isinstance(item, dict) for item in patch)
    if not named or {"$patch": "replace"} in patch:
        return [_clean(item) for item in patch if item != {"$patch": "replace"}]

    key = _merge_key(field, patch) or MERGE_KEYS[field][0]

    result = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise InvalidPatch(f"an item of {field!r} lacks its merge key {key!r}")
        index = next(
            (i for i, old in enumerate(result) if isinstance(old, dict)
             and old.get(key) == item[key]),
            None,
        )  # fmt: skip
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
            continue

        merged = _merge_map(result[index] if index is not None else {}, item)
        if merged is None:
            continue
        if index is None:
            result.append(merged)
        else:
            result[index] = merged
    return result


def _apply_order(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    """Order ``items`` as ``$setElementOrder`` lists them; others keep their place."""
    key = _merge_key(field, order)

    def identity(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else item

    wanted = [identity(entry) for entry in order]
    ranked = [item for w in wanted for item in items if identity(item) == w]
    rest = [item for item in items if identity(item) not in wanted]
    return ranked + rest
