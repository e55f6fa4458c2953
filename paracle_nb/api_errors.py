"""Read helpers for 500 errors: the 5xx rate, error lines, tracebacks, config.

The rate comes from Prometheus's ``http_requests_total``; the error lines
and tracebacks from the API pods' logs (see :func:`paracle_nb.logs.api_log`);
the configuration from the ``paracle-config`` ConfigMap and the deployment's
env, values shown only where they are not secret.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from typing import TYPE_CHECKING, Any

from paracle_nb import kube, prometheus, tracebacks
from paracle_nb.diagnosis.errors import configuration_sources, error_ratio
from paracle_nb.errors import KubernetesError
from paracle_nb.target import Target

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_ERROR_TEXT = re.compile(r"error|exception", re.IGNORECASE)


def _promql_window(window: str) -> str:
    """Return a window as PromQL writes it ('5min' -> '5m')."""
    from paracle_nb.units import parse_duration

    return prometheus.duration(parse_duration(window))


def error_rate_query(window: str, job: str = "paracle-api") -> str:
    """Return the guide's 5xx rate query, summed over handlers and pods."""
    window = _promql_window(window)
    return (f'sum(rate(http_requests_total{{job="{job}", status=~"5.."}}'
            f"[{window}]))")


def request_rate_query(window: str, job: str = "paracle-api") -> str:
    """Return the rate of every request the API answered."""
    window = _promql_window(window)
    return f'sum(rate(http_requests_total{{job="{job}"}}[{window}]))'


def error_rate(target: Target, window: str = "5m", job: str = "paracle-api"
               ) -> dict[str, Any]:
    """Return the 5xx rate, all requests' rate and the 5xx share of them.

    No 5xx series at all (a healthy API that never failed) is a rate of 0.
    """
    errors = prometheus.value(target, error_rate_query(window, job))
    requests = prometheus.value(target, request_rate_query(window, job))
    rate = error_ratio(0.0 if math.isnan(errors) else round(errors, 4),
                       None if math.isnan(requests) else round(requests, 4))
    ratio = rate["ratio"]
    return {**rate, "ratio": None if ratio is None else round(ratio, 4),
            "window": window, "query": error_rate_query(window, job)}


def error_rate_over_time(target: Target, window: str = "5m",
                         job: str = "paracle-api", span: str = "30m"
                         ) -> pd.DataFrame:
    """Return the 5xx share of requests over the last ``span``, long form.

    Columns ``series`` (``5xx share``), ``time`` and ``value`` (0 to 1).
    """
    from paracle_nb.units import parse_duration

    end = dt.datetime.now(dt.timezone.utc)
    start = end - dt.timedelta(seconds=parse_duration(span))
    step = max(1.0, parse_duration(span) / 240)
    promql = (f"({error_rate_query(window, job)} or vector(0)) / "
              f"{request_rate_query(window, job)}")
    frame = prometheus.query_range(target, promql, start, end,
                                   f"{max(1, round(step * 1000))}ms")
    frame["series"] = "5xx share"
    return frame[["series", "time", "value"]]


def error_lines(log: pd.DataFrame) -> pd.DataFrame:
    """Return, per pod, the log lines that say error or exception.

    The guide's ``grep -i "error\\|exception"``: a logfmt line counts when
    its level is error or its text says so; traceback lines count too.
    """
    import pandas as pd

    columns = ["pod", "error_lines", "tracebacks", "lines_read", "last_error"]
    if log.empty:
        return pd.DataFrame(columns=columns)
    text = log["msg"].fillna("").astype(str) + " " + \
        log["error"].fillna("").astype(str)
    is_error = log["level"].isin(["error", "critical"]) | \
        text.str.contains(_ERROR_TEXT)
    rows = []
    for pod, lines in log.groupby("pod", sort=True):
        errors = lines[is_error.loc[lines.index]]
        rows.append({
            "pod": pod, "error_lines": int(len(errors)),
            "tracebacks": int(lines["msg"].fillna("").str.startswith(
                "Traceback (most recent call last)").sum()),
            "lines_read": int(len(lines)),
            "last_error": errors["ts"].max() if len(errors) else None})
    return pd.DataFrame(rows, columns=columns)


def log_tracebacks(log: pd.DataFrame) -> list[tracebacks.Traceback]:
    """Return every traceback in the pods' logs, each with its pod as source."""
    found: list[tracebacks.Traceback] = []
    if log.empty:
        return found
    for pod, lines in log.groupby("pod", sort=True):
        # Traceback lines are kept whole in ``msg``; logfmt lines only need
        # to end a traceback, so their message is enough.
        text = [str(m) if lvl is None or lvl != lvl else f"level={lvl} msg={m}"
                for lvl, m in zip(lines["level"], lines["msg"].fillna(""),
                                  strict=True)]
        found.extend(tracebacks.extract(text, source=str(pod)))
    return found


def traceback_groups(log: pd.DataFrame) -> pd.DataFrame:
    """Return the pods' tracebacks grouped by exception type and innermost frame."""
    return tracebacks.group(log_tracebacks(log))


def configuration(target: Target, deployment: str, container: str = "api",
                  configmaps: tuple[str, ...] = ("paracle-config",)
                  ) -> dict[str, dict[str, str | None]]:
    """Return the settings the container gets, per source (ConfigMap, env).

    ConfigMaps the container loads with ``envFrom`` are read too. Values
    from Secrets are never read: they show as None.
    """
    spec = kube.get_deployment(target, deployment)
    containers = spec["spec"]["template"]["spec"]["containers"]
    main = next((c for c in containers if c["name"] == container), containers[0])
    names = list(configmaps)
    names += [s["configMapRef"]["name"] for s in main.get("envFrom", [])
              if s.get("configMapRef", {}).get("name") not in (None, *names)]
    found = []
    for name in names:
        try:
            found.append(kube.get_config_map(target, name))
        except KubernetesError as exc:
            log.debug("configmap %s not read: %s", name, exc)
    return configuration_sources(found, spec, container)


def configuration_table(config: dict[str, dict[str, str | None]]) -> pd.DataFrame:
    """Return the settings as rows: source, key, value (secret: not shown)."""
    import pandas as pd

    rows = [{"source": source, "key": key,
             "value": "(from a Secret or reference: not shown)"
             if value is None else value}
            for source, values in config.items() for key, value in values.items()]
    return pd.DataFrame(rows, columns=["source", "key", "value"])
