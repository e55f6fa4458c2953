"""triage, run by papermill, puts the right runbook first for each incident.

One lab for the module: real Postgres, Redis and Prometheus, the API
stand-in scraped by it, our Kubernetes API. The tests run in file order:
the healthy lab first, the latency incident (whose slow requests stay in
Prometheus's window) near the end.
"""

import json
import os
import time

import pytest

from paracle_nb import prometheus, run
from paracle_nb.diagnosis.triage import ESCALATION, next_runbooks
from paracle_nb.sandbox import latency_incidents, procs
from paracle_nb.sandbox.lab import Lab
from paracle_nb.target import Target

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

RUNBOOK = "triage"
WINDOW = "8s"
UP = 'up{job="paracle-api"}'


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        if lab.live.prometheus is None:
            # As the latency runbook's tests do: skip here, fail in CI.
            if os.environ.get("CI"):
                pytest.fail(lab.live.prometheus_missing)
            pytest.skip(lab.live.prometheus_missing)
        _wait_for_up(lab, 1.0)
        yield lab


def _wait_for_up(lab, expected, timeout=30.0):
    """Wait until Prometheus's last scrape of the API stand-in says ``expected``."""
    target = Target(prometheus_url=lab.live.prometheus.url, timeout_seconds=2.0)
    deadline = time.monotonic() + timeout
    while (seen := prometheus.value(target, UP)) != expected:
        assert time.monotonic() < deadline, f"up stayed {seen}, not {expected}"
        time.sleep(0.5)


def _run(lab, tmp_path, **overrides):
    result = run.run(RUNBOOK, lab.parameters_file, {"window": WINDOW, **overrides},
                     artifacts=tmp_path / "artifacts")
    assert result.failed is None, result.failed
    notebook = json.loads(result.notebook.read_text())
    assert notebook["metadata"]["paracle"]["verdict"] == result.verdict.to_dict()
    written = b"".join(p.read_bytes() for p in result.folder.iterdir())
    for secret in (lab.postgres.password("paracle_sre"),
                   lab.postgres.password("paracle"), lab.redis.password):
        assert secret.encode() not in written
    return result


def _next(result):
    """Return the runbooks to open next, as the recorded verdict says."""
    return next_runbooks(result.verdict.findings)


def _evidence(result, cause):
    return result.verdict.finding(cause).evidence


def _last_cell_html(result):
    notebook = json.loads(result.notebook.read_text())
    return "".join("".join(o.get("data", {}).get("text/html", ""))
                   + "".join(o.get("data", {}).get("text/markdown", ""))
                   for o in notebook["cells"][-1]["outputs"])


def test_healthy_lab_has_no_problem(lab, tmp_path):
    with latency_incidents.healthy_traffic(lab, window=WINDOW):
        result = _run(lab, tmp_path)

    assert not result.verdict.problem, result.verdict.to_dict()
    assert result.verdict.headline() == "triage: no problem found"
    assert _next(result) == []
    assert "Nothing needs a runbook" in _last_cell_html(result)
    html = result.html.read_text()
    # Every pod of the namespace, the API's three first.
    assert html.index("paracle-api-7c9f8d6b5") < html.index("postgres-0")
    assert "All 1 scrape target(s) of the API are up." in html
    assert "below the 1 s line" in html


def test_crashloop_oom_opens_pods_crashing_first(lab, tmp_path):
    with lab.incident("crashloop-oom"):
        result = _run(lab, tmp_path)

    assert _next(result) == ["api/pods-crashing"]
    assert result.verdict.causes == ["pods-crashloopbackoff"]
    evidence = _evidence(result, "pods-crashloopbackoff")
    assert evidence["pods"] == 3
    assert all(p.startswith("paracle-api-") for p in evidence["pod_names"])
    cell = _last_cell_html(result)
    assert "paracle-nb run api/pods-crashing -p environment sandbox" in cell


def test_pending_pods_open_pods_not_scheduling(lab, tmp_path):
    with lab.incident("pending-insufficient-cpu"):
        result = _run(lab, tmp_path)

    assert _next(result) == ["kubernetes/pods-not-scheduling"]
    assert result.verdict.causes == ["pods-pending"]
    assert _evidence(result, "pods-pending")["pods"] == 3


def test_api_not_answering_opens_service_not_accessible(lab, tmp_path):
    closed = f"http://{procs.LOOPBACK}:{procs.free_port()}"
    result = _run(lab, tmp_path, api_url=closed)

    assert _next(result) == ["kubernetes/service-not-accessible"]
    assert result.verdict.causes == ["api-unreachable"]
    evidence = _evidence(result, "api-unreachable")
    assert evidence["url"] == f"{closed}/health"
    assert "unreachable" in evidence["error"]


def test_api_down_and_unscraped_opens_service_not_accessible(lab, tmp_path):
    api = lab.live.api
    api.stop()
    try:
        _wait_for_up(lab, 0.0)
        result = _run(lab, tmp_path)
    finally:
        api.start()
        _wait_for_up(lab, 1.0)

    assert _next(result) == ["kubernetes/service-not-accessible"]
    assert result.verdict.causes == ["api-unreachable", "scrape-target-down"]
    evidence = _evidence(result, "scrape-target-down")
    assert (evidence["targets"], evidence["down"]) == (1, 1)
    assert evidence["down_instances"] == [f"{api.host}:{api.port}"]


def test_pool_exhausted_opens_the_pool_runbook_from_health_and_logs(lab, tmp_path):
    # A restarted API holds no session: it must ask Postgres for new ones.
    lab.live.api.stop()
    lab.live.api.start()
    _wait_for_up(lab, 1.0)
    try:
        with lab.incident("pool-exhausted") as held:
            sent = lab.live.load(requests=6, concurrency=2, seconds=10,
                                 timeout=5).start().wait()
            result = _run(lab, tmp_path)
    finally:
        lab.load_scenario("healthy")  # the refused requests' log lines go

    assert "remaining connection slots" in held.refusal
    assert sent.statuses == {500: 6}
    assert _next(result) == ["database/connection-pool-exhausted"]
    assert result.verdict.causes == ["api-unhealthy", "log-connection-pool-exhausted",
                                     "postgres-slots-full"]
    slots = _evidence(result, "postgres-slots-full")
    assert slots["client_backends"] >= slots["usable"] == 37
    health = _evidence(result, "api-unhealthy")
    assert health["status"] == 503
    assert "remaining connection slots" in health["body"]
    log = _evidence(result, "log-connection-pool-exhausted")
    # Each refused request logs its unhandled exception once.
    assert log["log_lines"] == 6
    assert "remaining connection slots" in log["example"]


def test_high_latency_opens_the_latency_runbook(lab, tmp_path):
    with lab.incident("latency-concurrency", window=WINDOW) as incident:
        result = _run(lab, tmp_path)

    assert incident.p95_s > 1.0
    assert _next(result) == ["api/high-latency"]
    assert result.verdict.causes == ["high-latency"]
    evidence = _evidence(result, "high-latency")
    assert evidence["p95_s"] > 1.0 and evidence["threshold_s"] == 1.0


def test_a_step_that_cannot_run_asks_for_the_bundle(lab, tmp_path):
    closed = f"http://{procs.LOOPBACK}:{procs.free_port()}"
    result = _run(lab, tmp_path, prometheus_url=closed)

    assert _next(result) == [ESCALATION]
    assert result.verdict.causes[0] == "escalate"
    assert _evidence(result, "escalate")["steps_not_run"] == [
        "Metrics", "p95 latency", "5xx share"]


@pytest.mark.parametrize("incident", ["redis-max-clients",
                                      "redis-max-clients-full"])
def test_redis_at_maxclients_behind_a_healthy_api_opens_the_redis_runbook(
        lab, tmp_path, incident):
    with lab.incident(incident):
        result = _run(lab, tmp_path)

    assert "redis/connection-timeout" in _next(result)
    # The one slot left free may be taken by the API's own pool first.
    assert {"redis-clients-near-limit", "redis-refusing"} & set(
        result.verdict.causes), result.verdict.causes
