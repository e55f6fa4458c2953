"""Read helpers for Redis connections: who is connected, limits, latency.

``CLIENT LIST`` gives one row per connection; ``INFO clients`` and
``INFO stats`` the counts and refusals; ``CONFIG GET`` the limits, where
the server allows it. The connectivity test opens fresh connections, as
an API pod would, and times connect and PING.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from paracle_nb import redis as redis_helpers
from paracle_nb.errors import ParacleError, TargetUnreachable
from paracle_nb.target import Target

if TYPE_CHECKING:
    import pandas as pd
    import redis

log = logging.getLogger(__name__)

CLIENT_COLUMNS = ["id", "name", "addr", "host", "age_s", "idle_s", "db", "cmd",
                  "flags"]
#: Upper edges (seconds) of the idle-time buckets, and their labels.
IDLE_BUCKETS = ((10.0, "idle <10s"), (60.0, "idle 10s-1m"), (300.0, "idle 1-5m"),
                (float("inf"), "idle >5m"))


def client_list(target: Target, client: redis.Redis) -> pd.DataFrame:
    """Return every connected client but the runbook's own, one row each."""
    import pandas as pd

    own = redis_helpers._guard(target, "CLIENT ID", client.client_id)
    listed = redis_helpers._guard(target, "CLIENT LIST", client.client_list)
    rows = [{
        "id": int(c["id"]),
        "name": c.get("name") or "(unnamed)",
        "addr": c.get("addr", ""),
        "host": _host(c.get("addr", "")),
        "age_s": float(c.get("age", 0)),
        "idle_s": float(c.get("idle", 0)),
        "db": int(c.get("db", 0)),
        "cmd": c.get("cmd", ""),
        "flags": c.get("flags", ""),
    } for c in listed if int(c["id"]) != int(own)]
    return pd.DataFrame(rows, columns=CLIENT_COLUMNS)


def _host(addr: str) -> str:
    """Return the host of ``host:port`` (IPv6 too), without the port."""
    host, sep, _ = addr.rpartition(":")
    return host if sep else addr


def clients_by_name(clients: Any, idle_older_than_s: float) -> pd.DataFrame:
    """Return clients grouped by name and host, with idle-time buckets.

    ``idle_over_threshold`` counts the clients idle for at least
    ``idle_older_than_s``.
    """
    import pandas as pd

    labels = [label for _, label in IDLE_BUCKETS]
    columns = ["name", "host", "clients", *labels, "idle_over_threshold",
               "max_idle_s"]
    if clients is None or clients.empty:
        return pd.DataFrame(columns=columns)

    frame = clients.assign(bucket=[_bucket(s) for s in clients["idle_s"]],
                           over=clients["idle_s"] >= idle_older_than_s)
    rows = []
    for (name, host), group in frame.groupby(["name", "host"], sort=False):
        counts = group["bucket"].value_counts()
        rows.append({"name": name, "host": host, "clients": len(group),
                     **{label: int(counts.get(label, 0)) for label in labels},
                     "idle_over_threshold": int(group["over"].sum()),
                     "max_idle_s": float(group["idle_s"].max())})
    grouped = pd.DataFrame(rows, columns=columns)
    return grouped.sort_values(["clients", "name"], ascending=[False, True],
                               ignore_index=True)


def _bucket(idle_s: float) -> str:
    return next(label for edge, label in IDLE_BUCKETS if idle_s < edge)


def client_limits(target: Target, client: redis.Redis) -> dict[str, Any]:
    """Return connected and blocked clients, ``maxclients`` and ``timeout``.

    ``CONFIG GET`` may be disabled (managed Redis); ``maxclients`` then
    comes from ``INFO clients`` and ``timeout`` is unknown (None).
    """
    info = redis_helpers._guard(target, "INFO clients", client.info, "clients")
    limits: dict[str, Any] = {
        "connected_clients": int(info.get("connected_clients", 0)),
        "blocked_clients": int(info.get("blocked_clients", 0)),
        "maxclients": int(info["maxclients"]) if "maxclients" in info else None,
        "timeout_s": None,
        "config_readable": True,
    }
    try:
        config = redis_helpers._guard(target, "CONFIG GET", _config_get, client)
    except TargetUnreachable as exc:
        if "refused CONFIG GET" not in str(exc):
            raise
        log.debug("CONFIG GET refused: %s", exc)
        limits["config_readable"] = False
    else:
        limits["maxclients"] = int(config["maxclients"])
        limits["timeout_s"] = int(config["timeout"])
    maxclients = limits["maxclients"]
    limits["usage_ratio"] = (round(limits["connected_clients"] / maxclients, 3)
                             if maxclients else None)
    return limits


def _config_get(client: redis.Redis) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in ("maxclients", "timeout"):
        for key, value in dict(client.config_get(name)).items():
            key = key.decode() if isinstance(key, bytes) else str(key)
            values[key] = value.decode() if isinstance(value, bytes) else str(value)
    return values


def connection_stats(target: Target, client: redis.Redis) -> dict[str, Any]:
    """Return refused connections and connection totals from ``INFO stats``."""
    stats = redis_helpers._guard(target, "INFO stats", client.info, "stats")
    return {
        "rejected_connections": int(stats.get("rejected_connections", 0)),
        "total_connections_received": int(
            stats.get("total_connections_received", 0)),
    }


def connectivity_test(target: Target, samples: int = 5, pause_s: float = 0.05
                      ) -> pd.DataFrame:
    """Open ``samples`` fresh connections; time connect (with AUTH) and PING.

    ``connect_ping_ms`` runs from opening the connection to the first PING
    answered; ``ping_ms`` is a second PING on the open connection. A
    refused or timed-out sample is a row with its ``error``, not a failure.
    """
    import pandas as pd

    rows = []
    for number in range(1, samples + 1):
        rows.append(_sample(target, number))
        if number < samples:
            time.sleep(pause_s)
    return pd.DataFrame(rows, columns=["sample", "connect_ping_ms", "ping_ms",
                                       "error"])


def _sample(target: Target, number: int) -> dict[str, Any]:
    row: dict[str, Any] = {"sample": number, "connect_ping_ms": None,
                           "ping_ms": None, "error": None}
    started = time.monotonic()
    try:
        probe = redis_helpers.connect(target)
    except ParacleError as exc:
        row["error"] = exc.detail or exc.message
        return row
    try:
        answered = time.monotonic()
        row["connect_ping_ms"] = round((answered - started) * 1000, 2)
        redis_helpers._guard(target, "PING", probe.ping)
        row["ping_ms"] = round((time.monotonic() - answered) * 1000, 2)
    except ParacleError as exc:
        row["error"] = exc.detail or exc.message
    finally:
        probe.close()
    return row
