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
    if available(groups) and not groups.empty:
        for row in groups.itertuples():
            finding = _classify(row, config)
            if finding is not None:
                findings.append(finding)

    if available(error_rate) and error_rate.get("ratio") is not None and \
            error_rate["ratio"] > max_error_rate:
        # The symptom comes after its causes, as on-call already knows it.
        causes = sorted({f.cause for f in findings})
        summary = (f"{error_rate['ratio']:.1%} of requests answer 5xx "
                   f"({error_rate['errors_per_second']:.2f}/s)")
        summary += f"; see {', '.join(causes)}." if causes else \
            ": no traceback in the logs explains it."
        findings.append(Finding(
            "high-error-rate", Severity.WARNING if causes else Severity.CRITICAL,
            summary, {**error_rate, "threshold": max_error_rate,
                      "explained_by": causes}, step="Check error rate"))
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


def error_ratio(errors_per_second: float | None,
                requests_per_second: float | None) -> dict[str, Any]:
    """Return the 5xx rate and its share of all requests."""
    errors, requests = errors_per_second, requests_per_second
    ratio = errors / requests if errors is not None and requests else None
    return {"errors_per_second": errors or 0.0, "requests_per_second": requests,
            "ratio": ratio}



def describe_error_rate(error_rate: Any, max_error_rate: float = 0.01) -> str:
    """Return one sentence on the 5xx rate against the threshold."""
    if not available(error_rate):
        return "Error rate unavailable."
    ratio = error_rate.get("ratio")
    if ratio is None:
        return (f"No requests in the last {error_rate.get('window', 'window')}: "
                "no error rate to compute.")
    verdict = "above" if ratio > max_error_rate else "within"
    return (f"{ratio:.1%} of requests answer 5xx ({error_rate['errors_per_second']:.2f}"
            f" of {error_rate['requests_per_second']:.2f} requests/s), {verdict} the "
            f"{max_error_rate:.0%} threshold.")


def describe_error_lines(lines: Any) -> str:
    """Return one sentence on the error lines found in the pods' logs."""
    if not available(lines):
        return "Logs unavailable."
    if lines.empty:
        return "No API pod log read."
    total = int(lines["error_lines"].sum())
    if total == 0:
        return (f"No error or exception line in the last "
                f"{int(lines['lines_read'].sum())} log lines of "
                f"{len(lines)} pod(s).")
    return (f"{total} error or exception line(s) in {len(lines)} pod(s), "
            f"{int(lines['tracebacks'].sum())} traceback(s).")


def import_errors(groups: Any) -> Any:
    """Return the traceback groups that are import errors, with the module."""
    if groups.empty:
        return groups.assign(module=[])
    short = groups["exception"].str.rsplit(".", n=1).str[-1]
    found = groups[short.isin(IMPORT_ERRORS)].copy()
    found["module"] = [_module_of(m) for m in found["example_message"]]
    return found.reset_index(drop=True)


def _module_of(message: Any) -> str | None:
    match = _MODULE.search(str(message or ""))
    return next((g for g in match.groups() if g), None) if match else None


def describe_import_errors(found: Any) -> str:
    """Return one sentence on import errors (a dependency missing from the image)."""
    if not available(found):
        return "Tracebacks unavailable."
    if found.empty:
        return "No ImportError or ModuleNotFoundError in the logs."
    modules = sorted({m for m in found["module"] if m})
    return (f"{int(found['count'].sum())} import error(s): the image lacks "
            f"{', '.join(modules) or 'a module'}.")


def describe_configuration(config: Any) -> str:
    """Return one sentence on the settings read (secret values never shown)."""
    if not available(config):
        return "Configuration unavailable."
    total = sum(len(values) for values in config.values())
    hidden = sum(v is None for values in config.values() for v in values.values())
    return (f"{total} setting(s) from {len(config)} source(s); {hidden} come from "
            "a Secret or look secret, and their values are not shown.")
