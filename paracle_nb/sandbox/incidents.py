"""Reproduce Paracle's database and cache incidents on lab servers.

Each incident is caused for real, and its proof is the server's own answer:
a refused connection for an exhausted pool, a refused write for a full
Redis. Every incident has a way back to a healthy server.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg
import redis
from psycopg import pq

from paracle_nb.errors import SandboxError
from paracle_nb.sandbox import procs
from paracle_nb.sandbox.postgres import APP_ROLE, SRE_ROLE, PostgresServer
from paracle_nb.sandbox.redis_server import RedisServer

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

#: Messages PostgreSQL sends when it has no connection slot for a client.
RESERVED_SLOTS_REFUSAL = "connection slots are reserved"
TOO_MANY_CLIENTS = "too many clients already"

#: Redis's out-of-memory refusal (redis-py drops the leading ``OOM``).
REDIS_OOM = "command not allowed when used memory > 'maxmemory'"

#: Paracle's key families: share of keys written, value size, TTL (seconds).
DEFAULT_PREFIXES: dict[str, dict[str, Any]] = {
    "cache:": {"share": 0.6, "value_size": 2048, "ttl": None},
    "session:": {"share": 0.3, "value_size": 1024, "ttl": 3600},
    "ratelimit:": {"share": 0.1, "value_size": 64, "ttl": 900},
}

_SESSION_STATES = {
    pq.TransactionStatus.IDLE: "idle",
    pq.TransactionStatus.INTRANS: "idle in transaction",
    pq.TransactionStatus.INERROR: "idle in transaction (aborted)",
}
_key_serial = itertools.count(1)

#: How far past maxmemory the last allowed write takes a full Redis.
OVERSHOOT = 512 * 1024


@dataclass
class HeldSessions:
    """PostgreSQL sessions the lab holds open, as a misbehaving client would.

    ``refusal`` is the server's message when it turned the next one away
    (None for a healthy baseline). Use as a context manager, or call
    :meth:`release`.
    """

    pg: PostgresServer
    application: str
    role: str
    sessions: list[psycopg.Connection[Any]] = field(default_factory=list)
    refusal: str | None = None
    superuser_sessions: int = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def held(self) -> int:
        """Number of sessions held open."""
        return len(self.sessions)

    @property
    def by_state(self) -> dict[str, int]:
        """Held sessions by their pg_stat_activity state, e.g. ``{"idle": 25}``."""
        states = Counter(
            _SESSION_STATES.get(conn.info.transaction_status, "unknown")
            for conn in self.sessions
        )
        return dict(states)

    @property
    def backend_pids(self) -> list[int]:
        """Server PIDs of the held sessions (pg_stat_activity.pid)."""
        return [conn.info.backend_pid for conn in self.sessions]

    def release(self, wait: float = 10.0) -> None:
        """Close every held session; wait until the server has let them go."""
        pids = self.backend_pids
        for conn in self.sessions:
            conn.close()
        self.sessions.clear()

        # Closing only sends a goodbye: the slots are free once the backends
        # have exited, and a reconnect right away could still be refused.
        if wait and pids:
            procs.wait_for(
                lambda: not any(procs.pid_alive(pid) for pid in pids),
                timeout=wait,
                what=f"{len(pids)} PostgreSQL backends to exit",
            )
        logger.info("released %d sessions of %s", len(pids), self.application)


def exhaust_connections(
    pg: PostgresServer,
    application: str = "paracle-api",
    role: str = APP_ROLE,
    idle_in_transaction: int = 12,
    fill_reserved: bool = False,
    connect_timeout: int = 5,
) -> HeldSessions:
    """Open sessions as ``role`` until PostgreSQL refuses one; hold them all.

    The first ``idle_in_transaction`` sessions run ``BEGIN; SELECT 1`` and
    stay in their transaction; the rest run ``SELECT 1`` and stay idle. With
    ``fill_reserved``, the superuser reserved slots are then taken by
    ``paracle_sre`` sessions too, until even a superuser is refused.
    """
    flood = HeldSessions(pg, application, role)
    attempts = pg.max_connections + 5

    try:
        flood.refusal = _open_until_refused(
            flood, role, attempts, idle_in_transaction, connect_timeout
        )

        if fill_reserved:
            before = flood.held
            flood.refusal = _open_until_refused(
                flood, SRE_ROLE, attempts - before, 0, connect_timeout
            )
            flood.superuser_sessions = flood.held - before
            if TOO_MANY_CLIENTS not in flood.refusal:
                raise SandboxError(
                    "a superuser was refused, but not for lack of slots",
                    target=pg.dsn(SRE_ROLE),
                    detail=flood.refusal,
                )
    except BaseException:
        flood.release(wait=0)
        raise

    logger.info(
        "exhausted connections of %s: %d held (%s), refused with %r",
        application,
        flood.held,
        flood.by_state,
        flood.refusal,
    )
    return flood


def idle_connections(
    pg: PostgresServer,
    application: str = "paracle-api",
    n: int = 5,
    role: str = APP_ROLE,
) -> HeldSessions:
    """Hold ``n`` idle sessions: the healthy baseline of a connection pool."""
    sessions = HeldSessions(pg, application, role)
    try:
        for _ in range(n):
            conn = pg.connect(role, application, autocommit=True)
            sessions.sessions.append(conn)
            conn.execute("SELECT 1")
    except BaseException:
        sessions.release(wait=0)
        raise
    return sessions


def _open_until_refused(
    flood: HeldSessions,
    role: str,
    attempts: int,
    in_transaction: int,
    connect_timeout: int,
) -> str:
    """Add sessions to ``flood`` until one is refused; return the refusal."""
    for number in range(attempts):
        keep_open = number < in_transaction
        try:
            conn = flood.pg.connect(
                role,
                flood.application,
                autocommit=not keep_open,
                connect_timeout=connect_timeout,
            )
        except psycopg.OperationalError as exc:
            return _slot_refusal(exc, flood.pg.dsn(role))

        # Without autocommit, SELECT opens a transaction nobody ends.
        flood.sessions.append(conn)
        conn.execute("SELECT 1")

    raise SandboxError(
        f"PostgreSQL accepted {attempts} more sessions without refusing one",
        target=flood.pg.dsn(role),
        step="exhaust connections",
    )


def _slot_refusal(exc: psycopg.OperationalError, target: str) -> str:
    """Return the server's refusal message, or raise if it was something else."""
    text = str(exc)
    fatal = text.find("FATAL:")
    message = " ".join(text[fatal:].split()) if fatal >= 0 else " ".join(text.split())
    if RESERVED_SLOTS_REFUSAL in message or TOO_MANY_CLIENTS in message:
        return message
    raise SandboxError(
        "connection failed, but not for lack of slots",
        target=target,
        step="exhaust connections",
        detail=message,
    ) from exc


@dataclass
class RedisOOM:
    """What :func:`fill_until_oom` wrote and how Redis refused."""

    keys_by_prefix: dict[str, int]
    error: str
    rejected: int
    used_memory: int
    maxmemory: int
    seconds: float


def fill_until_oom(
    rs: RedisServer,
    prefixes: Mapping[str, Mapping[str, Any]] | None = None,
    rejected_writes: int = 25,
    batch_size: int = 1000,
    max_keys: int = 2_000_000,
    max_seconds: float = 60.0,
) -> RedisOOM:
    """Write Paracle-like keys until Redis refuses a write for lack of memory.

    ``prefixes`` maps a key prefix to its ``share`` of the keys written, its
    ``value_size`` in bytes and its ``ttl`` in seconds (None: no expiry);
    writes are interleaved by share, so every prefix is present. After the
    first refusal, writes continue until ``rejected_writes`` more were
    refused, so ``INFO errorstats`` counts ``rejected_writes + 1`` OOM errors.
    """
    families = _check_prefixes(prefixes or DEFAULT_PREFIXES)
    keys_by_prefix = dict.fromkeys(families, 0)
    started = time.monotonic()

    client = rs.client()
    try:
        maxmemory = _require_noeviction(client)
        error, rejected = _write_until_refused(
            client,
            families,
            keys_by_prefix,
            maxmemory,
            batch_size,
            max_keys=max_keys,
            deadline=started + max_seconds,
            target=rs.url,
        )

        # Repeat the refusal as clients retrying would, one write at a time.
        first = next(iter(families))
        for _ in range(max(0, rejected_writes - rejected)):
            try:
                client.set(_key_name(first), families[first]["blob"])
                keys_by_prefix[first] += 1
            except redis.ResponseError as exc:
                _oom_text(exc, rs.url)
                rejected += 1
        used_memory = _used_memory(client)
    finally:
        client.close()

    oom = RedisOOM(
        keys_by_prefix=keys_by_prefix,
        error=error,
        rejected=rejected,
        used_memory=used_memory,
        maxmemory=maxmemory,
        seconds=time.monotonic() - started,
    )
    logger.info(
        "Redis full after %d keys in %.1f s; %d writes refused",
        sum(keys_by_prefix.values()),
        oom.seconds,
        rejected + 1,
    )
    return oom


def _write_until_refused(
    client: redis.Redis,
    families: Mapping[str, Mapping[str, Any]],
    keys_by_prefix: dict[str, int],
    maxmemory: int,
    batch_size: int,
    *,
    max_keys: int,
    deadline: float,
    target: str,
) -> tuple[str, int]:
    """Pipeline writes until one is refused; return its text and later refusals.

    Pipelines are big while there is room and shrink near the limit, so
    the first refused write is, nearly always, the last one sent.
    """
    schedule = _interleave({p: spec["share"] for p, spec in families.items()})
    baseline = _used_memory(client)
    written = 0

    while written < max_keys and time.monotonic() < deadline:
        used = _used_memory(client)
        if 0 <= maxmemory - used < OVERSHOOT:
            # Land well past the limit (as a lowered maxmemory would), so the
            # incident holds while a few keys expire or buffers shrink.
            first = next(iter(families))
            client.config_set("maxmemory", maxmemory + 2 * OVERSHOOT)
            try:
                client.set(f"{first}blob:{next(_key_serial)}", b"x" * OVERSHOOT)
            finally:
                client.config_set("maxmemory", maxmemory)
            keys_by_prefix[first] += 1
            continue
        per_key = max((used - baseline) / written, 1.0) if written else 2048.0
        batch = max(1, min(batch_size, int((maxmemory - used) / per_key) // 2))

        pipe = client.pipeline(transaction=False)
        sent = [next(schedule) for _ in range(batch)]
        for prefix in sent:
            spec = families[prefix]
            pipe.set(_key_name(prefix), spec["blob"], ex=spec["ttl"])
        refusals = []
        for prefix, result in zip(sent, pipe.execute(raise_on_error=False),
                                  strict=True):
            if isinstance(result, Exception):
                refusals.append(_oom_text(result, target))
            elif result:
                keys_by_prefix[prefix] += 1
        written += batch

        if refusals:
            return refusals[0], len(refusals) - 1

    raise SandboxError(
        f"no out-of-memory refusal after {written} keys",
        target=target,
        step="fill until OOM",
    )


def seed_redis(
    rs: RedisServer,
    n: int = 2000,
    prefixes: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, int]:
    """Write ``n`` Paracle-like keys, well under maxmemory; returns per prefix."""
    families = _check_prefixes(prefixes or DEFAULT_PREFIXES)
    schedule = _interleave({p: spec["share"] for p, spec in families.items()})
    keys_by_prefix = dict.fromkeys(families, 0)

    client = rs.client()
    try:
        pipe = client.pipeline(transaction=False)
        for _ in range(n):
            prefix = next(schedule)
            spec = families[prefix]
            pipe.set(_key_name(prefix), spec["blob"], ex=spec["ttl"])
            keys_by_prefix[prefix] += 1
        pipe.execute()

        memory = client.info("memory")
        maxmemory = int(memory.get("maxmemory", 0))
        if maxmemory and memory["used_memory"] > maxmemory / 2:
            warnings.warn(
                f"seeded Redis uses {memory['used_memory']} of {maxmemory} "
                "bytes: not the healthy baseline intended",
                stacklevel=2,
            )
    finally:
        client.close()
    return keys_by_prefix


def recover_redis(rs: RedisServer) -> None:
    """Lab only: drop every key, reset error stats, restore the start config."""
    client = rs.client()
    try:
        client.flushall()
        client.config_set("maxmemory", rs.maxmemory)
        client.config_set("maxmemory-policy", rs.maxmemory_policy)
        client.config_set("maxclients", rs.maxclients)
        client.config_resetstat()
    finally:
        client.close()
    logger.info("Redis lab server on port %d recovered", rs.port)


def _check_prefixes(
    prefixes: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Validate key families and attach one value blob to each."""
    families: dict[str, dict[str, Any]] = {}
    for prefix, spec in prefixes.items():
        share = float(spec.get("share", 0))
        size = int(spec.get("value_size", 0))
        ttl = spec.get("ttl")
        if share <= 0 or size <= 0 or (ttl is not None and int(ttl) <= 0):
            raise SandboxError(
                f"key family {prefix!r} needs share > 0, value_size > 0 and a "
                "positive ttl or None",
                step="fill Redis",
            )
        families[prefix] = {
            "share": share,
            "ttl": None if ttl is None else int(ttl),
            "blob": os.urandom(size),
        }
    if not families:
        raise SandboxError("no key families to write", step="fill Redis")
    return families


def _interleave(shares: Mapping[str, float]) -> Iterator[str]:
    """Yield prefixes in proportion to their shares, evenly spread."""
    total = sum(shares.values())
    credit = dict.fromkeys(shares, 0.0)
    while True:
        for prefix, share in shares.items():
            credit[prefix] += share
        chosen = max(credit, key=lambda p: credit[p])
        credit[chosen] -= total
        yield chosen


def _key_name(prefix: str) -> str:
    """Return a fresh key name in the style of ``prefix``'s family."""
    n = next(_key_serial)
    if prefix == "cache:":
        return f"cache:user:{n}:profile"
    if prefix == "session:":
        digest = hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16)
        return f"session:{digest.hexdigest()}"
    if prefix == "ratelimit:":
        return f"ratelimit:10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
    return f"{prefix}{n}"


def _require_noeviction(client: redis.Redis) -> int:
    """Make sure writes are refused, not evicted; return maxmemory in bytes."""
    config: dict[Any, Any] = dict(client.config_get("maxmemory*"))
    policy = _text(config.get(b"maxmemory-policy", config.get("maxmemory-policy")))
    if policy != "noeviction":
        logger.info("setting maxmemory-policy noeviction (was %s)", policy)
        client.config_set("maxmemory-policy", "noeviction")

    maxmemory = int(config.get(b"maxmemory", config.get("maxmemory", 0)) or 0)
    if maxmemory <= 0:
        raise SandboxError(
            "Redis has no maxmemory limit, so it would never refuse a write; "
            "set one (CONFIG SET maxmemory 32mb)",
            step="fill until OOM",
        )
    return maxmemory


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _oom_text(exc: Exception, target: str) -> str:
    """Return the OOM refusal text, or raise if the write failed otherwise."""
    text = str(exc)
    if REDIS_OOM not in text:
        raise SandboxError(
            "a write failed, but not for lack of memory",
            target=target,
            step="fill until OOM",
            detail=text,
        ) from exc
    return text


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
