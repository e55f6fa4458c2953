"""The lab's Redis server and the out-of-memory incident."""

from __future__ import annotations

import stat
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from paracle_nb.sandbox import procs
from paracle_nb.sandbox.incidents import (
    REDIS_OOM,
    fill_until_oom,
    recover_redis,
    seed_redis,
)
from paracle_nb.sandbox.redis_server import RedisServer

pytestmark = pytest.mark.servers


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The shared Redis, emptied before and after the test."""
    recover_redis(redis_server)
    yield redis_server
    recover_redis(redis_server)


def _count(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=1000))


def test_start_and_stop_free_pid_and_port() -> None:
    with RedisServer(maxmemory="8mb") as rs:
        pid, port, work_dir = rs.pid, rs.port, rs.work_dir
        assert procs.pid_alive(pid)
        assert procs.port_accepts(port)
        client = rs.client()
        try:
            assert client.info("server")["process_id"] == pid
        finally:
            client.close()

    assert not procs.pid_alive(pid)
    assert procs.port_is_free(port)
    assert work_dir is not None and not work_dir.exists()


def test_password_is_required(redis_server: RedisServer) -> None:
    rs = redis_server
    assert rs.url == f"redis://127.0.0.1:{rs.port}/0"
    assert stat.S_IMODE(rs.password_file.stat().st_mode) == 0o600
    assert rs.password_file.read_text() == rs.password

    for password in (None, "not-the-password"):
        client = redis.Redis(
            host=rs.host, port=rs.port, password=password, retry=Retry(NoBackoff(), 0)
        )
        try:
            with pytest.raises(redis.AuthenticationError):
                client.ping()
        finally:
            client.close()


def test_config_is_as_asked(redis_server: RedisServer) -> None:
    client = redis_server.client()
    try:
        config = client.config_get("*")
    finally:
        client.close()
    assert config["maxmemory"] == str(32 * 1024 * 1024)
    assert config["maxmemory-policy"] == "noeviction"
    assert config["bind"] == "127.0.0.1"
    assert config["protected-mode"] == "yes"
    assert config["save"] == ""
    assert config["appendonly"] == "no"


def test_seeded_redis_is_healthy(clean_redis: RedisServer) -> None:
    written = seed_redis(clean_redis, n=2000)
    assert written == {"cache:": 1200, "session:": 600, "ratelimit:": 200}

    client = clean_redis.client()
    try:
        assert client.dbsize() == 2000
        memory = client.info("memory")
        assert memory["used_memory"] < memory["maxmemory"] / 2
        session = next(client.scan_iter(match="session:*"))
        assert 0 < client.ttl(session) <= 3600
        assert client.ttl(next(client.scan_iter(match="cache:user:*"))) == -1
    finally:
        client.close()


def test_fill_until_oom_then_recover(clean_redis: RedisServer) -> None:
    rs = clean_redis
    client = rs.client()
    try:
        # The fill must switch an evicting policy back to noeviction.
        client.config_set("maxmemory-policy", "allkeys-lru")
        oom = fill_until_oom(rs, rejected_writes=25)

        assert REDIS_OOM in oom.error
        assert oom.rejected == 25
        assert all(n > 0 for n in oom.keys_by_prefix.values())
        for prefix, n in oom.keys_by_prefix.items():
            assert _count(client, f"{prefix}*") == n
        errors = client.info("errorstats")
        assert errors["errorstat_OOM"]["count"] >= oom.rejected + 1
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            client.set("cache:user:0:profile", b"x" * 100)

        recover_redis(rs)
        assert client.dbsize() == 0
        assert client.info("errorstats") == {}
        assert client.config_get("maxmemory-policy") == {
            "maxmemory-policy": "noeviction"
        }
        assert client.set("cache:user:0:profile", b"x" * 100)
    finally:
        client.close()
