"""The scheduler's ``FailedScheduling`` message, taken apart.

``0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu},
2 Insufficient cpu. preemption: ...`` becomes one reason per clause, with
the number of nodes it ruled out and a category the diagnosis can match
(``insufficient``, ``taint``, ``node-selector``, ``unschedulable``...).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclasses.dataclass
class SchedulingReason:
    """One clause of a FailedScheduling message: ``3 Insufficient cpu``."""

    text: str
    nodes: int | None
    category: str
    detail: str = ""


@dataclasses.dataclass
class SchedulingFailure:
    """A FailedScheduling message taken apart."""

    available: int | None
    total: int | None
    reasons: list[SchedulingReason]
    preemption: str = ""


_SUMMARY = re.compile(r"^\s*(\d+)/(\d+) nodes are available:?\s*(.*)$", re.S)
_CLAUSE = re.compile(r"^(\d+)\s+(.+)$", re.S)
_TAINT = re.compile(r"taint \{([^}]*)\}")
_CATEGORIES = [
    (re.compile(r"^Insufficient (\S+)"), "insufficient"),
    (re.compile(r"^Too many pods"), "insufficient"),
    (re.compile(r"taint \{"), "taint"),
    (re.compile(r"didn't match (Pod's )?node (affinity|selector)"), "node-selector"),
    (re.compile(r"unschedulable"), "unschedulable"),
    (re.compile(r"pod (anti-)?affinity"), "pod-affinity"),
    (re.compile(r"(?i)volume|PersistentVolumeClaim"), "volume"),
    (re.compile(r"free ports"), "ports"),
]


def parse_failed_scheduling(message: str) -> SchedulingFailure:
    """Take a FailedScheduling message apart into clauses with node counts.

    >>> failure = parse_failed_scheduling(
    ...     "0/3 nodes are available: 1 node(s) had untolerated taint "
    ...     "{dedicated: gpu}, 2 Insufficient cpu. preemption: 0/3 nodes are "
    ...     "available: 3 No preemption victims found for incoming pod.")
    >>> [(r.nodes, r.category, r.detail) for r in failure.reasons]
    [(1, 'taint', 'dedicated=gpu'), (2, 'insufficient', 'cpu')]
    """
    head, _, preemption = message.partition(" preemption: ")
    match = _SUMMARY.match(head.strip())
    if match is None:
        body, available, total = head.strip(), None, None
    else:
        available, total = int(match.group(1)), int(match.group(2))
        body = match.group(3)
    body = body.strip().rstrip(".")

    reasons = []
    for clause in re.split(r",\s*(?=\d+ )", body) if body else []:
        counted = _CLAUSE.match(clause.strip())
        nodes, text = ((int(counted.group(1)), counted.group(2).strip()) if counted
                       else (None, clause.strip()))
        category, detail = _categorise(text)
        reasons.append(SchedulingReason(text, nodes, category, detail))
    return SchedulingFailure(available, total, reasons, preemption.strip())


def _categorise(text: str) -> tuple[str, str]:
    for pattern, category in _CATEGORIES:
        found = pattern.search(text)
        if not found:
            continue
        if category == "insufficient":
            return category, found.group(1) if found.groups() else "pods"
        if category == "taint":
            taint = _TAINT.search(text)
            raw = taint.group(1) if taint else ""
            key, _, value = raw.partition(":")
            return category, f"{key.strip()}={value.strip()}" if value.strip() \
                else key.strip()
        return category, ""
    return "other", ""


def scheduling_reasons(events: pd.DataFrame) -> pd.DataFrame:
    """Return the FailedScheduling reasons of pod events: reason and node count.

    Only each pod's latest FailedScheduling message counts; ``nodes`` is
    the largest count any pod's message gave for that reason.
    """
    import pandas as pd

    columns = ["reason", "nodes", "total_nodes", "category", "detail", "pods",
               "events"]
    failed = events[events["reason"] == "FailedScheduling"]
    if failed.empty:
        return pd.DataFrame([], columns=columns)
    latest = failed.sort_values("last_seen", ascending=False).drop_duplicates("object")

    found: dict[str, dict[str, Any]] = {}
    for event in latest.itertuples():
        failure = parse_failed_scheduling(str(event.message))
        count = int(failed.loc[failed["object"] == event.object, "count"].sum())
        for reason in failure.reasons:
            row = found.setdefault(reason.text, {
                "reason": reason.text, "nodes": reason.nodes,
                "total_nodes": failure.total, "category": reason.category,
                "detail": reason.detail, "pods": 0, "events": 0})
            row["nodes"] = max(row["nodes"] or 0, reason.nodes or 0) or None
            row["pods"] += 1
            row["events"] += count
    frame = pd.DataFrame(list(found.values()), columns=columns)
    return frame.sort_values("nodes", ascending=False, ignore_index=True)
