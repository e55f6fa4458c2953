"""500-error rules on traceback groups and configuration (pure)."""

import pandas as pd

from paracle_nb.diagnosis.errors import (
    configuration_sources,
    diagnose_errors,
    error_ratio,
)


def _groups(*rows):
    return pd.DataFrame([{"exception": e, "where": w, "count": n,
                          "sources": "pod-a", "example_message": m}
                         for e, w, n, m in rows])


CONFIG = {"configmap/paracle-config": {"LLM_TIMEOUT": "sixty", "CACHE_TTL": "3600"},
          "deployment/paracle-api env": {"LOG_LEVEL": "info", "OPENAI_API_KEY": None}}


def test_import_error_is_a_missing_dependency():
    [finding] = diagnose_errors(None, _groups(
        ("ModuleNotFoundError", "/app/paracle/llm/anthropic.py:3 in <module>", 12,
         "No module named 'anthropic'")), CONFIG)
    assert finding.cause == "missing-dependency"
    assert finding.evidence["module"] == "anthropic"


def test_config_error_is_traced_to_the_configmap_key():
    [finding] = diagnose_errors(None, _groups(
        ("paracle.config.ConfigError", "/app/paracle/config.py:33 in llm_timeout",
         7, "LLM_TIMEOUT must be a number of seconds, got 'sixty'")), CONFIG)
    assert finding.cause == "configuration-error"
    assert finding.evidence["key"] == "LLM_TIMEOUT"
    assert finding.evidence["source"] == "configmap/paracle-config"
    assert finding.evidence["value"] == "sixty"


def test_secret_backed_setting_is_named_without_value():
    [finding] = diagnose_errors(None, _groups(
        ("KeyError", "/app/paracle/settings.py:10 in load", 1,
         "OPENAI_API_KEY is required")), CONFIG)
    assert finding.cause == "configuration-error"
    assert "value" not in finding.evidence


def test_other_exceptions_are_unhandled_and_rate_is_reported():
    rate = error_ratio(2.0, 10.0)
    findings = diagnose_errors(rate, _groups(
        ("KeyError", "/app/paracle/executor.py:142 in run", 30, "'max_tokens'")),
        CONFIG)
    assert [f.cause for f in findings] == ["unhandled-exception", "high-error-rate"]
    rate_finding = findings[1]
    assert rate_finding.evidence["ratio"] == 0.2
    assert rate_finding.severity.value == "warning"
    assert rate_finding.evidence["explained_by"] == ["unhandled-exception"]


def test_unexplained_error_rate_is_critical():
    [finding] = diagnose_errors(error_ratio(2.0, 10.0), _groups(), CONFIG)
    assert finding.cause == "high-error-rate" and finding.severity.value == "critical"


def test_no_errors_no_findings():
    assert diagnose_errors(error_ratio(0.0, 5.0), _groups(), CONFIG) == []


def test_configuration_sources_hide_secret_values():
    deployment = {"metadata": {"name": "paracle-api"}, "spec": {"template": {"spec": {
        "containers": [{"name": "api", "env": [
            {"name": "LOG_LEVEL", "value": "info"},
            {"name": "DB_PASSWORD", "value": "hunter2"},
            {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {}}}]}]}}}}
    sources = configuration_sources(
        [{"metadata": {"name": "paracle-config"}, "data": {"A_B": "1"}}],
        deployment, "api")
    env = sources["deployment/paracle-api env"]
    assert env == {"LOG_LEVEL": "info", "DB_PASSWORD": None, "OPENAI_API_KEY": None}
    assert sources["configmap/paracle-config"] == {"A_B": "1"}


def test_high_error_rate_evidence_names_the_threshold():
    [finding] = diagnose_errors(error_ratio(1.0, 4.0), _groups(), CONFIG,
                                max_error_rate=0.05)
    assert finding.cause == "high-error-rate"
    assert finding.evidence["threshold"] == 0.05


def test_import_errors_name_the_module():
    from paracle_nb.diagnosis.errors import describe_import_errors, import_errors

    groups = _groups(
        ("ModuleNotFoundError", "/app/paracle/llm/providers.py:11 in anthropic_client",
         4, "No module named 'anthropic'"),
        ("KeyError", "/app/paracle/agents/runner.py:18 in build_request", 9,
         "'max_tokens'"))
    found = import_errors(groups)
    assert list(found["module"]) == ["anthropic"]
    assert "lacks anthropic" in describe_import_errors(found)
    assert import_errors(_groups()).empty


def test_describe_error_rate():
    from paracle_nb.diagnosis.errors import describe_error_rate

    assert "above the 1% threshold" in describe_error_rate(error_ratio(1.0, 4.0))
    assert "No requests" in describe_error_rate({**error_ratio(0.0, None),
                                                 "window": "5m"})
