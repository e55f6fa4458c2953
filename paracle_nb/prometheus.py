"""Read helpers for Prometheus: instant and range queries, as DataFrames.

Queries go to the HTTP API (``/api/v1/query``, ``/api/v1/query_range``)
with a client timeout and the same ``timeout`` passed to Prometheus, so a
heavy query is cut off on both sides. A query Prometheus refuses raises
:class:`QueryRejected` with Prometheus's own error text.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from typing import TYPE_CHECKING, Any

from paracle_nb.errors import (
    ParacleError,
    ParameterError,
    TargetTimeout,
    TargetUnreachable,
)
from paracle_nb.target import Target

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TimeLike = dt.datetime | float | int | str


class QueryRejected(ParacleError):
    """Prometheus refused a query (bad PromQL, or it failed to evaluate)."""


def query(target: Target, promql: str, at: TimeLike | None = None
          ) -> pd.DataFrame:
    """Return an instant query's result: one row per series.

    Columns: the series' labels, ``series`` (its name), ``time`` and
    ``value`` (float; NaN where Prometheus says NaN).

    >>> query(target, 'up{job="paracle-api"}')  # doctest: +SKIP
    """
    fields = {"query": promql}
    if at is not None:
        fields["time"] = _timestamp(at)
    data = _get(target, "query", fields, promql)
    return _frame(data, promql)


def query_range(target: Target, promql: str, start: TimeLike, end: TimeLike,
                step: float | str) -> pd.DataFrame:
    """Return a range query's result in long form: one row per series and step.

    Columns: the series' labels, ``series``, ``time`` (UTC) and ``value``.
    """
    fields = {"query": promql, "start": _timestamp(start), "end": _timestamp(end),
              "step": str(step)}
    data = _get(target, "query_range", fields, promql)
    return _frame(data, promql)


def value(target: Target, promql: str, at: TimeLike | None = None) -> float:
    """Return the single value an instant query answers; NaN when it has none."""
    frame = query(target, promql, at)
    if frame.empty:
        return math.nan
    return float(frame["value"].iloc[0])


def _get(target: Target, endpoint: str, fields: dict[str, str], promql: str
         ) -> dict[str, Any]:
    import urllib3

    if not target.prometheus_url:
        raise ParameterError("no `prometheus_url` in the parameters",
                             target="prometheus")
    url = f"{target.prometheus_url.rstrip('/')}/api/v1/{endpoint}"
    timeout = target.timeout_seconds
    # Prometheus durations take whole units: 2.5 s is sent as 2500ms.
    fields = {**fields, "timeout": f"{max(1, round(timeout * 1000))}ms"}
    http = urllib3.PoolManager(retries=False,
                               timeout=urllib3.Timeout(total=timeout))
    log.debug("prometheus %s: %s", endpoint, promql)
    try:
        response = http.request("GET", url, fields=fields)
    except urllib3.exceptions.NewConnectionError as exc:
        # urllib3 makes a refused connection a kind of connect timeout.
        refused = str(exc).rsplit(": ", 1)[-1]
        raise TargetUnreachable(f"Prometheus at {target.prometheus_url} is "
                                f"unreachable ({refused})", target="prometheus"
                                ) from None
    except urllib3.exceptions.TimeoutError:
        raise TargetTimeout(f"Prometheus at {target.prometheus_url} did not answer "
                            f"within {timeout:g}s", target="prometheus") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TargetUnreachable(f"Prometheus at {target.prometheus_url} is "
                                f"unreachable ({reason})", target="prometheus"
                                ) from None
    finally:
        http.clear()
    return _answer(target, response.status, response.data, promql)


def _answer(target: Target, status: int, body: bytes, promql: str
            ) -> dict[str, Any]:
    """Return the ``data`` of a Prometheus answer, or raise what went wrong."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "status" not in answer:
        raise TargetUnreachable(
            f"{target.prometheus_url} answered HTTP {status} without a Prometheus "
            "API body: is it Prometheus?", target="prometheus")
    if answer["status"] == "success":
        for warning in answer.get("warnings") or []:
            log.warning("Prometheus warns about %s: %s", promql, warning)
        return dict(answer["data"])

    kind, error = answer.get("errorType"), answer.get("error", "")
    if kind == "timeout":
        raise TargetTimeout(f"Prometheus gave up evaluating `{promql}`",
                            target="prometheus", detail=error)
    if kind == "unavailable":
        raise TargetUnreachable("Prometheus is not ready to answer queries",
                                target="prometheus", detail=error)
    raise QueryRejected(f"Prometheus rejected the query `{promql}`",
                        target="prometheus", detail=error)


def _frame(data: dict[str, Any], promql: str) -> pd.DataFrame:
    import pandas as pd

    kind, result = data.get("resultType"), data.get("result") or []
    rows: list[dict[str, Any]] = []
    if kind in ("scalar", "string"):
        rows.append({"series": promql, "time": _when(result[0]),
                     "value": _number(result[1])})
    for series in result if kind in ("vector", "matrix") else []:
        labels = series.get("metric") or {}
        name = series_name(labels, promql)
        points = series.get("values") or [series.get("value")]
        for stamp, text in points:
            rows.append({**labels, "series": name, "time": _when(stamp),
                         "value": _number(text)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["series", "time", "value"])
    labels = sorted(c for c in frame.columns if c not in ("series", "time", "value"))
    return frame[[*labels, "series", "time", "value"]]


def series_name(labels: dict[str, str], fallback: str = "") -> str:
    """Return a series' name as PromQL writes it: ``name{label="value"}``."""
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())
                     if k != "__name__")
    if not name and not rest:
        return fallback
    return f"{name}{{{rest}}}" if rest else name


def _number(text: Any) -> float:
    try:
        return float(text)  # float() reads "NaN", "+Inf" and "-Inf" too
    except (TypeError, ValueError):
        return math.nan


def _when(stamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(stamp), dt.timezone.utc)


def _timestamp(when: TimeLike) -> str:
    """Return a time as Prometheus takes it: Unix seconds."""
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise ParameterError(f"time {when} has no time zone; give it in UTC")
        return f"{when.timestamp():.3f}"
    if isinstance(when, (int, float)):
        return f"{float(when):.3f}"
    text = str(when).strip()
    try:
        return f"{float(text):.3f}"
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ParameterError(f"not a time: {text!r} (give Unix seconds or "
                             "ISO 8601 with a zone)") from None
    return _timestamp(parsed if parsed.tzinfo else
                      parsed.replace(tzinfo=dt.timezone.utc))


def duration(seconds: float) -> str:
    """Return a duration in PromQL's syntax, e.g. ``90s``, ``5m``, ``1h``."""
    whole = max(1, round(seconds))
    for unit, size in (("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def scrape_targets(up: pd.DataFrame) -> dict[str, Any]:
    """Return ``{"targets": n, "down": m, "down_instances": [...]}`` from ``up``.

    ``up`` is the answer to ``up{job="..."}``: one series per scrape
    target, 1 when the last scrape worked, 0 when it failed.
    """
    if up.empty:
        return {"targets": 0, "down": 0, "down_instances": []}
    down = up[up["value"] != 1]
    names = down["instance"] if "instance" in down.columns else down["series"]
    return {"targets": int(len(up)), "down": int(len(down)),
            "down_instances": sorted(str(n) for n in names)}
