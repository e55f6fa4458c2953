"""The runbooks' plots, in one style, drawn without pyplot's global state.

Each function returns a :class:`Plot`, which Jupyter shows as a PNG (so the
executed notebook and its HTML carry the image itself).
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

from paracle_nb.runbook import available
from paracle_nb.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STATE_COLOURS = {
    "active": "#1565c0",
    "idle": "#90a4ae",
    "idle in transaction": "#ef6c00",
    "idle in transaction (aborted)": "#c62828",
}
LIMIT_COLOUR = "#c62828"
PALETTE = ["#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457",
           "#5d4037", "#78909c"]


class Plot:
    """A figure that renders itself as a PNG in Jupyter."""

    def __init__(self, figure: Figure, title: str) -> None:
        self.figure = figure
        self.title = title

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        return buffer.getvalue()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None
                          ) -> dict[str, Any]:
        data = self.png()
        encoded = base64.b64encode(data).decode()
        # The HTML form carries alt text; the PNG is for tools that want it.
        return {
            "image/png": encoded,
            "text/html": f'<img src="data:image/png;base64,{encoded}" '
                         f'alt="{html.escape(self.title)}" '
                         f'title="{html.escape(self.title)}">',
            "text/plain": repr(self),
        }

    def __repr__(self) -> str:
        return f"<Plot {self.title!r}>"


def _figure(width: float = 8.0, height: float = 3.0) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="x", alpha=0.3)
    return figure, axes


def connection_plot(by_state: Any, limits: Any) -> Plot | None:
    """Postgres client connections by application and state, against the limit."""
    if not available(limits) or not available(by_state):
        return None
    figure, axes = _figure(8, 1.2 + 0.45 * max(1, by_state["application"].nunique()))

    apps = list(by_state.groupby("application")["connections"].sum()
                .sort_values().index)
    lefts = dict.fromkeys(apps, 0)
    for state, colour in {**STATE_COLOURS, "other": "#bdbdbd"}.items():
        mask = (by_state["state"] == state) if state != "other" else \
            ~by_state["state"].isin(STATE_COLOURS)
        rows = by_state[mask].groupby("application")["connections"].sum()
        if rows.empty:
            continue
        widths = [int(rows.get(a, 0)) for a in apps]
        axes.barh(apps, widths, left=[lefts[a] for a in apps], color=colour,
                  label=state)
        for app, width in zip(apps, widths, strict=True):
            lefts[app] += width

    usable = limits["max_connections"] - limits["superuser_reserved"]
    axes.axvline(usable, color=LIMIT_COLOUR, linestyle="--",
                 label=f"usable by applications ({usable})")
    axes.axvline(limits["max_connections"], color=LIMIT_COLOUR,
                 label=f"max_connections ({limits['max_connections']})")
    axes.set_xlim(0, limits["max_connections"] * 1.05)
    axes.set_xlabel("client connections")
    axes.set_title("Postgres connections by application and state")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                frameon=False)
    return Plot(figure, "postgres connections")


def memory_plot(memory: Any, prefixes: Any, top: int = 6) -> Plot | None:
    """Redis used memory split by key prefix, against maxmemory."""
    if not available(memory):
        return None
    figure, axes = _figure(8, 1.8)

    used, left = memory["used_memory"], 0.0
    segments: list[tuple[str, float]] = []
    if available(prefixes) and not prefixes.empty:
        head = prefixes.head(top)
        segments = [(str(r.prefix), float(r.bytes)) for r in head.itertuples()]
        rest = float(prefixes["bytes"].iloc[top:].sum())
        if rest:
            segments.append(("other prefixes", rest))
    overhead = used - sum(size for _, size in segments)
    if overhead > 0:
        segments.append(("overhead / unscanned", overhead))

    mib = 2**20
    colours = PALETTE[:len(segments)]
    if overhead > 0:
        colours[-1] = "#bdbdbd"
    for (label, size), colour in zip(segments, colours, strict=True):
        axes.barh(["used"], [size / mib], left=left / mib, color=colour,
                  label=f"{label} ({format_bytes(size)})")
        left += size
    if memory["maxmemory"]:
        axes.axvline(memory["maxmemory"] / mib, color=LIMIT_COLOUR,
                     label=f"maxmemory ({format_bytes(memory['maxmemory'])})")
        axes.set_xlim(0, max(used, memory["maxmemory"]) / mib * 1.08)
    axes.set_xlabel("MiB")
    axes.set_title("Redis memory by key prefix")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                frameon=False)
    return Plot(figure, "redis memory")


def pod_memory_plot(containers: Any, metrics: Any, container: str) -> Plot | None:
    """Memory in use per pod against the container's limit, with restarts."""
    if not available(containers) or containers.empty:
        return None
    rows = containers[containers["container"] == container]
    if rows.empty:
        return None
    figure, axes = _figure(8, 1.0 + 0.4 * len(rows))

    mib = 2**20
    usage = {}
    if available(metrics) and not metrics.empty:
        mine = metrics[metrics["container"] == container]
        usage = dict(zip(mine["pod"], mine["memory_bytes"], strict=True))
    pods = list(rows["pod"])
    axes.barh(pods, [usage.get(p, 0) / mib for p in pods], color=PALETTE[0],
              label="memory in use")
    for row in rows.itertuples():
        if row.memory_limit:
            axes.plot([row.memory_limit / mib] * 2, [pods.index(row.pod) - 0.4,
                      pods.index(row.pod) + 0.4], color=LIMIT_COLOUR)
        axes.annotate(f"{row.restarts} restarts, last: {row.last_reason or '-'}",
                      (usage.get(row.pod, 0) / mib, pods.index(row.pod)),
                      xytext=(4, 0), textcoords="offset points", va="center",
                      fontsize=8)
    limit = rows["memory_limit"].max()
    if limit:
        axes.plot([], [], color=LIMIT_COLOUR, label=f"limit ({format_bytes(limit)})")
        axes.set_xlim(0, limit / mib * 1.5)
    axes.set_xlabel("MiB")
    axes.set_title(f"Container '{container}': memory against limit")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                frameon=False)
    return Plot(figure, "pod memory")


def node_requests_plot(allocation: Any, fit: Any = None) -> Plot | None:
    """Requests per node against allocatable, CPU and memory side by side.

    With a pending pod (a fit table), its request is drawn as a line from
    where each node's requests end: past the allocatable mark, it does not fit.
    """
    from matplotlib.figure import Figure

    if not available(allocation) or allocation.empty:
        return None
    nodes = list(allocation["node"])
    figure = Figure(figsize=(9, 2.0 + 0.45 * len(nodes)), layout="constrained")
    pending = fit.iloc[0] if available(fit) and not fit.empty else None

    gib = 2**30
    for index, (resource, unit, scale) in enumerate((("cpu", "cores", 1.0),
                                                     ("memory", "GiB", gib))):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.spines[["top", "right"]].set_visible(False)
        axes.grid(axis="x", alpha=0.3)
        suffix = "_bytes" if resource == "memory" else ""
        requested = allocation[f"{resource}_requested{suffix}"] / scale
        allocatable = allocation[f"{resource}_allocatable{suffix}"] / scale
        axes.barh(nodes, requested, color=PALETTE[0], label="requested")
        for y, limit in enumerate(allocatable):
            axes.plot([limit, limit], [y - 0.4, y + 0.4], color=LIMIT_COLOUR,
                      label="allocatable" if y == 0 else None)
        reach, title = float(allocatable.max()), f"{resource}"
        if pending is not None:
            request = float(pending[f"{resource}_request{suffix}"]) / scale
            reach = max(reach, float(requested.max()) + request)
            title += f" (pending pod asks {request:.2f} {unit})"
            for y, start in enumerate(requested):
                axes.plot([start, start + request], [y, y], color=PALETTE[1],
                          linewidth=3, linestyle="--",
                          label="pending pod's request, added to the node's"
                          if y == 0 else None)
        axes.set_xlim(0, reach * 1.25)
        axes.set_xlabel(unit)
        axes.set_title(title, fontsize=10)
        if index:
            axes.tick_params(labelleft=False)
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8,
                  frameon=False)
    figure.suptitle("Node requests against allocatable")
    return Plot(figure, "node requests")


def statements_plot(statements: Any, slow_ms: float, top: int = 8) -> Plot | None:
    """The slowest statements' mean time, against the slow-statement threshold."""
    if not available(statements):
        return None
    head = statements.head(top).iloc[::-1]
    figure, axes = _figure(8, 1.2 + 0.4 * max(1, len(head)))

    labels = [f"#{len(head) - i} {_statement_label(q)}"
              for i, q in enumerate(head["query"])]
    colours = [LIMIT_COLOUR if slow else PALETTE[0] for slow in head["slow"]]
    axes.barh(labels, head["mean_ms"], color=colours)
    for y, (mean, calls) in enumerate(zip(head["mean_ms"], head["calls"],
                                          strict=True)):
        axes.annotate(f" {mean:.0f} ms x{int(calls)}", (mean, y), va="center",
                      fontsize=7)
    axes.axvline(slow_ms, color=LIMIT_COLOUR, linestyle="--",
                 label=f"slow_ms ({slow_ms:g} ms)")
    reach = max([slow_ms, *[float(m) for m in head["mean_ms"]]])
    axes.set_xlim(0, reach * 1.3)
    axes.tick_params(axis="y", labelsize=7)
    axes.set_xlabel("mean execution time (ms)")
    axes.set_title("Slowest statements (pg_stat_statements)")
    axes.legend(loc="lower right", fontsize=8)
    return Plot(figure, "slowest statements")


def _statement_label(query: str, width: int = 48) -> str:
    text = " ".join(str(query).split())
    text = text if len(text) <= width else text[:width - 1] + "…"
    # A `$1` placeholder would otherwise start matplotlib's math mode.
    return text.replace("$", r"\$")


def redis_clients_plot(by_name: Any, limits: Any, top: int = 6) -> Plot | None:
    """Redis clients by name, stacked, against maxclients."""
    if not available(limits) or not limits["maxclients"]:
        return None
    figure, axes = _figure(8, 1.6)

    totals: list[tuple[str, int]] = []
    if available(by_name) and not by_name.empty:
        summed = by_name.groupby("name")["clients"].sum().sort_values(
            ascending=False)
        totals = [(str(n), int(c)) for n, c in summed.head(top).items()]
        rest = int(summed.iloc[top:].sum())
        if rest:
            totals.append(("other names", rest))
    listed = sum(count for _, count in totals)
    # Connections CLIENT LIST leaves out: this runbook's own.
    unlisted = limits["connected_clients"] - listed
    if unlisted > 0:
        totals.append(("this runbook", unlisted))

    left = 0
    for (name, count), colour in zip(totals, PALETTE * 2, strict=False):
        axes.barh(["clients"], [count], left=left, color=colour,
                  label=f"{name} ({count})".replace("$", r"\$"))
        left += count
    maxclients = limits["maxclients"]
    axes.axvline(maxclients, color=LIMIT_COLOUR,
                 label=f"maxclients ({maxclients})")
    axes.set_xlim(0, max(left, maxclients) * 1.08)
    axes.set_xlabel("connected clients")
    axes.set_title("Redis clients by name against maxclients")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                frameon=False)
    return Plot(figure, "redis clients")


def latency_plot(series: Any, threshold: float = 1.0,
                 title: str = "API latency") -> Plot | None:
    """Latency quantiles over time (seconds), against the threshold line.

    ``series`` is long form: one row per ``series`` name and ``time``, with
    its ``value`` in seconds (see :func:`paracle_nb.latency.latency_over_time`).
    """
    import matplotlib.dates as mdates

    if not available(series):
        return None
    figure, axes = _figure(8, 3.2)
    axes.grid(axis="y", alpha=0.3)

    names = sorted(series["series"].unique()) if not series.empty else []
    for name, colour in zip(names, PALETTE, strict=False):
        rows = series[series["series"] == name].sort_values("time")
        axes.plot(rows["time"], rows["value"], color=colour, label=str(name),
                  linewidth=1.8 if name == "p95" else 1.0)
    axes.axhline(threshold, color=LIMIT_COLOUR, linestyle="--",
                 label=f"threshold ({threshold:g} s)")
    peak = series["value"].max() if not series.empty else float("nan")
    top = max(threshold, peak) if peak == peak else threshold
    axes.set_ylim(0, top * 1.2)
    if not names:
        axes.text(0.5, 0.5, "no requests in this range", ha="center",
                  va="center", transform=axes.transAxes, color="#757575")

    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    axes.set_xlabel("time (UTC)")
    axes.set_ylabel("seconds")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8, frameon=False)
    return Plot(figure, "api latency")


def error_rate_plot(series: Any, threshold: float = 0.01,
                    title: str = "API 5xx share of requests") -> Plot | None:
    """The 5xx share of requests over time (percent), against the threshold.

    ``series`` is long form (``series``, ``time``, ``value`` from 0 to 1),
    as :func:`paracle_nb.api_errors.error_rate_over_time` returns it.
    """
    import matplotlib.dates as mdates

    if not available(series):
        return None
    figure, axes = _figure(8, 3.0)
    axes.grid(axis="y", alpha=0.3)

    rows = series.dropna(subset=["value"]).sort_values("time") \
        if not series.empty else series
    if not rows.empty:
        axes.plot(rows["time"], rows["value"] * 100, color=PALETTE[0],
                  linewidth=1.6, label="5xx share")
    else:
        axes.text(0.5, 0.5, "no requests in this range", ha="center",
                  va="center", transform=axes.transAxes, color="#757575")
    axes.axhline(threshold * 100, color=LIMIT_COLOUR, linestyle="--",
                 label=f"threshold ({threshold:.0%})")
    peak = float(rows["value"].max()) * 100 if not rows.empty else 0.0
    axes.set_ylim(0, max(threshold * 100, peak) * 1.2 or 1.0)

    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    axes.set_xlabel("time (UTC)")
    axes.set_ylabel("% of requests")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8, frameon=False)
    return Plot(figure, "api error rate")


def pooling_plot(direct: dict[str, Any], pooled: dict[str, Any],
                 limits: Any, pool_size: int) -> Plot:
    """Server connections and refused clients, straight to Postgres and via
    PgBouncer, against the connection limit (the pooler's before and after)."""
    figure, axes = _figure(8, 2.6)
    labels = [f"direct ({direct['clients']} clients)",
              f"via PgBouncer ({pooled['clients']} clients, pool {pool_size})"]
    rows = [0.0, 1.0]
    peaks = [direct["peak_server_connections"], pooled["peak_server_connections"]]
    refused = [direct["refused"], pooled["refused"]]
    axes.barh([r + 0.2 for r in rows], peaks, height=0.38, color="#1565c0",
              label="server connections (peak)")
    axes.barh([r - 0.2 for r in rows], refused, height=0.38, color="#c62828",
              label="clients refused")
    for row, peak, lost in zip(rows, peaks, refused, strict=True):
        axes.text(peak + 0.5, row + 0.2, str(peak), va="center", fontsize=8)
        axes.text(lost + 0.5, row - 0.2, str(lost), va="center", fontsize=8)
    axes.set_yticks(rows, labels)
    usable = limits["max_connections"] - limits["superuser_reserved"]
    axes.axvline(usable, color=LIMIT_COLOUR, linestyle="--",
                 label=f"usable by applications ({usable})")
    axes.axvline(limits["max_connections"], color=LIMIT_COLOUR,
                 label=f"max_connections ({limits['max_connections']})")
    axes.set_xlabel("connections / clients")
    axes.set_title("Postgres connections before and after PgBouncer")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                frameon=False)
    return Plot(figure, "postgres connections before and after pgbouncer")
