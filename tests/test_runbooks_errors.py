"""api/500-errors, run by papermill, names each cause of its incident.

Every incident is real: the API stand-in raises in the API's own code (a
KeyError, an import of a package the image lacks, a ConfigMap value its
settings refuse), logs each failure with its Python traceback and answers
500, under a paced load that Prometheus scrapes.
"""


import pytest
from outputs import plans_html

from paracle_nb import run
from paracle_nb.sandbox import error_incidents
from paracle_nb.sandbox.lab import NAMESPACE

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

RUNBOOK = "api/500-errors"
WINDOW = error_incidents.WINDOW
OVERRIDES = {"window": WINDOW, "plot_window": "2m", "log_lines": 300}
CAUSES = {"unhandled-exception", "missing-dependency", "configuration-error",
          "high-error-rate"}


@pytest.fixture(scope="module")
def lab(live_lab):
    return live_lab


def _run(lab, tmp_path):
    result = run.run(RUNBOOK, lab.parameters_file, OVERRIDES,
                     artifacts=tmp_path / "artifacts")
    assert result.failed is None, result.failed
    return result




def _assert_artifact(result, lab):
    html = result.html.read_text()
    assert 'alt="api error rate"' in html and "data:image/png;base64" in html
    written = b"".join(p.read_bytes() for p in result.folder.iterdir())
    for secret in (lab.postgres.password("paracle_sre"),
                   lab.postgres.password("paracle"), lab.redis.password):
        assert secret.encode() not in written


def _only(result, cause):
    assert result.verdict.causes == [cause, "high-error-rate"], \
        result.verdict.to_dict()
    rate = result.verdict.finding("high-error-rate").evidence
    assert rate["ratio"] > rate["threshold"] == 0.01
    assert rate["explained_by"] == [cause]
    assert rate["errors_per_second"] > 0 and rate["window"] == WINDOW
    return result.verdict.finding(cause).evidence


def test_healthy_lab_has_no_500s(lab, tmp_path):
    with error_incidents.healthy_traffic(lab, window=WINDOW):
        result = _run(lab, tmp_path)

    assert not result.verdict.problem, result.verdict.to_dict()
    assert not {f.cause for f in result.verdict.findings} & CAUSES
    assert "No cause found that a plan would fix" in plans_html(result)
    _assert_artifact(result, lab)


def test_unhandled_exception_is_named(lab, tmp_path):
    with lab.incident("errors-unhandled-exception") as incident:
        result = _run(lab, tmp_path)

    assert incident.ratio > 0.05
    evidence = _only(result, "unhandled-exception")
    assert evidence["exception"] == "KeyError"
    assert evidence["where"] == incident.details["where"] == \
        "/app/paracle/agents/runner.py:18 in build_request"
    assert evidence["message"] == "'max_tokens'" and evidence["count"] > 0
    assert evidence["pods"].startswith("paracle-api-")
    plans = plans_html(result)
    assert "kubectl --context paracle-sandbox set image deployment/paracle-api " \
           "api=registry.example.invalid/paracle-api:v1.0.4" in plans
    _assert_artifact(result, lab)


def test_missing_dependency_is_named(lab, tmp_path):
    with lab.incident("errors-missing-dependency") as incident:
        result = _run(lab, tmp_path)

    evidence = _only(result, "missing-dependency")
    assert evidence["exception"] == "ModuleNotFoundError"
    assert evidence["module"] == incident.details["module"] == "anthropic"
    assert evidence["where"] == incident.details["where"] == \
        "/app/paracle/llm/providers.py:11 in anthropic_client"
    assert evidence["count"] > 0
    plans = plans_html(result)
    assert "docker build --tag registry.example.invalid/paracle-api:v1.0.4 ." \
        in plans
    assert "docker push registry.example.invalid/paracle-api:v1.0.4" in plans
    _assert_artifact(result, lab)


def test_configuration_error_is_traced_to_the_configmap_key(lab, tmp_path):
    with lab.incident("errors-config-error") as incident:
        result = _run(lab, tmp_path)

    evidence = _only(result, "configuration-error")
    assert evidence["exception"] == "paracle.config.ConfigError"
    assert evidence["message"] == \
        "LLM_TIMEOUT must be a number of seconds, got 'sixty'"
    assert (evidence["key"], evidence["value"], evidence["source"]) == \
        ("LLM_TIMEOUT", "sixty", "configmap/paracle-config")
    assert evidence["where"] == incident.details["where"]
    assert evidence["count"] > 0
    plans = plans_html(result)
    assert "kubectl --context paracle-sandbox patch configmap paracle-config" \
        in plans
    assert "LLM_TIMEOUT" in plans and "sixty" in plans and "&lt;a valid value&gt;" \
        in plans
    assert "rollout restart deployment/paracle-api" in plans
    _assert_artifact(result, lab)


def test_healing_restores_the_configmap(lab):
    with lab.incident("errors-config-error"):
        pass
    configmap = lab.kube.store.get("ConfigMap", NAMESPACE, "paracle-config")
    assert configmap["data"]["LLM_TIMEOUT"] == "60"
