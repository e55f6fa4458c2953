"""Redis remediation against the lab server: planned, scoped, applied once.

The lab Redis is shared by the test session: every setting a test changes
is set back afterwards, and a test touches only keys under its own prefix.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from paracle_nb import remediate
from paracle_nb.actions import Plan
from paracle_nb.actions_redis import (
    plan_client_timeout,
    plan_eviction_policy,
    plan_maxclients,
    plan_maxmemory,
)
from paracle_nb.actions_redis_keys import (
    about,
    guarded,
    plan_delete_by_pattern,
    plan_shorter_ttls,
)
from paracle_nb.errors import ParameterError, PermissionDenied
from paracle_nb.redis_delete import delete_matching
from paracle_nb.remediate import read_audit
from paracle_nb.sandbox.redis_server import RedisServer
from paracle_nb.target import Target

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("audit")]

SETTINGS = ("maxmemory-policy", "maxmemory", "maxclients", "timeout")

# What a read-only runbook user may do: read keys and settings, never write.
READ_ONLY_RULES = ["+@read", "+@connection", "-@dangerous", "+info", "+config|get",
                   "+scan", "+memory|usage", "+dbsize"]

# Keys that share the words of `<prefix>:cache:*` without matching it.
LOOKALIKES = ("{p}:user:cache:{i}", "{p}:cachex:{i}", "{p}:Cache:{i}",
              "{p}:cache-{i}", "x{p}:cache:{i}")


def _target(server: RedisServer, user: str = "", password_file: str = "",
            db: int = 0) -> Target:
    where = f"{user}@" if user else ""
    return Target.from_parameters({
        "environment": "test",
        "redis_url": f"redis://{where}{server.host}:{server.port}/{db}",
        "redis_password_file": password_file or str(server.password_file),
        "timeout_seconds": 5.0})



@pytest.fixture()
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture()
def settings(client: redis.Redis) -> Iterator[dict[str, str]]:
    """The lab's settings before the test; set back whatever the test does."""
    saved = {name: _config(client, name) for name in SETTINGS}
    yield saved
    for name, value in saved.items():
        client.config_set(name, value)


@pytest.fixture()
def prefix(client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = "t" + secrets.token_hex(4)
    yield name
    delete_matching(client, f"{name}:*")
    delete_matching(client, f"x{name}:*")


@pytest.fixture()
def read_only(redis_server: RedisServer, client: redis.Redis,
              tmp_path: Path) -> Iterator[Callable[[list[str]], Target]]:
    """Make a Redis ACL user with the given rules; return a target using it."""
    made: list[str] = []

    def make(rules: list[str]) -> Target:
        user, password = f"ro-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
        client.acl_setuser(user, enabled=True, passwords=[f"+{password}"],
                           keys=["*"], commands=["-@all", *rules])
        made.append(user)
        password_file = tmp_path / f"{user}.password"
        password_file.write_text(password)
        password_file.chmod(0o600)
        return _target(redis_server, user, str(password_file))

    yield make
    if made:
        client.acl_deluser(*made)


def _config(client: redis.Redis, name: str) -> str:
    value = client.config_get(name)[name]
    return value.decode() if isinstance(value, bytes) else str(value)


def _state(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every setting, the key count, and this test's keys with a TTL class."""
    names = list(client.scan_iter(match=f"*{prefix}*", count=5000))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.ttl(name)
    ttls = pipe.execute() if names else []
    keys = {name: "none" if ttl == -1 else "long" if ttl > 600 else "short"
            for name, ttl in zip(names, ttls, strict=True)}
    return {"config": client.config_get("*"), "dbsize": client.dbsize(),
            "keys": keys}


def load(client: redis.Redis, names: list[str], ttl: int = 0) -> None:
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(names), 2000):
        batch = names[start:start + 2000]
        pipe.mset({name: b"v" * 32 for name in batch})
        if ttl:
            for name in batch:
                pipe.expire(name, ttl)
    pipe.execute()


CONFIG_PLANS: list[tuple[str, Callable[[Target], Plan], str]] = [
    ("maxmemory-policy",
     lambda t: plan_eviction_policy(None, "allkeys-lru", target=t), "allkeys-lru"),
    ("maxmemory", lambda t: plan_maxmemory(None, "48mb", target=t),
     str(48 * 2**20)),
    ("maxclients", lambda t: plan_maxclients(None, 5000, target=t), "5000"),
    ("timeout", lambda t: plan_client_timeout(None, 300, target=t), "300"),
]


@pytest.mark.parametrize("setting, build, after", CONFIG_PLANS,
                         ids=[c[0] for c in CONFIG_PLANS])
def test_a_setting_is_planned_without_change_and_applied_alone(
        redis_server: RedisServer, client: redis.Redis, settings: dict[str, str],
        audit: Path, setting: str, build: Callable[[Target], Plan],
        after: str) -> None:
    target = _target(redis_server)
    before = _state(client, "none")

    plan = build(target)

    assert _state(client, "none") == before
    [row] = plan.rows()
    assert row["setting"] == setting
    assert plan.id == build(target).id

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "applied", result.finding.summary
    changed = {k: v for k, v in client.config_get("*").items()
               if before["config"].get(k) != v}
    assert changed == {setting: after}
    assert result.finding.evidence["after"][setting] == after
    assert "until restart" in result.finding.summary
    assert plan.apply(confirm=plan.id).outcome == "already-applied"
    record, again = read_audit(audit)  # every attempt is audited
    assert (record["outcome"], again["outcome"]) == ("applied", "already-applied")
    assert record["kind"] == f"redis.config.{setting}"
    assert record["planned"] == [row] and record["who"] and record["host"]
    assert redis_server.password not in audit.read_text()


def test_a_setting_already_at_the_value_is_nothing_to_do(
        redis_server: RedisServer, settings: dict[str, str]) -> None:
    plan = plan_eviction_policy(None, settings["maxmemory-policy"],
                                target=_target(redis_server))
    assert plan.empty
    assert plan.apply(confirm=plan.id).outcome == "nothing-to-do"


def test_nonsense_settings_are_refused(redis_server: RedisServer) -> None:
    target = _target(redis_server)
    with pytest.raises(ParameterError, match="not above the current"):
        plan_maxmemory(None, "16mb", target=target)
    with pytest.raises(ParameterError, match="whole number"):
        plan_maxclients(None, 0, target=target)
    with pytest.raises(ParameterError, match="whole number"):
        plan_client_timeout(None, "soon", target=target)


def test_a_setting_changed_since_shown_is_reshown_not_applied(
        redis_server: RedisServer, client: redis.Redis,
        settings: dict[str, str]) -> None:
    plan = plan_client_timeout(None, 300, target=_target(redis_server))
    client.config_set("timeout", "120")  # someone else got there first

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "changed"
    assert result.fresh is not None
    assert result.fresh.rows()[0]["before"] == 120
    assert _config(client, "timeout") == "120"


def test_a_batch_run_without_confirmation_changes_nothing(
        redis_server: RedisServer, client: redis.Redis, settings: dict[str, str],
        prefix: str) -> None:
    load(client, [f"{prefix}:cache:{i}" for i in range(500)])
    target = _target(redis_server)
    before = _state(client, prefix)
    plans = [build(target) for _, build, _ in CONFIG_PLANS]
    plans.append(plan_delete_by_pattern(target, client, f"{prefix}:cache:*"))
    plans.append(plan_shorter_ttls(target, client, f"{prefix}:cache:*", "1min"))

    results = [plan.apply() for plan in plans]
    results += [plan.apply(confirm="0000000000") for plan in plans]

    assert {r.outcome for r in results} == {"not-confirmed"}
    assert "-p apply " + plans[0].id in results[0].finding.summary
    assert _state(client, prefix) == before


def test_a_user_without_config_set_is_refused_with_a_finding(
        redis_server: RedisServer, client: redis.Redis, settings: dict[str, str],
        read_only: Callable[[list[str]], Target], audit: Path) -> None:
    plan = plan_client_timeout(None, 300, target=read_only(READ_ONLY_RULES))
    assert plan.rows()[0]["before"] == int(settings["timeout"])

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "forbidden"
    assert result.finding.severity.value == "critical"
    assert "+config|set" in result.finding.summary
    assert "no permissions" in result.finding.summary
    assert _config(client, "timeout") == settings["timeout"]
    assert read_audit(audit)[0]["outcome"] == "forbidden"


def test_a_user_that_may_not_even_read_settings_still_gets_a_plan(
        redis_server: RedisServer, client: redis.Redis, settings: dict[str, str],
        read_only: Callable[[list[str]], Target]) -> None:
    target = read_only(["+@connection", "+info"])
    plan = plan_maxclients(None, 5000, target=target)
    assert plan.rows()[0]["before"] == "unknown"

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "forbidden"
    assert _config(client, "maxclients") == settings["maxclients"]


def test_an_unknown_command_counts_as_refused(redis_server: RedisServer,
                                              client: redis.Redis) -> None:
    # What a renamed CONFIG or FLUSHDB answers on managed Redis.
    with pytest.raises(PermissionDenied, match="unknown command"):
        guarded(_target(redis_server), "CONFIG SET", client.execute_command,
                "NOSUCHCOMMAND", "x")


def test_the_pattern_delete_removes_exactly_the_matching_keys(
        redis_server: RedisServer, client: redis.Redis, prefix: str,
        audit: Path) -> None:
    matching = [f"{prefix}:cache:{i}" for i in range(50_000)]
    others = [name.format(p=prefix, i=i) for i in range(10_000)
              for name in LOOKALIKES]
    load(client, matching + others)
    target = _target(redis_server)
    before = _state(client, prefix)

    plan = plan_delete_by_pattern(target, client, f"{prefix}:cache:*")

    assert _state(client, prefix) == before
    [row] = plan.rows()
    assert row["keys"] == 50_000 and row["db"] == 0
    assert row["examples"].startswith(f"{prefix}:cache:")

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "applied", result.finding.summary
    assert result.record["applied"]["deleted"] == 50_000
    assert set(_state(client, prefix)["keys"]) == {o.encode() for o in others}
    after = result.finding.evidence["after"]
    assert after["keys_matching"] == 0 and after["bytes_freed"] > 0
    assert read_audit(audit)[0]["planned"] == [row]


def test_a_delete_plan_stands_through_small_changes_not_large_ones(
        redis_server: RedisServer, client: redis.Redis, prefix: str) -> None:
    load(client, [f"{prefix}:cache:{i}" for i in range(1000)])
    target = _target(redis_server)
    plan = plan_delete_by_pattern(target, client, f"{prefix}:cache:*")

    load(client, [f"{prefix}:cache:new{i}" for i in range(4)])
    assert plan_delete_by_pattern(target, client, f"{prefix}:cache:*").id == plan.id
    load(client, [f"{prefix}:cache:more{i}" for i in range(200)])

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "changed"
    assert result.fresh is not None and result.fresh.rows()[0]["keys"] == 1204
    assert len(_state(client, prefix)["keys"]) == 1204


def test_a_read_only_user_may_plan_a_delete_but_not_apply_it(
        redis_server: RedisServer, client: redis.Redis, prefix: str,
        read_only: Callable[[list[str]], Target]) -> None:
    load(client, [f"{prefix}:cache:{i}" for i in range(300)])
    target = read_only(READ_ONLY_RULES)
    plan = plan_delete_by_pattern(target, client, f"{prefix}:cache:*")

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "forbidden", result.finding.summary
    assert "+unlink" in result.finding.summary
    assert len(_state(client, prefix)["keys"]) == 300


@pytest.mark.parametrize("pattern", ["?*", "[a-z]*", "", "**"])
def test_catch_all_patterns_are_refused(redis_server: RedisServer,
                                        client: redis.Redis, pattern: str) -> None:
    with pytest.raises(ParameterError):
        plan_delete_by_pattern(_target(redis_server), client, pattern)


def test_star_is_a_flushdb_of_one_database_with_a_second_confirmation() -> None:
    with RedisServer(maxmemory="16mb") as server:
        for db, count in ((0, 3000), (1, 40)):
            other = server.client(db=db)
            load(other, [f"k:{i}" for i in range(count)])
            other.close()
        target = _target(server, db=0)
        client = server.client(db=0)
        kept = server.client(db=1)

        plan = plan_delete_by_pattern(target, client, "*")

        assert plan.kind == "redis.flushdb" and plan.rows()[0]["keys"] == 3000
        assert plan.second_confirmation == "FLUSHDB db0"
        assert "FLUSHALL" not in plan.command
        assert plan.apply(confirm=plan.id).outcome == "not-confirmed"
        assert client.dbsize() == 3000

        result = remediate.apply_plan(plan, confirm=plan.id,
                                      authorized={"FLUSHDB db0"})

        assert result.outcome == "applied", result.finding.summary
        assert result.finding.evidence["after"]["keys"] == 0
        assert client.dbsize() == 0 and kept.dbsize() == 40
        client.close()
        kept.close()


def test_shorter_ttls_shorten_only_what_is_longer_or_missing(
        redis_server: RedisServer, client: redis.Redis, prefix: str) -> None:
    load(client, [f"{prefix}:cache:none{i}" for i in range(300)])
    load(client, [f"{prefix}:cache:day{i}" for i in range(200)], ttl=86_400)
    load(client, [f"{prefix}:cache:soon{i}" for i in range(100)], ttl=60)
    load(client, [f"{prefix}:session:{i}" for i in range(100)])
    target = _target(redis_server)
    before = _state(client, prefix)

    plan = plan_shorter_ttls(target, client, f"{prefix}:cache:*", "10min")

    assert _state(client, prefix) == before
    assert [(r["which keys"], r["keys"]) for r in plan.rows()] == [
        ("without a TTL", 300), ("TTL over 10m00s", 200)]
    assert any("100 matching key(s) expire sooner" in n for n in plan.notes)

    result = plan.apply(confirm=plan.id)

    assert result.outcome == "applied", result.finding.summary
    assert result.record["applied"] == {"ttl_set": 500, "kept": 100, "ttl_s": 600}
    ttls = {key.decode(): client.ttl(key) for key in _state(client, prefix)["keys"]}
    assert all(0 < t <= 600 for k, t in ttls.items() if ":cache:" in k)
    assert all(t <= 60 for k, t in ttls.items() if ":cache:soon" in k)
    assert all(t == -1 for k, t in ttls.items() if ":session:" in k)
    assert result.finding.evidence["after"]["without_ttl"] == 0


def test_the_memory_runbook_plans_are_applicable(redis_server: RedisServer,
                                                  client: redis.Redis) -> None:
    target = _target(redis_server)
    plans = [plan_eviction_policy(None, "allkeys-lfu", target=target),
             plan_maxmemory(None, "64mb", target=target),
             plan_delete_by_pattern(target, client, "cache:*")]
    assert all(p.target is target and p.executor is not None for p in plans)
    assert all(p.replan is not None and p.replan().id == p.id for p in plans)


@pytest.mark.parametrize("count, rounded", [(0, 0), (99, 99), (1234, 1200),
                                            (51_234, 51_000),
                                            (999_999, 1_000_000)])
def test_counts_in_plan_ids_are_rounded_to_two_figures(count: int,
                                                       rounded: int) -> None:
    assert about(count) == rounded
