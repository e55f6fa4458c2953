"""Why is the API answering 500?"""

from __future__ import annotations

import re
from typing import Any

from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import available

IMPORT_ERRORS = ("ImportError", "ModuleNotFoundError")
_MODULE = re.compile(r"No module named '([^']+)'|cannot import name '([^']+)'")
_SETTING = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
_CONFIG_FILES = ("config", "settings")


def diagnose_errors(error_rate: Any, groups: Any, config: Any, *,
                    max_error_rate: float = 0.01) -> list[Finding]:
    """Return findings: error rate, then the cause of the commonest traceback."""
    findings = []
    if available(error_rate) and error_rate.get("ratio") is not None and \
            error_rate["ratio"] > max_error_rate:
        findings.append(Finding(
            "high-error-rate", Severity.CRITICAL,
            f"{error_rate['ratio']:.1%} of requests answer 5xx "
            f"({error_rate['errors_per_s']:.2f}/s).",
            dict(error_rate), step="Check error rate"))
    if not available(groups) or groups.empty:
        return findings

    for row in groups.itertuples():
        finding = _classify(row, config)
        if finding is not None:
            findings.append(finding)
    return findings


def _classify(row: Any, config: Any) -> Finding | None:
    exception = row.exception.rsplit(".", 1)[-1]
    evidence = {"exception": row.exception, "where": row.where,
                "count": int(row.count), "message": row.example_message,
                "pods": row.sources}
    if exception in IMPORT_ERRORS:
        match = _MODULE.search(row.example_message or "")
        evidence["module"] = next((g for g in match.groups() if g), None) \
            if match else None
        return Finding("missing-dependency", Severity.CRITICAL,
                       f"{row.exception} in {row.where} ({int(row.count)}x): "
                       f"the image lacks {evidence['module'] or 'a module'}.",
                       evidence, step="Check import errors")

    setting = _config_setting(row, config)
    if setting is not None:
        evidence.update(setting)
        shown = f" = {setting['value']!r}" if "value" in setting else ""
        return Finding("configuration-error", Severity.CRITICAL,
                       f"{row.exception} ({int(row.count)}x) from setting "
                       f"{setting['key']}{shown} in {setting['source']}.",
                       evidence, step="Check config")
    return Finding("unhandled-exception", Severity.CRITICAL,
                   f"{row.exception} raised at {row.where} ({int(row.count)}x): "
                   f"{row.example_message}", evidence, step="Find stack trace")


def _config_setting(row: Any, config: Any) -> dict[str, Any] | None:
    """Return the ConfigMap key or env var a config traceback points at."""
    in_config = any(part in row.where for part in _CONFIG_FILES) or \
        "Config" in row.exception
    names = _SETTING.findall(row.example_message or "")
    if not names or not in_config or not available(config):
        return None
    for name in names:
        for source, values in config.items():
            if name in values:
                found = {"key": name, "source": source}
                if values[name] is not None:
                    found["value"] = values[name]
                return found
    return {"key": names[0], "source": "(not set anywhere: missing)"}


def configuration_sources(configmaps: list[dict[str, Any]],
                          deployment: dict[str, Any], container: str
                          ) -> dict[str, dict[str, str | None]]:
    """Return, per source, the settings a container gets and their values.

    ConfigMap values are shown; env values are shown only when literal and
    not secret-looking; Secret-backed values never (None).
    """
    from paracle_nb.redact import SECRET_NAME

    sources: dict[str, dict[str, str | None]] = {}
    for cm in configmaps:
        sources[f"configmap/{cm['metadata']['name']}"] = dict(cm.get("data") or {})
    spec = deployment["spec"]["template"]["spec"]["containers"]
    main = next((c for c in spec if c["name"] == container), spec[0])
    env: dict[str, str | None] = {}
    for entry in main.get("env", []):
        literal = "value" in entry and not SECRET_NAME.search(entry["name"])
        env[entry["name"]] = entry["value"] if literal else None
    sources[f"deployment/{deployment['metadata']['name']} env"] = env
    return sources


def describe_groups(groups: Any) -> str:
    """Return one sentence on the tracebacks found."""
    if not available(groups):
        return "Logs unavailable."
    if groups.empty:
        return "No traceback in the API's logs."
    top = groups.iloc[0]
    return (f"{int(groups['count'].sum())} traceback(s) in {len(groups)} group(s); "
            f"commonest: {top['exception']} at {top['where']} "
            f"({int(top['count'])}x).")


def error_ratio(errors_per_s: float | None, requests_per_s: float | None
                ) -> dict[str, Any]:
    """Return the 5xx rate and its share of all requests."""
    ratio = (errors_per_s / requests_per_s) if errors_per_s is not None and \
        requests_per_s else None
    return {"errors_per_s": errors_per_s or 0.0, "requests_per_s": requests_per_s,
            "ratio": ratio}

