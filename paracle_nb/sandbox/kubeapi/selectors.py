"""Label and field selectors: parsed from query strings, matched on objects."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from paracle_nb.errors import SandboxError

_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?")
_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?")
_SET_TERM = re.compile(
    r"(?P<key>[^\s!=<>(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)"
)
_PLAIN_TERM = re.compile(
    r"(?P<key>[^\s!=<>(),]+)\s*(?P<op>==|!=|=|<|>)\s*(?P<value>\S*)"
)


class InvalidSelector(SandboxError):
    """A label or field selector does not parse."""


@dataclass(frozen=True)
class Requirement:
    """One term of a selector: ``key``, an operator and its values."""

    key: str
    operator: str  # one of = != in notin exists !exists < >
    values: tuple[str, ...] = ()


def _split_terms(text: str) -> list[str]:
    """Split on the commas that are not inside ``in (...)`` value sets."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term.strip() for term in terms if term.strip()]


def _check_key(key: str, selector: str) -> str:
    if not _KEY.fullmatch(key):
        raise InvalidSelector(f"invalid label key {key!r} in selector {selector!r}")
    return key


def _check_value(value: str, selector: str) -> str:
    if len(value) > 63 or not _VALUE.fullmatch(value):
        raise InvalidSelector(f"invalid label value {value!r} in selector {selector!r}")
    return value


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse ``app=api,tier in (web,worker),!canary`` into requirements.

    >>> parse_label_selector("app=paracle-api,!canary")
    [Requirement(key='app', operator='=', values=('paracle-api',)), \
Requirement(key='canary', operator='!exists', values=())]
    """
    requirements = []
    for term in _split_terms(text or ""):
        if term.startswith("!"):
            key = _check_key(term[1:].strip(), text or "")
            requirements.append(Requirement(key, "!exists"))
            continue

        set_term = _SET_TERM.fullmatch(term)
        if set_term:
            values = [v.strip() for v in set_term["values"].split(",")]
            requirements.append(
                Requirement(
                    _check_key(set_term["key"], term),
                    set_term["op"],
                    tuple(_check_value(v, term) for v in values),
                )
            )
            continue

        plain = _PLAIN_TERM.fullmatch(term)
        if plain:
            op = "=" if plain["op"] == "==" else plain["op"]
            value = _check_value(plain["value"], term)
            if op in "<>" and not value.lstrip("-").isdigit():
                raise InvalidSelector(f"{term!r}: {op} needs an integer value")
            requirements.append(
                Requirement(_check_key(plain["key"], term), op, (value,))
            )
            continue

        requirements.append(Requirement(_check_key(term, term), "exists"))
    return requirements


def _matches(requirement: Requirement, present: bool, value: str) -> bool:
    op, values = requirement.operator, requirement.values
    if op == "exists":
        return present
    if op == "!exists":
        return not present
    if op == "=":
        return present and value == values[0]
    if op == "!=":
        return not present or value != values[0]
    if op == "in":
        return present and value in values
    if op == "notin":
        return not present or value not in values
    if not present or not value.lstrip("-").isdigit():
        return False
    if op == "<":
        return int(value) < int(values[0])
    return int(value) > int(values[0])


def matches_labels(
    requirements: list[Requirement], labels: dict[str, str] | None
) -> bool:
    """Return whether ``labels`` satisfy every requirement."""
    labels = labels or {}
    return all(
        _matches(r, r.key in labels, str(labels.get(r.key, ""))) for r in requirements
    )


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_field_selector(text: str | None) -> list[Requirement]:
    """Parse ``status.phase=Running,spec.nodeName!=node-a``.

    Values may escape ``,``, ``=`` and ``\\`` with a backslash.
    """
    requirements = []
    for term in _split_unescaped(text or "", ","):
        if not term.strip():
            continue
        match = re.fullmatch(r"\s*([^=!\s]+)\s*(==|!=|=)(.*)", term)
        if match is None:
            raise InvalidSelector(f"invalid field selector term {term!r}")
        field, op, value = match.groups()
        operator = "!=" if op == "!=" else "="
        requirements.append(Requirement(field, operator, (_unescape(value),)))
    return requirements


def field_value(obj: dict[str, Any], path: str) -> str:
    """Return the dotted ``path`` of ``obj`` as a selector compares it.

    Missing fields read as the empty string; booleans as ``true``/``false``.
    """
    current: Any = obj
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return ""
    if current is None or isinstance(current, (dict, list)):
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def matches_fields(requirements: list[Requirement], obj: dict[str, Any]) -> bool:
    """Return whether ``obj`` satisfies every field requirement."""
    for requirement in requirements:
        equal = field_value(obj, requirement.key) == requirement.values[0]
        if equal != (requirement.operator == "="):
            return False
    return True


def selector_string(selector: dict[str, Any] | None) -> str:
    """Render a ``LabelSelector`` (matchLabels/matchExpressions) as a query string."""
    selector = selector or {}
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, op = expression["key"], expression["operator"]
        values = ",".join(expression.get("values") or [])
        if op == "In":
            terms.append(f"{key} in ({values})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({values})")
        elif op == "Exists":
            terms.append(key)
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)
