"""LLM error rules on parsed API log lines (pure)."""

import pandas as pd
import pytest

from paracle_nb.diagnosis.llm import categorize, diagnose_llm, llm_errors


def _log(rows):
    base = {"ts": "2026-12-04T10:00:00Z", "level": "error", "logger": "paracle.llm",
            "msg": "llm call failed"}
    return pd.DataFrame([{**base, **r} for r in rows])


@pytest.mark.parametrize("status, error, category", [
    ("429", "Rate limit exceeded", "rate-limited"),
    ("401", "Incorrect API key provided", "invalid-key"),
    ("503", "Service unavailable", "outage"),
    (None, "read timed out after 60s", "outage"),
    ("400", "bad request", None),
])
def test_categorize(status, error, category):
    assert categorize(status, error) == category


def test_per_provider_counts_and_key_fingerprint():
    log = _log([{"provider": "openai", "status": "401", "error": "Incorrect API key"}]
               * 8 + [{"provider": "anthropic", "status": "429",
                       "error": "Rate limit exceeded"}] * 2
               + [{"provider": "openai", "status": "200", "error": None,
                   "level": "info", "logger": "paracle.api"}] * 5)
    errors = llm_errors(log)
    assert list(zip(errors["provider"], errors["category"], errors["count"],
                    strict=True)) == [("openai", "invalid-key", 8),
                                      ("anthropic", "rate-limited", 2)]
    keys = pd.DataFrame([{"secret": "paracle-secrets", "key": "OPENAI_API_KEY",
                          "present": True, "fingerprint": "ab12cd34", "length": 40,
                          "shape": "sk-… (40 chars)"}])
    [finding] = diagnose_llm(errors, keys, min_errors=5)
    assert finding.cause == "llm-invalid-key"
    assert finding.evidence["key_fingerprint"] == "ab12cd34"
    assert finding.evidence["failed_calls"] == 8


def test_no_failures_no_findings():
    assert diagnose_llm(llm_errors(_log([]))) == []
