"""The lab's live half: LLM providers, the API stand-in, load, Prometheus.

All real: the stand-in talks to the lab's Postgres and Redis and to the
fake providers over loopback, Prometheus is the machine's binary, and the
live path runs service -> scrape -> query -> plot.
"""

from __future__ import annotations

import http.client
import json
import os
import time

import pytest

from paracle_nb import latency, logs, plots, prometheus
from paracle_nb.errors import (
    MissingServerBinary,
    ParameterError,
    SandboxError,
    TargetUnreachable,
)
from paracle_nb.prometheus import QueryRejected
from paracle_nb.sandbox import latency_incidents, procs
from paracle_nb.sandbox.api_service import ApiConfig, ApiService
from paracle_nb.sandbox.load import Load, run_load
from paracle_nb.sandbox.metric_history import ApiMetricHistory
from paracle_nb.sandbox.postgres import APP_ROLE
from paracle_nb.sandbox.prometheus import PrometheusServer, prometheus_binary
from paracle_nb.target import Target

pytestmark = pytest.mark.servers

WINDOW = "8s"


@pytest.fixture(scope="module")
def target(lab):
    return Target.resolve(parameters_file=str(lab.parameters_file))


@pytest.fixture()
def prometheus_installed():
    """Skip without Prometheus (as conftest does for other servers); fail in CI."""
    try:
        prometheus_binary("prometheus")
        prometheus_binary("promtool")
    except MissingServerBinary as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


def _post(url: str, path: str = "/v1/agents/run", body: dict | None = None,
          timeout: float = 10.0) -> tuple[int, dict, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body or {}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(
            response.read() or b"{}")
    finally:
        conn.close()


def _get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_lab_parameters_name_the_api_and_prometheus(lab, target,
                                                   prometheus_installed):
    assert target.api_url == lab.live.api.url
    assert target.prometheus_url == lab.live.prometheus.url
    for url in (target.api_url, target.prometheus_url):
        assert url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("mode, status, message", [
    ("rate-limited", 429, "Rate limit exceeded"),
    ("invalid-key", 401, "Invalid API key"),
    ("outage", 503, "Service unavailable"),
])
def test_provider_modes_answer_as_the_provider_would(lab, mode, status, message):
    provider = lab.live.providers["anthropic"]
    provider.set_mode(mode)
    try:
        got, headers, body = _post(provider.url, "/v1/messages")
        following, _, _ = _post(provider.url, "/v1/messages")
    finally:
        provider.set_mode("ok")
    assert got == status and body["error"]["message"] == message
    if mode == "rate-limited":
        assert headers["Retry-After"] == "20"
    if mode == "outage":
        assert {got, following} == {502, 503}


def test_provider_refuses_an_unknown_mode(lab):
    with pytest.raises(SandboxError, match="unknown LLM provider mode"):
        lab.live.providers["openai"].set_mode("flaky")


def test_run_request_reads_cache_database_and_llm(lab, target):
    status, _, body = _post(lab.live.api.url, body={"agent_id": 8})
    assert status == 200 and body["agent_id"] == 8
    assert body["provider"] == "anthropic"  # every fourth agent is pinned

    client = lab.redis.client()
    try:
        assert client.ttl("cache:agent:8") > 0
    finally:
        client.close()
    status, body_bytes = _get(lab.live.api.url, "/health")
    assert status == 200
    assert json.loads(body_bytes)["checks"] == {"postgres": "ok", "redis": "ok"}


def test_log_lines_reach_the_api_pods(lab, target):
    request_ids = [_post(lab.live.api.url, body={"agent_id": 7})[2]["request_id"]
                   for _ in range(3)]
    log = logs.api_log(target, tail_lines=50)
    mine = log[log["request_id"].isin(request_ids)]
    assert len(mine) == 3
    # Spread over the scenario's API pods, as a Service spreads requests.
    assert {"paracle-api-7c9f8d6b5-x2v7k", "paracle-api-7c9f8d6b5-m4q9t",
            "paracle-api-7c9f8d6b5-hz8rw"} == set(mine["pod"])
    assert set(mine["msg"]) == {"request finished"}
    assert set(mine["path"]) == {"/v1/agents/run"}
    assert set(mine["llm_provider"]) == {"openai"}
    assert (mine["llm_duration"] > 0.15).all()  # healthy provider: 200 ms


def test_llm_failures_are_logged_per_provider(lab, target):
    provider = lab.live.providers["openai"]
    provider.set_mode("rate-limited")
    try:
        status, _, body = _post(lab.live.api.url, body={"agent_id": 7})
    finally:
        provider.set_mode("ok")
    assert status == 503 and "Rate limit exceeded" in body["error"]
    failed = [line for line in lab.live.api.recent_lines
              if 'msg="llm call failed"' in line][-1]
    fields = logs.parse_logfmt(failed)
    assert (fields["provider"], fields["status"], fields["retry_after"]) == (
        "openai", "429", "20")


def test_raising_handler_logs_a_traceback(lab):
    lab.live.api.raise_in_requests(lambda: {}["DEFAULT_LLM_PROVIDER"])
    try:
        status, _, _ = _post(lab.live.api.url)
    finally:
        lab.live.api.raise_in_requests(None)
    assert status == 500
    lines = list(lab.live.api.recent_lines)
    start = max(i for i, line in enumerate(lines) if line.startswith("Traceback"))
    assert "unhandled exception" in lines[start - 1]
    assert lines[start + 1].lstrip().startswith('File "')
    assert "KeyError: 'DEFAULT_LLM_PROVIDER'" in lines[start:]


def test_metrics_expose_the_histogram_past_one_second(lab):
    _post(lab.live.api.url)
    status, text = _get(lab.live.api.url, "/metrics")
    assert status == 200
    body = text.decode()
    assert 'http_request_duration_seconds_bucket{handler="/v1/agents/run",' in body
    assert 'le="2.5"' in body and 'le="10.0"' in body
    for name in ("http_requests_total", "http_requests_in_flight",
                 "llm_request_duration_seconds_bucket"):
        assert name in body


def test_the_worker_pool_queues_requests(lab):
    """Two workers, provider answering in 200 ms: eight at once wait in turn."""
    api = ApiService(lambda: lab.postgres.connect(APP_ROLE, "paracle-api-test"),
                     lab.redis.client(client_name="paracle-api-test"),
                     {n: p.url for n, p in lab.live.providers.items()},
                     config=ApiConfig(workers=2)).start()
    try:
        result = run_load(api.url, requests=16, concurrency=8, seconds=20)
    finally:
        api.stop()
    assert result.ok == 16
    # 16 requests of ~0.2 s through 2 workers take ~1.6 s; each waits for 3
    # others ahead of it on average.
    assert result.elapsed >= 1.5
    assert result.quantile(0.5) >= 0.6


def test_statement_times_sample_the_api_statements(lab, target):
    with lab.live.load(requests=1000, concurrency=2, seconds=10):
        statements = latency.statement_times(target, "paracle", "1s")
    assert not statements["query"].duplicated().any()
    assert set(statements["role"]) == {"paracle"}
    by_text = statements.set_index("query")
    agent = by_text.loc["SELECT id, name, owner FROM agents WHERE id = $1"]
    assert agent["sample_calls"] > 0 and agent["sample_mean_ms"] < 100
    assert agent["calls"] >= agent["sample_calls"]


def test_worker_capacity_is_replicas_times_workers(target):
    capacity = latency.worker_capacity(target, "paracle-api", "api")
    # The healthy scenario: 3 ready replicas, WORKERS=4 from the ConfigMap.
    assert (capacity["ready_replicas"], capacity["workers_per_pod"],
            capacity["workers"]) == (3, 4, 12)


def test_load_is_bounded_and_loopback_only(lab):
    with pytest.raises(SandboxError, match="loopback only"):
        Load("http://10.0.0.1:8000")
    with pytest.raises(SandboxError, match="out of bounds"):
        Load(lab.live.api.url, concurrency=10_000)
    by_count = run_load(lab.live.api.url, requests=6, concurrency=3, seconds=30)
    assert by_count.sent == 6
    started = time.monotonic()
    by_time = run_load(lab.live.api.url, requests=100_000, concurrency=2,
                       seconds=1.0)
    assert by_time.sent < 100_000 and time.monotonic() - started < 3.0


def test_live_path_service_scrape_query_plot(lab, target, prometheus_installed):
    """Traffic through the stand-in, scraped by Prometheus, read back, drawn."""
    with latency_incidents.healthy_traffic(lab, window=WINDOW):
        up = prometheus.query(target, 'up{job="paracle-api"}')
        current = latency.current_latency(target, WINDOW)
        history = latency.latency_over_time(target, WINDOW, lookback="1m")

    assert list(up["value"]) == [1.0]
    assert up["instance"].iloc[0] == lab.live.api.url.removeprefix("http://")
    assert 200 < current["p95_ms"] < 1000  # 200 ms provider, histogram buckets
    assert current["requests_per_second"] > 5
    p95 = history[history["series"] == "p95"].dropna()
    assert len(p95) >= 3 and (p95["value"] < 1.0).all()

    plot = plots.latency_plot(history, 1.0, "API latency")
    bundle = plot._repr_mimebundle_()
    assert bundle["image/png"] and 'alt="api latency"' in bundle["text/html"]
    axes = plot.figure.axes[0]
    assert axes.get_ylabel() == "seconds" and axes.get_title() == "API latency"
    assert any(line.get_label() == "threshold (1 s)" for line in axes.get_lines())


def test_recorded_history_answers_range_queries_at_once(tmp_path,
                                                        prometheus_installed):
    """promtool blocks: 15 healthy minutes, then 5 minutes at 2 s."""
    now = time.time()
    start = now - 20 * 60
    history = ApiMetricHistory()
    history.steady(start, start + 15 * 60, latency=0.2, rps=20)
    history.steady(start + 15 * 60, now, latency=2.0, rps=20)

    with PrometheusServer(history=history.openmetrics(), base_dir=tmp_path) as prom:
        port = prom.port
        target = Target(prometheus_url=prom.url)
        query = latency.quantile_query("5m")
        before = prometheus.value(target, query, at=start + 14 * 60)
        after = prometheus.value(target, query, at=now - 1)
        series = prometheus.query_range(target, query, start + 5 * 60, now, 60)

        with pytest.raises(QueryRejected, match="parse error"):
            prometheus.query(target, "rate(http_requests_total[5m)")
    assert 0.2 < before < 0.25 and 2.0 < after < 2.5
    assert len(series) >= 14 and series["value"].iloc[0] < 1.0 < \
        series["value"].iloc[-1]
    assert not procs.port_accepts(port)


def test_prometheus_errors_are_paracle_errors():
    closed = procs.free_port()
    with pytest.raises(TargetUnreachable, match="unreachable"):
        prometheus.query(Target(prometheus_url=f"http://127.0.0.1:{closed}",
                                timeout_seconds=1.0), "up")
    with pytest.raises(ParameterError, match="prometheus_url"):
        prometheus.query(Target(), "up")


def test_missing_prometheus_binary_names_the_package():
    with pytest.raises(MissingServerBinary, match="apt-get install prometheus"):
        prometheus_binary("prometheus-not-installed-here")


def test_prometheus_scrapes_loopback_only():
    with pytest.raises(SandboxError, match="loopback only"):
        PrometheusServer({"paracle-api": ["10.0.0.1:8000"]})
