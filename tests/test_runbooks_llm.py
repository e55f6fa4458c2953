"""llm/provider-errors, run by papermill, names each provider failure.

The lab's providers fail for real: 429s, 401s because the Secret holds a
key the provider revoked, 5xx for an outage. The API stand-in calls them
under a paced load and logs each failed call, as the API does.
"""

import base64

import pytest
from outputs import plans_html

from paracle_nb import run
from paracle_nb.sandbox import error_incidents
from paracle_nb.sandbox.lab import NAMESPACE
from paracle_nb.sandbox.llm_provider import STATUS_PATH
from paracle_nb.secrets import fingerprint

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

RUNBOOK = "llm/provider-errors"
OVERRIDES = {"log_lines": 300, "status_timeout": 2.0}
CAUSES = {"llm-rate-limited", "llm-invalid-key", "llm-provider-outage"}


def _run(lab, tmp_path, **overrides):
    result = run.run(RUNBOOK, lab.parameters_file, {**OVERRIDES, **overrides},
                     artifacts=tmp_path / "artifacts")
    assert result.failed is None, result.failed
    return result


def _status_urls(lab):
    return ",".join(f"{p.url}{STATUS_PATH}" for p in lab.live.providers.values())


def _secret_key(lab, name):
    secret = lab.kube.store.get("Secret", NAMESPACE, "paracle-secrets")
    return base64.b64decode(secret["data"][name]).decode()




def _written(result):
    return b"".join(p.read_bytes() for p in result.folder.iterdir())


def _assert_keys_not_written(result, lab, *keys):
    written = _written(result)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        assert _secret_key(lab, name).encode() not in written
    for key in keys:
        assert key.encode() not in written


def _only(result, cause, provider="openai"):
    assert result.verdict.causes == [cause], result.verdict.to_dict()
    evidence = result.verdict.finding(cause).evidence
    assert evidence["provider"] == provider and evidence["failed_calls"] >= 5
    assert evidence["healthy_providers"] == ["anthropic"]
    return evidence


def test_healthy_lab_has_no_provider_errors(lab, tmp_path):
    with error_incidents.healthy_traffic(lab):
        result = _run(lab, tmp_path)

    assert not result.verdict.problem, result.verdict.to_dict()
    assert not {f.cause for f in result.verdict.findings} & CAUSES
    assert "No status page URL given: not read" in result.html.read_text()
    assert "No cause found that a plan would fix" in plans_html(result)
    _assert_keys_not_written(result, lab)


def test_healthy_status_pages_are_read_when_given(lab, tmp_path):
    with error_incidents.healthy_traffic(lab):
        result = _run(lab, tmp_path, status_page_urls=_status_urls(lab))

    assert not result.verdict.problem, result.verdict.to_dict()
    shown = result.notebook.read_text()
    for provider in lab.live.providers.values():
        assert f"{provider.url}{STATUS_PATH}: none" in shown


def test_rate_limit_is_named(lab, tmp_path):
    with lab.incident("llm-rate-limited") as incident:
        result = _run(lab, tmp_path)

    evidence = _only(result, "llm-rate-limited", incident.details["provider"])
    assert evidence["example_error"] == "Rate limit exceeded"
    plans = plans_html(result)
    assert "set env deployment/paracle-api -c api LLM_RATE_LIMIT=50 " \
           "DEFAULT_LLM_PROVIDER=anthropic FALLBACK_PROVIDERS=anthropic,openai" \
        in plans
    _assert_keys_not_written(result, lab)


def test_invalid_key_is_named_by_fingerprint(lab, tmp_path):
    with lab.incident("llm-invalid-key") as incident:
        revoked = _secret_key(lab, "OPENAI_API_KEY")
        current = lab.live.providers["openai"].api_key
        result = _run(lab, tmp_path)

    evidence = _only(result, "llm-invalid-key")
    assert evidence["example_error"] == "Invalid API key"
    assert evidence["secret_key"] == "OPENAI_API_KEY" and evidence["key_present"]
    assert evidence["key_fingerprint"] == fingerprint(revoked) == \
        incident.details["key_fingerprint"]
    assert evidence["key_shape"] == f"sk-… ({len(revoked)} chars)"
    plans = plans_html(result)
    assert "read -rsp" in plans and "--patch-file=" in plans
    assert "rollout restart deployment/paracle-api" in plans
    assert f"sha256:{fingerprint(revoked)}" in plans
    assert incident.details["current_key_fingerprint"] == fingerprint(current)
    assert lab.live.providers["openai"].api_key is None  # healed
    # Neither the revoked key nor the provider's current one is in any byte.
    _assert_keys_not_written(result, lab, revoked, current)


def test_outage_is_named_with_the_status_page(lab, tmp_path):
    with lab.incident("llm-outage") as incident:
        result = _run(lab, tmp_path, status_page_urls=_status_urls(lab))

    evidence = _only(result, "llm-provider-outage", incident.details["provider"])
    assert evidence["example_error"] in ("Service unavailable", "Bad gateway")
    indicators = {p["url"]: p["indicator"] for p in evidence["status_pages"]}
    assert indicators[f"{lab.live.providers['openai'].url}{STATUS_PATH}"] == "major"
    assert indicators[f"{lab.live.providers['anthropic'].url}{STATUS_PATH}"] == "none"
    plans = plans_html(result)
    assert "DEFAULT_LLM_PROVIDER=anthropic FALLBACK_PROVIDERS=anthropic,openai" \
        in plans
    assert "LLM_RATE_LIMIT" not in plans
    _assert_keys_not_written(result, lab)


def test_unreachable_status_page_is_noted_not_an_error(lab, tmp_path):
    from paracle_nb.sandbox import procs

    url = f"http://127.0.0.1:{procs.free_port()}{STATUS_PATH}"
    result = _run(lab, tmp_path, status_page_urls=url)

    assert not result.verdict.problem, result.verdict.to_dict()
    assert f"{url}: not reachable" in result.notebook.read_text()
