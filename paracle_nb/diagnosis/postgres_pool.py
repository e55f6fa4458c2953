"""Is the Postgres connection pool exhausted, and who holds it?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from paracle_nb.errors import ConnectionRefused
from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import Unavailable, available

if TYPE_CHECKING:
    import pandas as pd

NO_SLOT_MARKERS = ("too many clients", "remaining connection slots are reserved",
                   "too many connections")


def refused_for_lack_of_slots(result: Any) -> str | None:
    """Return the server's refusal message if a step failed for lack of slots."""
    if isinstance(result, Unavailable) and isinstance(result.error,
                                                      ConnectionRefused):
        said = result.error.detail or str(result.error)
        if any(marker in said for marker in NO_SLOT_MARKERS):
            return said
    return None


def diagnose_pool(limits: Any, sessions: Any, *, application: str,
                  idle_older_than_s: float, warn_ratio: float = 0.8
                  ) -> list[Finding]:
    """Return findings on slot usage: exhausted, near the limit, or nothing."""
    refusal = refused_for_lack_of_slots(limits)
    if refusal:
        return [Finding(
            "connection-pool-exhausted", Severity.CRITICAL,
            f"Postgres refused the runbook's own connection: {refusal}",
            {"server_message": refusal, "inspected": False},
            step="Connect")]
    if not available(limits):
        return []

    max_conn = limits["max_connections"]
    usable = max_conn - limits["superuser_reserved"]
    in_use = limits["client_backends"] - 1  # minus the runbook's own session
    evidence: dict[str, Any] = {
        "max_connections": max_conn,
        "superuser_reserved": limits["superuser_reserved"],
        "usable_by_applications": usable,
        "in_use": in_use,
        "available_to_applications": limits["available_to_applications"],
    }
    if available(sessions) and not sessions.empty:
        evidence.update(_holders(sessions, application, idle_older_than_s))

    if limits["available_to_applications"] <= 0:
        summary = (f"{in_use} of {max_conn} connections in use; no slot left "
                   f"for applications ({limits['superuser_reserved']} reserved "
                   f"for superusers).")
        summary += _holder_sentence(evidence)
        return [Finding("connection-pool-exhausted", Severity.CRITICAL, summary,
                        evidence, step="Check connections by state")]
    if in_use >= warn_ratio * usable:
        summary = f"{in_use} of {usable} usable connections in use."
        summary += _holder_sentence(evidence)
        return [Finding("connection-pool-near-limit", Severity.WARNING, summary,
                        evidence, step="Check connections by state")]
    return []


def _holders(sessions: pd.DataFrame, application: str, idle_older_than_s: float
             ) -> dict[str, Any]:
    by_app = sessions["application"].value_counts()
    mine = sessions[sessions["application"] == application]
    idle = sessions["state"].str.startswith("idle")
    return {
        "held_by_application": {str(k): int(v) for k, v in by_app.items()},
        "top_application": str(by_app.index[0]),
        "application": application,
        "application_connections": len(mine),
        "application_by_state": {str(k): int(v) for k, v in
                                 mine["state"].value_counts().items()},
        "idle": int((sessions["state"] == "idle").sum()),
        "idle_in_transaction": int(sessions["state"].str.startswith(
            "idle in transaction").sum()),
        "idle_older_than_threshold": int(
            (idle & (sessions["state_age_s"] >= idle_older_than_s)).sum()),
        "oldest_idle_s": round(float(sessions.loc[idle, "state_age_s"].max()), 1)
        if idle.any() else None,
    }


def _holder_sentence(evidence: dict[str, Any]) -> str:
    if "top_application" not in evidence:
        return ""
    app = evidence["top_application"]
    count = evidence["held_by_application"][app]
    return (f" {count} held by {app}; {evidence['idle']} idle and "
            f"{evidence['idle_in_transaction']} idle in transaction overall.")


def describe_connections(limits: Any, sessions: Any) -> str:
    """Return one sentence: slots in use, and who holds them."""
    if refused_for_lack_of_slots(limits):
        return "Postgres refused our connection: every slot is taken."
    if not available(limits):
        return "Connection limits unavailable."
    text = (f"{limits['client_backends'] - 1} of {limits['max_connections']} "
            f"connections in use (plus this runbook's own), "
            f"{limits['available_to_applications']} left for applications; "
            f"background workers do not count against the limit.")
    if available(sessions) and not sessions.empty:
        top = sessions["application"].value_counts()
        text += f" Largest holder: {top.index[0]} with {int(top.iloc[0])}."
    return text
