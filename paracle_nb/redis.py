"""Read helpers for Redis, through redis-py.

Keys are walked with SCAN (never KEYS) in bounded batches; memory per key
prefix comes from ``MEMORY USAGE`` on the keys scanned.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import TYPE_CHECKING, Any

from paracle_nb.errors import (
    AuthenticationFailed,
    ConnectionRefused,
    ParameterError,
    TargetTimeout,
    TargetUnreachable,
)
from paracle_nb.target import Target

if TYPE_CHECKING:
    import pandas as pd
    import redis

log = logging.getLogger(__name__)


def connect(target: Target) -> redis.Redis:
    """Return a client for the target's Redis; checks it answers PING."""
    import redis

    if not target.redis_url:
        raise ParameterError("no `redis_url` in the parameters", target="redis")
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    password = target.redis_password.reveal() if target.redis_password else None
    client = redis.Redis.from_url(
        target.redis_url,
        password=password,
        socket_timeout=target.timeout_seconds,
        socket_connect_timeout=target.timeout_seconds,
        client_name="paracle-nb",
        # One attempt: a refusing or stalled Redis must cost one timeout.
        retry=Retry(NoBackoff(), 0),
        **quiet_handshake(),
    )
    _guard(target, "PING", client.ping)
    return client


def quiet_handshake() -> dict[str, Any]:
    """Client options that skip handshake commands older servers refuse.

    Recent redis-py sends CLIENT SETINFO and CLIENT MAINT_NOTIFICATIONS on
    connect; Redis 7.0 refuses them and counts each refusal in
    ``INFO errorstats``, blurring the errors a runbook reads there.
    """
    import redis

    params = _client_params(redis.Redis)
    options: dict[str, Any] = {}
    if "driver_info" in params:
        options["driver_info"] = None
    elif "lib_name" in params:
        options.update(lib_name=None, lib_version=None)
    if "maint_notifications_config" in params:
        from redis.maint_notifications import MaintNotificationsConfig

        options["maint_notifications_config"] = MaintNotificationsConfig(
            enabled=False)
    return options


@functools.lru_cache(maxsize=1)
def _client_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls).parameters)


def _guard(target: Target, what: str, call: Any, *args: Any) -> Any:
    """Run one Redis call, turning client errors into paracle errors."""
    import redis

    where = target.redis_url or "redis"
    try:
        return call(*args)
    except redis.exceptions.TimeoutError:
        raise TargetTimeout(f"Redis at {where} did not answer {what} within "
                            f"{target.timeout_seconds:g}s", target="redis") from None
    except redis.exceptions.AuthenticationError as exc:
        raise AuthenticationFailed(f"Redis at {where} rejected the credentials",
                                   target="redis", detail=str(exc)) from None
    except redis.exceptions.ConnectionError as exc:
        if "max number of clients" in str(exc):
            raise ConnectionRefused(f"Redis at {where} refused the connection",
                                    target="redis", detail=str(exc)) from None
        raise TargetUnreachable(f"Redis at {where} is unreachable",
                                target="redis", detail=str(exc)) from None
    except redis.exceptions.ResponseError as exc:
        raise TargetUnreachable(f"Redis at {where} refused {what}",
                                target="redis", detail=str(exc)) from None


def memory_info(target: Target, client: redis.Redis) -> dict[str, Any]:
    """Return used memory against maxmemory, the policy and fragmentation."""
    info = _guard(target, "INFO memory", client.info, "memory")
    used, limit = int(info["used_memory"]), int(info.get("maxmemory", 0))
    return {
        "used_memory": used,
        "used_memory_peak": int(info.get("used_memory_peak", used)),
        "used_memory_dataset": int(info.get("used_memory_dataset", used)),
        "maxmemory": limit,
        "maxmemory_policy": info.get("maxmemory_policy"),
        "usage_ratio": used / limit if limit else None,
        "fragmentation_ratio": info.get("mem_fragmentation_ratio"),
    }


def eviction_stats(target: Target, client: redis.Redis) -> dict[str, Any]:
    """Return evictions, expiries, hits/misses and rejected (OOM) writes."""
    stats = _guard(target, "INFO stats", client.info, "stats")
    errors = _guard(target, "INFO errorstats", client.info, "errorstats")
    hits, misses = int(stats.get("keyspace_hits", 0)), int(
        stats.get("keyspace_misses", 0))
    return {
        "evicted_keys": int(stats.get("evicted_keys", 0)),
        "expired_keys": int(stats.get("expired_keys", 0)),
        "keyspace_hits": hits,
        "keyspace_misses": misses,
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "rejected_connections": int(stats.get("rejected_connections", 0)),
        "oom_rejected_writes": int(errors.get("errorstat_OOM", {}).get("count", 0)),
    }


def keyspace(target: Target, client: redis.Redis) -> pd.DataFrame:
    """Return keys, keys with a TTL and average TTL per database."""
    import pandas as pd

    info = _guard(target, "INFO keyspace", client.info, "keyspace")
    rows = [
        {"db": name, "keys": int(v["keys"]), "expires": int(v["expires"]),
         "avg_ttl_s": int(v.get("avg_ttl", 0)) / 1000}
        for name, v in info.items()
    ]
    return pd.DataFrame(rows, columns=["db", "keys", "expires", "avg_ttl_s"])


def key_prefix(key: bytes, separator: bytes = b":") -> str:
    """Return the first segment of a key name, with its separator."""
    head, sep, _ = key.partition(separator)
    return (head + sep).decode("utf-8", errors="replace") if sep else "(no prefix)"


def keys_by_prefix(target: Target, client: redis.Redis, *, batch: int = 1000,
                   max_keys: int = 200_000) -> pd.DataFrame:
    """Return key count, TTL presence and memory per prefix, via SCAN.

    Walks at most ``max_keys`` keys; the ``scanned_share`` column says how
    much of the database that was.
    """
    import pandas as pd

    totals: dict[str, dict[str, int]] = {}
    scanned, cursor = 0, 0
    while scanned < max_keys:
        cursor, keys = _guard(target, "SCAN", client.scan, cursor, None, batch)
        if keys:
            _measure(target, client, keys, totals)
            scanned += len(keys)
        if cursor == 0:
            break

    dbsize = int(_guard(target, "DBSIZE", client.dbsize))
    rows = [{"prefix": p, **t} for p, t in totals.items()]
    frame = pd.DataFrame(rows, columns=["prefix", "keys", "with_ttl", "no_ttl",
                                        "bytes"])
    total_bytes = frame["bytes"].sum() or 1
    frame["share"] = frame["bytes"] / total_bytes
    frame["scanned_share"] = scanned / dbsize if dbsize else 1.0
    return frame.sort_values("bytes", ascending=False, ignore_index=True)


def _measure(target: Target, client: redis.Redis, keys: list[bytes],
             totals: dict[str, dict[str, int]]) -> None:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
        pipe.pttl(key)
    answers = _guard(target, "MEMORY USAGE", pipe.execute)
    for i, key in enumerate(keys):
        size, ttl = answers[2 * i], answers[2 * i + 1]
        if ttl == -2:  # expired between SCAN and now
            continue
        entry = totals.setdefault(key_prefix(key), {"keys": 0, "with_ttl": 0,
                                                    "no_ttl": 0, "bytes": 0})
        entry["keys"] += 1
        entry["with_ttl" if ttl >= 0 else "no_ttl"] += 1
        entry["bytes"] += int(size or 0)
