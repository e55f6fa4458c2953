"""Why are LLM provider calls failing?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import available

if TYPE_CHECKING:
    import pandas as pd

CATEGORIES = {
    "rate-limited": ("llm-rate-limited", "Rate limit exceeded (429)"),
    "invalid-key": ("llm-invalid-key", "Invalid API key (401/403)"),
    "outage": ("llm-provider-outage", "Service unavailable (5xx or timeout)"),
}


def categorize(status: Any, error: Any) -> str | None:
    """Return the guide's category of one failed LLM call."""
    text = str(error or "").lower()
    code = int(status) if str(status or "").isdigit() else None
    if code == 429 or "rate limit" in text:
        return "rate-limited"
    if code in (401, 403) or "api key" in text or "unauthorized" in text:
        return "invalid-key"
    if (code is not None and code >= 500) or "timeout" in text or \
            "timed out" in text or "unavailable" in text:
        return "outage"
    return None


def llm_errors(log: pd.DataFrame) -> pd.DataFrame:
    """Return failed LLM calls counted per provider and category."""
    import pandas as pd

    columns = ["provider", "category", "count", "last_seen", "example"]
    if log.empty or "provider" not in log.columns:
        return pd.DataFrame(columns=columns)
    failed = log[(log.get("logger") == "paracle.llm")
                 & log["level"].isin(["error", "warning"])].copy()
    if failed.empty:
        return pd.DataFrame(columns=columns)
    failed["category"] = [categorize(s, e) for s, e in
                          zip(failed.get("status"), failed.get("error"), strict=True)]
    failed = failed.dropna(subset=["category"])
    grouped = failed.groupby(["provider", "category"], as_index=False).agg(
        count=("category", "size"), last_seen=("ts", "max"),
        example=("error", "last"))
    return grouped.sort_values("count", ascending=False, ignore_index=True)[columns]


def provider_calls(log: pd.DataFrame) -> pd.DataFrame:
    """Return LLM calls per provider: finished requests, answered ones, failures.

    ``answered`` counts requests that finished 200 after calling the
    provider; ``failed`` counts ``llm call failed`` lines.
    """
    import pandas as pd

    columns = ["provider", "calls", "answered", "failed"]
    if log.empty or not {"llm_provider", "provider"} <= set(log.columns):
        return pd.DataFrame(columns=columns)
    finished = log[log["llm_provider"].notna()]
    failed = log[(log["logger"] == "paracle.llm") & log["provider"].notna()
                 & log["level"].isin(["error", "warning"])]
    rows = []
    for provider in sorted(set(finished["llm_provider"]) | set(failed["provider"])):
        mine = finished[finished["llm_provider"] == provider]
        rows.append({"provider": provider, "calls": int(len(mine)),
                     "answered": int((mine["status"].astype(str) == "200").sum()),
                     "failed": int((failed["provider"] == provider).sum())})
    return pd.DataFrame(rows, columns=columns)


def healthy_providers(calls: Any) -> list[str]:
    """Return the providers that answered calls and failed none, busiest first."""
    if not available(calls) or calls.empty:
        return []
    good = calls[(calls["answered"] > 0) & (calls["failed"] == 0)]
    return list(good.sort_values("answered", ascending=False)["provider"])


def diagnose_llm(errors: Any, keys: Any = None, pages: Any = None, *,
                 min_errors: int = 5, healthy: list[str] | None = None
                 ) -> list[Finding]:
    """Return one finding per provider and category with enough failures.

    ``healthy`` (see :func:`healthy_providers`) goes into each finding's
    evidence: the providers a switch could go to.
    """
    if not available(errors) or errors.empty:
        return []
    findings = []
    for row in errors.itertuples():
        if row.count < min_errors:
            continue
        cause, label = CATEGORIES[row.category]
        evidence: dict[str, Any] = {"provider": row.provider,
                                    "failed_calls": int(row.count),
                                    "last_seen": str(row.last_seen),
                                    "example_error": row.example}
        if row.category == "invalid-key" and available(keys):
            evidence.update(_key_evidence(keys, row.provider))
        if available(pages) and not pages.empty:
            evidence["status_pages"] = pages[["url", "indicator"]].to_dict("records")
        if healthy is not None:
            evidence["healthy_providers"] = [p for p in healthy
                                             if p != row.provider]
        findings.append(Finding(
            cause, Severity.CRITICAL,
            f"{row.provider}: {int(row.count)} failed calls — {label}.",
            evidence, step="Check recent errors"))
    return findings


def _key_evidence(keys: pd.DataFrame, provider: str) -> dict[str, Any]:
    from paracle_nb.llm import PROVIDER_KEYS

    name = PROVIDER_KEYS.get(provider)
    row = keys[keys["key"] == name]
    if row.empty:
        return {}
    first = row.iloc[0]
    return {"secret_key": name, "key_present": bool(first["present"]),
            "key_fingerprint": first["fingerprint"], "key_shape": first["shape"]}


def describe_llm_errors(errors: Any) -> str:
    """Return one sentence on failed LLM calls."""
    if not available(errors):
        return "API logs unavailable."
    if errors.empty:
        return "No failed LLM call in the API's logs."
    parts = [f"{r.provider} {r.category} x{int(r.count)}" for r in errors.itertuples()]
    return "Failed LLM calls: " + ", ".join(parts) + "."


def describe_keys(keys: Any) -> str:
    """Return one sentence on the API keys (fingerprints, never values)."""
    if not available(keys):
        return "API keys unavailable."
    missing = list(keys.loc[~keys["present"].astype(bool), "key"])
    present = len(keys) - len(missing)
    sentence = (f"{present} API key(s) in the Secret, identified by fingerprint "
                "only")
    if missing:
        sentence += f"; missing: {', '.join(missing)}"
    return sentence + "."


def describe_pages(pages: Any) -> str:
    """Return one sentence on the provider status pages."""
    if not available(pages):
        return "Status pages unavailable."
    if pages.empty:
        return "No status page URL given: not read (that is not an error)."
    parts = [f"{r.url}: {r.indicator if r.reachable else 'not reachable'}"
             for r in pages.itertuples()]
    return "Status pages: " + "; ".join(parts) + "."


def describe_provider_calls(calls: Any) -> str:
    """Return one sentence on which providers answer."""
    if not available(calls):
        return "API logs unavailable."
    if calls.empty:
        return "No LLM call in the API's logs."
    healthy = healthy_providers(calls)
    return (f"LLM calls of {len(calls)} provider(s); answering without error: "
            f"{', '.join(healthy) or 'none'}.")
