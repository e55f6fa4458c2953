"""Redis key remediation that can be applied: delete by pattern, FLUSHDB, TTLs.

The guide clears a full cache with ``FLUSHDB`` or ``redis-cli --scan |
xargs DEL``. Here a delete goes by pattern with SCAN and UNLINK in
batches (:mod:`paracle_nb.redis_delete`) and leaves every other key; only
the pattern ``*`` becomes a FLUSHDB plan (never FLUSHALL), and that one
asks for a second confirmation naming the database.

A live cache changes by the second, so a plan's id holds the pattern, the
database and the matched count rounded to two significant figures: a plan
still stands when a few keys came and went, and is shown again when the
cache is no longer the one the engineer saw.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from paracle_nb import redis as redis_helpers
from paracle_nb.actions import Plan, _frame
from paracle_nb.errors import (
    ParacleError,
    ParameterError,
    PermissionDenied,
    TargetUnreachable,
)
from paracle_nb.findings import Finding, Severity
from paracle_nb.redis_delete import (
    DEFAULT_BATCH,
    check_pattern,
    count_matching,
    delete_matching,
    literal_part,
)
from paracle_nb.target import Target
from paracle_nb.units import format_bytes, format_duration, parse_duration

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

DELETE_NEEDS = ("needs a Redis user allowed +scan +unlink +info, and +evalsha "
                "+script|load for the server-side batches (the remediation user); "
                "the read-only runbook user may only count.")
FLUSH_NEEDS = "needs a Redis user allowed +flushdb (the remediation user)."
TTL_NEEDS = ("needs a Redis user allowed +scan +ttl +expire (the remediation "
             "user); the read-only runbook user may only count.")

# NOPERM (ACL), a script's call refused by the ACL, or a command renamed
# away (managed Redis renames CONFIG and FLUSHDB): the user may not do this.
_REFUSED = re.compile(r"NOPERM|no permissions|can't run this command|"
                      r"unknown command", re.IGNORECASE)
_LAZYFREE_WAIT_S = 5.0
_EXAMPLE_CHARS = 40
_VERIFY_SAMPLE = 1000
_DELETE_COLUMNS = ["db", "pattern", "keys", "memory (est.)", "examples"]
_TTL_COLUMNS = ["db", "pattern", "which keys", "keys", "before", "after"]


def guarded(target: Target, what: str, call: Callable[..., Any], *args: Any,
            **kwargs: Any) -> Any:
    """Run one Redis call of a remediation; a refusal is PermissionDenied.

    Other client errors become the read helpers' errors (unreachable,
    timeout, refused credentials).
    """
    try:
        return redis_helpers._guard(target, what, functools.partial(call, **kwargs),
                                    *args)
    except TargetUnreachable as exc:
        if exc.detail and _REFUSED.search(exc.detail):
            raise PermissionDenied(f"Redis refused {what}", target="redis",
                                   detail=exc.detail) from None
        raise


def about(count: int) -> int:
    """Return ``count`` rounded to two significant figures.

    >>> about(51234), about(999_999), about(87)
    (51000, 1000000, 87)
    """
    if count < 100:
        return count
    return round(count, 2 - len(str(count)))


def database(client: redis.Redis) -> int:
    """Return the database number a client works on."""
    return int(client.connection_pool.connection_kwargs.get("db") or 0)


def _connect_to(target: Target, db: int) -> redis.Redis:
    """Connect to the target, refusing if it is not the planned database."""
    client = redis_helpers.connect(target)
    if database(client) != db:
        client.close()
        raise ParacleError(f"the plan was made for db {db}, the target points at "
                           f"db {database(client)}: not applied", target="redis")
    return client


def _with_client(target: Target, build: Callable[[redis.Redis], Plan]) -> Plan:
    """Build a plan on a fresh connection to the target (for ``replan``)."""
    client = redis_helpers.connect(target)
    try:
        return build(client)
    finally:
        client.close()


def _matching_pattern(pattern: str) -> str:
    """Return a pattern that names some keys; a catch-all is a ParameterError."""
    if pattern.strip() and not literal_part(pattern):
        raise ParameterError(f"pattern {pattern!r} matches (nearly) every key, "
                             "sessions included: name the prefix to clear, e.g. "
                             "'cache:*', or '*' for a FLUSHDB plan")
    try:
        return check_pattern(pattern)
    except ParacleError as exc:
        raise ParameterError(exc.message, target="redis") from None


# Known shortcoming: an example key name is shown as it is, cut to 40
# characters; a key that embeds a credential (a session id) shows its start.
def _examples(target: Target, client: redis.Redis, pattern: str,
              sample: int) -> list[str]:
    """Return up to ``sample`` key names matching the pattern, shortened."""
    keys = guarded(target, "SCAN", _first_matches, client, pattern, sample)
    names = [key.decode(errors="replace") for key in keys]
    return [name if len(name) <= _EXAMPLE_CHARS
            else name[:_EXAMPLE_CHARS] + "..." for name in names]


def _first_matches(client: redis.Redis, pattern: str, wanted: int,
                   pages: int = 50) -> list[bytes]:
    """Return the first ``wanted`` matches from at most ``pages`` SCAN pages."""
    found: list[bytes] = []
    cursor = 0
    for _ in range(pages):
        cursor, keys = client.scan(cursor, match=pattern, count=1000)
        found.extend(cast("list[bytes]", keys))
        if len(found) >= wanted or int(cursor) == 0:
            break
    return found[:wanted]


def _used_memory(target: Target, client: redis.Redis) -> int:
    """Return ``used_memory`` once lazily freed objects are gone (bounded)."""
    deadline = time.monotonic() + _LAZYFREE_WAIT_S
    while True:
        info = guarded(target, "INFO memory", client.info, "memory")
        pending = int(info.get("lazyfree_pending_objects", 0))
        if not pending or time.monotonic() > deadline:
            return int(info["used_memory"])
        time.sleep(0.05)


def plan_delete_by_pattern(target: Target, client: redis.Redis, pattern: str,
                           *, sample: int = 5, batch: int = DEFAULT_BATCH) -> Plan:
    """Plan deleting the keys matching a pattern: count, bytes, examples.

    Every key is counted with SCAN; the bytes are estimated from ``MEMORY
    USAGE`` of a sample. The pattern ``*`` gives a FLUSHDB plan instead
    (:func:`plan_flushdb`), which needs a second confirmation.

    >>> plan = plan_delete_by_pattern(target, client, "cache:*")  # doctest: +SKIP
    >>> plan.apply()  # asks for the plan id
    """
    if pattern.strip() == "*":
        return plan_flushdb(target, client, sample=sample)
    pattern = _matching_pattern(pattern)
    db = database(client)
    count, size = guarded(target, "SCAN and MEMORY USAGE", count_matching,
                          client, pattern, batch=batch)
    examples = _examples(target, client, pattern, sample) if count else []

    rows = [{"db": db, "pattern": pattern, "keys": count,
             "memory (est.)": format_bytes(size),
             "examples": ", ".join(examples)}] if count else []
    notes = [f"Deleted with SCAN MATCH and UNLINK, {batch} keys a step, in db "
             f"{db} only; every other key stays; never FLUSHDB.",
             "Keys written while the delete runs may be missed (SCAN); the "
             "check afterwards counts what still matches.",
             "Memory is an estimate from MEMORY USAGE of a sample of the keys."]

    def execute(plan: Plan) -> dict[str, Any]:
        client = _connect_to(target, db)
        try:
            used_before = _used_memory(target, client)
            result = guarded(target, "SCAN and UNLINK", delete_matching, client,
                             pattern, batch=batch)
        finally:
            client.close()
        return {"deleted": result.keys, "bytes_freed": result.bytes_freed,
                "used_memory_before": used_before,
                "seconds": round(result.seconds, 3)}

    def verify(plan: Plan, applied: dict[str, Any]) -> Finding:
        client = _connect_to(target, db)
        try:
            left, _ = guarded(target, "SCAN", count_matching, client, pattern,
                              batch=batch)
            used_after = _used_memory(target, client)
        finally:
            client.close()
        freed = max(applied["used_memory_before"] - used_after, 0)
        return Finding(
            "remediation-applied" if not left else "remediation-incomplete",
            Severity.INFO if not left else Severity.WARNING,
            f"Deleted {applied['deleted']:,} key(s) matching {pattern!r} in db "
            f"{db} (planned {count:,}) in {applied['seconds'] * 1000:,.0f} ms; "
            "used memory "
            f"{format_bytes(applied['used_memory_before'])} -> "
            f"{format_bytes(used_after)} ({format_bytes(freed)} freed); "
            f"{left:,} key(s) match now"
            + (" (written since)." if left else "."),
            {**applied, "after": {"keys_matching": left, "used_memory": used_after,
                                  "bytes_freed": freed}})

    return Plan(f"delete keys matching {pattern} in db {db}: about "
                f"{about(count):,}", _frame(rows, _DELETE_COLUMNS),
                f"SCAN 0 MATCH {pattern} COUNT {batch} ... then UNLINK each "
                "batch's keys", notes, kind="redis.delete_by_pattern",
                target=target, executor=execute, verifier=verify,
                replan=lambda: _with_client(target, lambda c: plan_delete_by_pattern(
                    target, c, pattern, sample=sample, batch=batch)),
                key_columns=["db", "pattern"], needs=DELETE_NEEDS)


def plan_flushdb(target: Target, client: redis.Redis, *, sample: int = 5) -> Plan:
    """Plan ``FLUSHDB ASYNC`` of the client's database (never FLUSHALL).

    Applying needs the plan id and then the phrase ``FLUSHDB db<n>``.
    """
    db = database(client)
    keys = int(guarded(target, "DBSIZE", client.dbsize))
    info = guarded(target, "INFO memory", client.info, "memory")
    examples = _examples(target, client, "*", sample) if keys else []
    phrase = f"FLUSHDB db{db}"

    rows = [{"db": db, "pattern": "*", "keys": keys,
             "memory (est.)": format_bytes(int(info.get("used_memory_dataset", 0))),
             "examples": ", ".join(examples)}] if keys else []
    notes = [f"Deletes EVERY key of db {db}: sessions, rate limits, queues, not "
             "only the cache. Other databases are left alone (no FLUSHALL).",
             "Prefer a pattern that names the cache, e.g. 'cache:*'.",
             f"Irreversible: applying asks for the plan id, then for {phrase!r}; "
             f"a batch run needs both: -p apply '<plan id>,{phrase}'."]

    def execute(plan: Plan) -> dict[str, Any]:
        client = _connect_to(target, db)
        try:
            used_before = _used_memory(target, client)
            keys_before = int(guarded(target, "DBSIZE", client.dbsize))
            guarded(target, "FLUSHDB", client.flushdb, asynchronous=True)
        finally:
            client.close()
        return {"flushed_db": db, "keys_before": keys_before,
                "used_memory_before": used_before}

    def verify(plan: Plan, applied: dict[str, Any]) -> Finding:
        client = _connect_to(target, db)
        try:
            left = int(guarded(target, "DBSIZE", client.dbsize))
            used_after = _used_memory(target, client)
        finally:
            client.close()
        freed = max(applied["used_memory_before"] - used_after, 0)
        return Finding(
            "remediation-applied" if not left else "remediation-incomplete",
            Severity.INFO if not left else Severity.WARNING,
            f"Flushed db {db}: {applied['keys_before']:,} key(s) deleted, "
            f"{format_bytes(freed)} freed; {left:,} key(s) in db {db} now"
            + (" (written since)." if left else "."),
            {**applied, "after": {"keys": left, "used_memory": used_after,
                                  "bytes_freed": freed}})

    return Plan(f"FLUSHDB db {db}: delete all about {about(keys):,} key(s)",
                _frame(rows, _DELETE_COLUMNS), "FLUSHDB ASYNC",
                notes, kind="redis.flushdb", target=target, executor=execute,
                verifier=verify,
                replan=lambda: _with_client(target, lambda c: plan_flushdb(
                    target, c, sample=sample)),
                key_columns=["db", "pattern"], needs=FLUSH_NEEDS,
                second_confirmation=phrase)


def plan_shorter_ttls(target: Target, client: redis.Redis, pattern: str,
                      ttl: str | int | float, *, sample: int = 5,
                      batch: int = DEFAULT_BATCH) -> Plan:
    """Plan a TTL of at most ``ttl`` on the keys matching a pattern.

    Keys without a TTL get one, keys whose TTL is longer get the shorter
    one, keys that expire sooner keep theirs: ``EXPIRE key ttl LT`` (Redis
    7), in pipelined batches over SCAN.

    >>> plan_shorter_ttls(target, client, "cache:*", "5min")  # doctest: +SKIP
    """
    seconds = int(parse_duration(ttl))
    if seconds < 1:
        raise ParameterError(f"a TTL must be at least 1s, got {ttl!r}")
    pattern = _matching_pattern(pattern)
    db = database(client)
    census = guarded(target, "SCAN and TTL", _ttl_census, client, pattern,
                     seconds, batch)
    after = f"expires within {format_duration(seconds)}"

    rows = []
    if census["without"]:
        rows.append({"which keys": "without a TTL", "keys": census["without"],
                     "before": "no expiry", "after": after})
    if census["longer"]:
        rows.append({"which keys": f"TTL over {format_duration(seconds)}",
                     "keys": census["longer"],
                     "before": f"up to {format_duration(census['longest'])}",
                     "after": after})
    changing = census["without"] + census["longer"]
    notes = [f"{census['kept']:,} matching key(s) expire sooner and keep their "
             "TTL (EXPIRE ... LT); keys not matching are not touched.",
             "An expired cache key is a miss that the API reloads: keys that "
             "expire together make a burst of misses.",
             "New keys get the application's TTL (CACHE_TTL): change it too.",
             "EXPIRE ... LT needs Redis 7."]

    def execute(plan: Plan) -> dict[str, Any]:
        client = _connect_to(target, db)
        try:
            _require_redis_7(target, client)
            done = guarded(target, "SCAN and EXPIRE", _expire_lt, client, pattern,
                           seconds, batch)
        finally:
            client.close()
        return {"ttl_set": done["set"], "kept": done["kept"], "ttl_s": seconds}

    def verify(plan: Plan, applied: dict[str, Any]) -> Finding:
        client = _connect_to(target, db)
        try:
            keys = guarded(target, "SCAN", _first_matches, client, pattern,
                           _VERIFY_SAMPLE)
            left = guarded(target, "TTL", _ttls, client, keys)
        finally:
            client.close()
        without = sum(1 for t in left if t == -1)
        longer = sum(1 for t in left if t > seconds)
        ok = not without and not longer
        return Finding(
            "remediation-applied" if ok else "remediation-incomplete",
            Severity.INFO if ok else Severity.WARNING,
            f"Set a TTL of {format_duration(seconds)} on {applied['ttl_set']:,} "
            f"key(s) matching {pattern!r} in db {db} (planned {changing:,}); "
            f"{applied['kept']:,} kept a shorter one. Of {len(left)} sampled "
            f"now: {without} without TTL, {longer} longer"
            + ("." if ok else " (written since?)."),
            {**applied, "after": {"sampled": len(left), "without_ttl": without,
                                  "longer_than_ttl": longer}})

    return Plan(f"expire about {about(changing):,} key(s) matching {pattern!r} in "
                f"db {db} within {format_duration(seconds)}",
                _frame([{"db": db, "pattern": pattern, **r} for r in rows],
                       _TTL_COLUMNS),
                f"SCAN 0 MATCH {pattern} COUNT {batch} ... then for each key: "
                f"EXPIRE <key> {seconds} LT", notes, kind="redis.shorter_ttls",
                target=target, executor=execute, verifier=verify,
                replan=lambda: _with_client(target, lambda c: plan_shorter_ttls(
                    target, c, pattern, seconds, sample=sample, batch=batch)),
                key_columns=["db", "pattern", "which keys", "after"],
                needs=TTL_NEEDS)


def _pages(client: redis.Redis, pattern: str, batch: int) -> Iterator[list[bytes]]:
    """Yield the matches of each SCAN step that found any."""
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, match=pattern, count=batch)
        if keys:
            yield cast("list[bytes]", keys)
        if int(cursor) == 0:
            return


def _ttls(client: redis.Redis, keys: list[bytes]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.ttl(key)
    return [int(t) for t in pipe.execute()]


def _ttl_census(client: redis.Redis, pattern: str, ttl: int,
                batch: int) -> dict[str, int]:
    """Count matching keys without a TTL, with a longer one, and the rest."""
    census = {"without": 0, "longer": 0, "kept": 0, "longest": 0}
    for keys in _pages(client, pattern, batch):
        for left in _ttls(client, keys):
            if left == -1:
                census["without"] += 1
            elif left > ttl:
                census["longer"] += 1
                census["longest"] = max(census["longest"], left)
            elif left >= 0:  # -2: expired or deleted since the SCAN
                census["kept"] += 1
    return census


def _expire_lt(client: redis.Redis, pattern: str, ttl: int,
               batch: int) -> dict[str, int]:
    """Apply ``EXPIRE key ttl LT`` to every match, one pipeline per SCAN step."""
    done = {"set": 0, "kept": 0}
    for keys in _pages(client, pattern, batch):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.expire(key, ttl, lt=True)
        for changed in pipe.execute():
            done["set" if changed else "kept"] += 1
    return done


def _require_redis_7(target: Target, client: redis.Redis) -> None:
    info = guarded(target, "INFO server", client.info, "server")
    version = str(info.get("redis_version", "0"))
    if int(version.split(".")[0]) < 7:
        raise ParacleError(f"EXPIRE ... LT needs Redis 7; this server runs "
                           f"{version}: not applied", target="redis")
