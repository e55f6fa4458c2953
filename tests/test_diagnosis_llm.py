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


def _calls_log():
    from paracle_nb.logs import log_frame

    lines = [
        'ts=2026-12-04T10:00:00.000Z level=error logger=paracle.llm '
        'msg="llm call failed" provider=openai status=429 '
        'error="Rate limit exceeded"',
        'ts=2026-12-04T10:00:00.001Z level=error logger=paracle.api '
        'msg="request finished" status=503 llm_provider=openai',
        'ts=2026-12-04T10:00:01.000Z level=info logger=paracle.api '
        'msg="request finished" status=200 llm_provider=anthropic',
        'ts=2026-12-04T10:00:02.000Z level=info logger=paracle.api '
        'msg="request finished" status=200 llm_provider=openai',
    ]
    return log_frame(lines, pod="paracle-api-a")


def test_provider_calls_and_healthy_providers():
    from paracle_nb.diagnosis.llm import healthy_providers, provider_calls

    calls = provider_calls(_calls_log())
    assert calls.to_dict("records") == [
        {"provider": "anthropic", "calls": 1, "answered": 1, "failed": 0},
        {"provider": "openai", "calls": 2, "answered": 1, "failed": 1}]
    assert healthy_providers(calls) == ["anthropic"]
    assert healthy_providers(provider_calls(_calls_log().iloc[0:0])) == []


def test_healthy_providers_exclude_the_failing_one_in_evidence():
    errors = llm_errors(_calls_log())
    [finding] = diagnose_llm(errors, min_errors=1,
                             healthy=["anthropic", "openai"])
    assert finding.cause == "llm-rate-limited"
    assert finding.evidence["healthy_providers"] == ["anthropic"]


def test_describe_pages_says_absence_is_not_an_error():
    from paracle_nb.diagnosis.llm import describe_pages

    empty = pd.DataFrame(columns=["url", "reachable", "indicator", "description"])
    assert "not an error" in describe_pages(empty)


def test_split_list():
    from paracle_nb.llm import split_list

    assert split_list(" a, b,,") == ("a", "b")
    assert split_list("") == ()
