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
    axes.legend(loc="lower right", fontsize=8)
    return Plot(figure, "pod memory")
