"""The pattern delete at scale: 1,000,000 of 2,000,000 keys, exactly those.

The longest test of the suite (under a minute on two cores): the size is
what the guide's pipeline gets wrong, so it is checked at that size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from paracle_nb.actions_redis_keys import plan_delete_by_pattern
from paracle_nb.sandbox.redis_server import RedisServer
from paracle_nb.target import Target

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("audit")]

# Keys named "<prefix>:<n>"; the two lookalikes share the word "cache".
LOAD = {"cache": 1_000_000, "cachex": 500_000, "session": 500_000}



def count(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=10_000))


def test_a_million_matching_keys_are_deleted_and_the_other_million_kept(
        audit: Path) -> None:
    with RedisServer(maxmemory="1gb") as server:
        client = server.client()
        for prefix, keys in LOAD.items():
            # Written by the server itself: a pipelined load takes 3x longer.
            client.execute_command("DEBUG", "POPULATE", keys, prefix, 16)
        assert client.dbsize() == 2_000_000
        target = Target.from_parameters({
            "environment": "test", "redis_url": server.url,
            "redis_password_file": str(server.password_file),
            "timeout_seconds": 10.0})

        plan = plan_delete_by_pattern(target, client, "cache:*")
        assert plan.rows()[0]["keys"] == 1_000_000
        result = plan.apply(confirm=plan.id)

        assert result.outcome == "applied", result.finding.summary
        assert result.record["applied"]["deleted"] == 1_000_000
        assert result.finding.evidence["after"]["keys_matching"] == 0
        assert result.finding.evidence["after"]["bytes_freed"] > 50 * 2**20
        assert count(client, "cache:*") == 0
        assert count(client, "cachex:*") == 500_000
        assert count(client, "session:*") == 500_000
        assert client.dbsize() == 1_000_000
        client.close()
