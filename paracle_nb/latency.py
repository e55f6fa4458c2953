"""Where an API request's time goes: the evidence of the latency runbook.

The request histogram in Prometheus says how slow the API is; Postgres
statement times, Redis round trips, LLM call durations (see
:mod:`paracle_nb.logs`) and the number of requests in flight against the
workers say why. Every function here only reads.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from typing import TYPE_CHECKING, Any

from paracle_nb import kube, postgres, prometheus
from paracle_nb.errors import KubernetesError
from paracle_nb.redis import _guard
from paracle_nb.target import Target
from paracle_nb.units import parse_duration

if TYPE_CHECKING:
    import pandas as pd
    import redis

log = logging.getLogger(__name__)

DURATION_BUCKETS = "http_request_duration_seconds_bucket"


def quantile_query(window: str, job: str = "paracle-api", q: float = 0.95) -> str:
    """Return the PromQL of the API's latency quantile over ``window``.

    The guide's query, summed by ``le`` so every handler, status and pod
    count together: ``histogram_quantile(0.95, sum by (le) (rate(
    http_request_duration_seconds_bucket{job="paracle-api"}[5m])))``.
    """
    rate = f'rate({DURATION_BUCKETS}{{job="{job}"}}[{_promql_duration(window)}])'
    return f"histogram_quantile({q:g}, sum by (le) ({rate}))"


def request_rate_query(window: str, job: str = "paracle-api") -> str:
    """Return the PromQL of the API's requests per second over ``window``."""
    return (f'sum(rate(http_requests_total{{job="{job}"}}'
            f"[{_promql_duration(window)}]))")


def current_latency(target: Target, window: str = "5m",
                    job: str = "paracle-api") -> dict[str, Any]:
    """Return p95 and p50 latency (milliseconds) and requests per second, now.

    Latencies are None when no request came in the window.
    """
    p95 = prometheus.value(target, quantile_query(window, job))
    p50 = prometheus.value(target, quantile_query(window, job, 0.5))
    rate = prometheus.value(target, request_rate_query(window, job))
    return {"p95_ms": _milliseconds(p95), "p50_ms": _milliseconds(p50),
            "requests_per_second": _rounded(rate, 2), "window": window,
            "query": quantile_query(window, job)}


def latency_over_time(target: Target, window: str = "5m", job: str = "paracle-api",
                      lookback: str = "30m", points: int = 120) -> pd.DataFrame:
    """Return p95 and p50 over the last ``lookback``, long form (series, time,
    value), for :func:`paracle_nb.plots.latency_plot`."""
    import pandas as pd

    end = time.time()
    span = parse_duration(lookback)
    step = max(1.0, round(span / points))
    frames = []
    for name, q in (("p95", 0.95), ("p50", 0.5)):
        frame = prometheus.query_range(target, quantile_query(window, job, q),
                                       end - span, end, step)
        frames.append(frame.assign(series=name)[["series", "time", "value"]])
    return pd.concat(frames, ignore_index=True)


def concurrency(target: Target, window: str = "5m", job: str = "paracle-api"
                ) -> dict[str, Any]:
    """Return the most requests in flight over ``window``, and the request rate."""
    span = _promql_duration(window)
    peak = prometheus.value(
        target, f'sum(max_over_time(http_requests_in_flight{{job="{job}"}}[{span}]))')
    mean = prometheus.value(
        target, f'sum(avg_over_time(http_requests_in_flight{{job="{job}"}}[{span}]))')
    rate = prometheus.value(target, request_rate_query(window, job))
    return {"max_in_flight": _rounded(peak, 1), "mean_in_flight": _rounded(mean, 1),
            "requests_per_second": _rounded(rate, 2), "window": window}


def worker_capacity(target: Target, deployment: str = "paracle-api",
                    container: str = "api") -> dict[str, Any]:
    """Return how many requests the API serves at once: replicas x WORKERS.

    WORKERS is read from the container's env, else from the ConfigMaps it
    takes its env from; without it the capacity is unknown (None).
    """
    spec = kube.get_deployment(target, deployment)
    replicas = int(spec.get("status", {}).get("readyReplicas")
                   or spec["spec"].get("replicas") or 0)
    containers = spec["spec"]["template"]["spec"]["containers"]
    main = next((c for c in containers if c["name"] == container), containers[0])
    workers = _env_value(target, main, "WORKERS")
    per_pod = int(workers) if workers and str(workers).isdigit() else None
    return {"deployment": deployment, "ready_replicas": replicas,
            "workers_per_pod": per_pod,
            "workers": replicas * per_pod if per_pod is not None else None}


def _env_value(target: Target, container: dict[str, Any], name: str) -> str | None:
    for entry in container.get("env", []):
        if entry["name"] == name and "value" in entry:
            return str(entry["value"])
    for source in container.get("envFrom", []):
        config_map = source.get("configMapRef", {}).get("name")
        if not config_map:
            continue
        try:
            body = kube.get_config_map(target, config_map)
        except KubernetesError:
            continue
        data = body.get("data") or {}
        if name in data:
            return str(data[name])
    return None


_STATEMENTS = """
    SELECT s.userid, s.dbid, s.queryid, r.rolname AS role,
           left(regexp_replace(s.query, '\\s+', ' ', 'g'), 500) AS query,
           s.calls, s.total_exec_time, s.mean_exec_time, s.rows
      FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
     WHERE r.rolname = %s AND s.dbid = (SELECT oid FROM pg_database
                                         WHERE datname = current_database())
"""


def statement_times(target: Target, role: str = "paracle", sample: str = "5s"
                    ) -> pd.DataFrame:
    """Return the app's statements: all-time mean and calls, and the same over
    a ``sample`` taken now (two reads of ``pg_stat_statements``).

    Sorted by the sample's mean time, slowest first; statements that did not
    run during the sample come last, by their all-time mean.
    """
    import pandas as pd

    seconds = parse_duration(sample)
    with postgres.connect(target) as conn:
        before = postgres._query(conn, _STATEMENTS, [role])
        time.sleep(seconds)
        after = postgres._query(conn, _STATEMENTS, [role])

    # One line per statement text: the same text can have several query ids
    # (a parameter bound as int2 once and int8 another time).
    earlier = {(r["userid"], r["dbid"], r["queryid"]): r for r in before}
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for row in after:
        old = earlier.get((row["userid"], row["dbid"], row["queryid"]))
        entry = totals.setdefault((row["role"], row["query"]), dict.fromkeys(
            ("calls", "time", "sample_calls", "sample_time"), 0.0))
        entry["calls"] += row["calls"]
        entry["time"] += row["total_exec_time"]
        entry["sample_calls"] += row["calls"] - (old["calls"] if old else 0)
        entry["sample_time"] += row["total_exec_time"] - (
            old["total_exec_time"] if old else 0.0)
    rows = []
    for (role, query), entry in totals.items():
        calls, sampled = entry["calls"], entry["sample_calls"]
        rows.append({
            "query": query, "role": role, "calls": int(calls),
            "mean_exec_time_ms": round(entry["time"] / calls, 2) if calls else 0.0,
            "sample_calls": int(sampled),
            "sample_mean_ms": round(entry["sample_time"] / sampled, 2)
            if sampled > 0 else None,
            "sample_seconds": seconds,
        })
    columns = ["query", "role", "calls", "mean_exec_time_ms", "sample_calls",
               "sample_mean_ms", "sample_seconds"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["sample_mean_ms", "mean_exec_time_ms"],
                             ascending=False, na_position="last", ignore_index=True)


def redis_round_trips(target: Target, client: redis.Redis, samples: int = 10,
                      pause: float = 0.05) -> dict[str, Any]:
    """Return PING round trips in milliseconds (the guide's ``--latency``)."""
    trips = []
    for _ in range(max(1, samples)):
        started = time.perf_counter()
        _guard(target, "PING", client.ping)
        trips.append((time.perf_counter() - started) * 1000)
        time.sleep(pause)
    return {"samples": len(trips), "min_ms": round(min(trips), 2),
            "median_ms": round(statistics.median(trips), 2),
            "max_ms": round(max(trips), 2)}


def _promql_duration(window: str) -> str:
    return prometheus.duration(parse_duration(window))


def _rounded(number: float, digits: int = 3) -> float | None:
    return None if number != number else round(number, digits)


def _milliseconds(seconds: float) -> int | None:
    if seconds != seconds:
        return None
    return round(seconds * 1000) if math.isfinite(seconds) else None
