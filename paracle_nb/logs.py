"""The API pods' logs: read through the Kubernetes API, parsed from logfmt.

The API writes one logfmt line per event::

    ts=2026-12-04T15:02:11.532Z level=info logger=paracle.api msg="request
    finished" method=POST path=/v1/agents/run status=200 duration_ms=812
    llm_provider=openai llm_duration=0.655 request_id=9f2c41d7e0a3

:func:`api_log` reads the pods' current logs into one DataFrame, a row per
line (lines that are not logfmt, such as traceback lines, keep their text
in ``msg`` with no ``level``); :func:`llm_durations` sums up LLM calls per
provider, which is the guide's ``grep llm_duration``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from paracle_nb import kube
from paracle_nb.target import Target
from paracle_nb.units import parse_duration

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["pod", "ts", "level", "logger", "msg", "method", "path", "status",
           "duration_ms", "llm_provider", "llm_duration", "provider", "error",
           "timeout", "request_id"]
NUMERIC = ("duration_ms", "llm_duration", "timeout")

_PAIR = re.compile(r'([A-Za-z_][\w.\-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
_ESCAPE = re.compile(r"\\(.)")


def parse_logfmt(line: str) -> dict[str, str]:
    """Return the ``key=value`` pairs of one logfmt line (empty if none).

    >>> parse_logfmt('level=info msg="request finished" status=200')
    {'level': 'info', 'msg': 'request finished', 'status': '200'}
    """
    fields = {}
    for key, raw in _PAIR.findall(line):
        if raw.startswith('"'):
            raw = _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1),
                              raw[1:-1])
        fields[key] = raw
    return fields


def log_frame(lines: Iterable[str], pod: str = "") -> pd.DataFrame:
    """Return log lines as a DataFrame: :data:`COLUMNS` plus any other keys.

    ``ts`` is a UTC timestamp, the :data:`NUMERIC` fields are floats, and
    ``status`` stays text (``"429"``), as the log wrote it.
    """
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for line in lines:
        if not line.strip():
            continue
        fields = parse_logfmt(line) if line.startswith("ts=") else {}
        if not fields.get("level"):
            fields = {"msg": line}
        rows.append({"pod": pod, **fields})
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    extra = [c for c in frame.columns if c not in COLUMNS]
    frame = frame[COLUMNS + extra]
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, errors="coerce",
                                 format="ISO8601")
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def api_log(target: Target, *, container: str = "api", tail_lines: int = 500,
            selector: str | None = None) -> pd.DataFrame:
    """Return the last lines of every API pod's log, parsed, oldest first.

    The guide's ``kubectl logs -l app=paracle-api --tail=N``, per pod.
    """
    import pandas as pd

    pods = kube.list_pods(target, selector or target.app_label)
    frames = []
    for pod in pods:
        name = pod["metadata"]["name"]
        containers = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
        if container not in containers:
            continue
        text = kube.pod_logs(target, name, container, tail_lines=tail_lines)
        frames.append(log_frame(text.splitlines(), pod=name))
    if not frames:
        return log_frame([])
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values("ts", kind="stable", ignore_index=True)


def recent(log: pd.DataFrame, window: str | float | None,
           now: dt.datetime | None = None) -> pd.DataFrame:
    """Return the lines of the last ``window`` (e.g. ``"5m"``); all without one."""
    if window in (None, ""):
        return log
    now = now or dt.datetime.now(dt.timezone.utc)
    since = now - dt.timedelta(seconds=parse_duration(window))
    return log[log["ts"] >= since]


def error_lines(log: pd.DataFrame, window: str | float | None = None,
                now: dt.datetime | None = None) -> pd.DataFrame:
    """Return the error and warning lines (of the last ``window``), newest first.

    Lines without a level (traceback lines) are left out: the error line
    above them says what failed.
    """
    problems = log[log["level"].isin(["error", "warning", "fatal", "critical"])]
    problems = recent(problems, window, now)
    return problems.sort_values("ts", ascending=False, kind="stable",
                                ignore_index=True)


def error_counts(lines: pd.DataFrame) -> pd.DataFrame:
    """Return error and warning lines counted by level, logger and message.

    One row per kind of line, the most frequent first, with the pods that
    wrote it, the last time it was seen and one ``error`` it carried.
    """
    import pandas as pd

    columns = ["level", "logger", "msg", "lines", "pods", "last_seen", "error"]
    if lines.empty:
        return pd.DataFrame(columns=columns)
    keyed = lines.assign(logger=lines["logger"].fillna("-"),
                         error=lines["error"].fillna(""))
    grouped = keyed.groupby(["level", "logger", "msg"], sort=False)
    counts = grouped.agg(lines=("msg", "size"), pods=("pod", "nunique"),
                         last_seen=("ts", "max"), error=("error", "last"))
    counts = counts.reset_index().sort_values(["lines", "last_seen"],
                                              ascending=False, ignore_index=True)
    counts["error"] = counts["error"].str.slice(0, 160)
    return counts[columns]


def llm_durations(log: pd.DataFrame, window: str | float | None = None,
                  now: dt.datetime | None = None) -> pd.DataFrame:
    """Return LLM calls per provider: calls, failures, timeouts, durations.

    Durations (milliseconds) come from the ``llm_duration`` of finished
    requests; failures from ``llm call failed`` lines, a failure with a
    timeout counting as a timeout. ``timeout_ms`` is the largest timeout the
    API reported.
    """
    import pandas as pd

    columns = ["provider", "calls", "failed", "timeouts", "p50_ms", "p95_ms",
               "max_ms", "timeout_ms"]
    log = recent(log, window, now)
    finished = log[log["llm_provider"].notna() & log["llm_duration"].notna()]
    failed = log[(log["logger"] == "paracle.llm") & log["provider"].notna()
                 & log["level"].isin(["error", "warning"])]
    providers = sorted(set(finished["llm_provider"]) | set(failed["provider"]))
    rows = []
    for provider in providers:
        durations = finished.loc[finished["llm_provider"] == provider,
                                 "llm_duration"]
        errors = failed[failed["provider"] == provider]
        timed_out = errors["timeout"].notna() | errors["error"].fillna("").str.contains(
            "timed out|timeout", case=False, regex=True)
        rows.append({
            "provider": provider,
            "calls": int(len(durations)),
            "failed": int(len(errors)),
            "timeouts": int(timed_out.sum()),
            "p50_ms": _milliseconds(durations.quantile(0.5)),
            "p95_ms": _milliseconds(durations.quantile(0.95)),
            "max_ms": _milliseconds(durations.max()),
            "timeout_ms": _milliseconds(errors["timeout"].max()),
        })
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("p50_ms", "p95_ms", "max_ms", "timeout_ms"):
        # Whole milliseconds, NaN where there is none (shown as "-").
        frame[column] = pd.Series([r[column] for r in rows], dtype=object)
    return frame.sort_values("p95_ms", ascending=False, ignore_index=True,
                             na_position="last")


def _milliseconds(seconds: Any) -> float | int:
    """Return seconds as whole milliseconds; NaN for no value."""
    if seconds is None or seconds != seconds:
        return float("nan")
    return round(float(seconds) * 1000)
