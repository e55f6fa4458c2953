"""Deleting 1,000,000 ``cache:*`` keys out of 2,000,000, against the guide's pipeline.

Baseline: ``redis-cli --scan --pattern 'cache:*' | xargs redis-cli DEL``,
run locally against the same server. Ours: :func:`delete_matching`. The
server is re-loaded before every run, and after every run the data left
must be the same: one million keys, none matching, and the same digest
(``DEBUG DIGEST`` covers every key and value) on both sides.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

from bench.common import BenchmarkError, Result, Run, in_turns, timed_child
from paracle_nb.redis_delete import delete_matching
from paracle_nb.sandbox.redis_server import RedisServer

NAME = "redis-delete"
TARGET = 0.25
WHAT = "delete 1M cache:* keys of 2M: delete_matching vs redis-cli --scan | xargs DEL"

PATTERN = "cache:*"
MATCHING = 1_000_000
# Keys that must stay: plain ones, and some that hold "cache" elsewhere.
LOOKALIKES = ("user:cache:{}", "cachex:{}", "Cache:{}", "cache-{}", "xcache:{}")
LOOKALIKES_EACH = 2000
PLAIN = 1_000_000 - len(LOOKALIKES) * LOOKALIKES_EACH

_COUNT_MATCHING = """
local reply = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 20000)
return {reply[1], #reply[2]}
"""


def run(repeat: int, workdir: Path) -> Result:
    """Load, delete and check ``repeat`` times per side, in turns."""
    if shutil.which("redis-cli") is None:
        raise BenchmarkError("redis-cli is not installed (the baseline needs it)")
    result = Result(NAME, TARGET)
    with RedisServer(maxmemory="0") as server:
        client = server.client(socket_timeout=120)
        digests: set[str] = set()
        busy: dict[str, list[float]] = {"ours": [], "baseline": []}

        def ours() -> Run:
            started = time.perf_counter()
            deleted = delete_matching(client, PATTERN)
            seconds = time.perf_counter() - started
            if deleted.keys != MATCHING:
                raise BenchmarkError(f"deleted {deleted.keys} keys, not {MATCHING}")
            busy["ours"].append(_server_seconds(client))
            digests.add(_check_left(client))
            return Run(seconds)

        def baseline() -> Run:
            env = dict(os.environ, REDISCLI_AUTH=server.password)
            cli = f"redis-cli -h {server.host} -p {server.port}"
            measured = timed_child(
                ["sh", "-c", f"{cli} --scan --pattern '{PATTERN}' | xargs {cli} DEL"],
                env=env)
            busy["baseline"].append(_server_seconds(client))
            digests.add(_check_left(client))
            return measured

        in_turns(result, repeat, ours, baseline, between=lambda: _load(client))
        client.close()
    if len(digests) != 1:
        raise BenchmarkError("ours and the baseline left different data behind")
    result.notes.append(f"same {MATCHING} keys deleted on every run (digest checked)")
    result.notes.append(
        "Redis busy scanning and deleting (median, INFO commandstats): ours "
        f"{statistics.median(busy['ours']):.2f} s, baseline "
        f"{statistics.median(busy['baseline']):.2f} s")
    return result


def _load(client) -> None:  # type: ignore[no-untyped-def]
    """Flush, then write the 2,000,000 keys (DEBUG POPULATE is the fast way)."""
    client.flushall()
    client.execute_command("DEBUG", "POPULATE", MATCHING, "cache", 16)
    client.execute_command("DEBUG", "POPULATE", PLAIN, "session", 16)
    pipe = client.pipeline(transaction=False)
    for name in LOOKALIKES:
        pipe.mset({name.format(i): b"v" * 16 for i in range(LOOKALIKES_EACH)})
    pipe.execute()
    if client.dbsize() != MATCHING * 2:
        raise BenchmarkError(f"loaded {client.dbsize()} keys, not {MATCHING * 2}")
    client.config_resetstat()


def _server_seconds(client) -> float:  # type: ignore[no-untyped-def]
    """Return the time Redis spent in SCAN and deletes since the last reset.

    A script's SCAN and UNLINK calls count on their own, so the script
    itself is left out.
    """
    stats = client.info("commandstats")
    spent = sum(stats.get(f"cmdstat_{name}", {}).get("usec", 0)
                for name in ("scan", "del", "unlink"))
    return float(spent) / 1e6


def _check_left(client) -> str:  # type: ignore[no-untyped-def]
    """Check what a delete left; return the digest of it."""
    left = client.dbsize()
    if left != MATCHING:
        raise BenchmarkError(f"{left} keys left, not {MATCHING}")
    count = client.register_script(_COUNT_MATCHING)
    cursor, matching = b"0", 0
    while True:
        cursor, found = count(args=[cursor, PATTERN])
        matching += found
        if int(cursor) == 0:
            break
    if matching:
        raise BenchmarkError(f"{matching} keys matching {PATTERN} survived")
    return str(client.execute_command("DEBUG", "DIGEST"))
