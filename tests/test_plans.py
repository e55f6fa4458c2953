"""Plans refuse values that make no sense, and say what they would touch."""

import pandas as pd
import pytest

from paracle_nb.actions import scope_command
from paracle_nb.actions_database import plan_max_connections
from paracle_nb.actions_redis import (
    parse_redis_bytes,
    plan_eviction_policy,
    plan_maxmemory,
)
from paracle_nb.errors import ParameterError
from paracle_nb.target import Target

MEMORY = {"maxmemory": 32 * 2**20, "maxmemory_policy": "noeviction"}
PREFIXES = pd.DataFrame([
    {"prefix": "cache:", "keys": 9000, "with_ttl": 0, "no_ttl": 9000,
     "bytes": 24 * 2**20},
    {"prefix": "session:", "keys": 4000, "with_ttl": 4000, "no_ttl": 0,
     "bytes": 6 * 2**20}])


@pytest.mark.parametrize("text, size", [("64mb", 64 * 2**20), ("1gb", 2**30),
                                         ("1048576", 2**20), ("2k", 2000)])
def test_redis_sizes(text, size):
    assert parse_redis_bytes(text) == size


@pytest.mark.parametrize("call, message", [
    (lambda: plan_maxmemory(MEMORY, "1kb"), "not above the current"),
    (lambda: plan_maxmemory(MEMORY, "lots"), "not a Redis memory size"),
    (lambda: plan_eviction_policy(MEMORY, "bogus"), "unknown maxmemory-policy"),
    (lambda: plan_max_connections({"max_connections": 40}, 20), "not above"),
])
def test_nonsense_is_refused(call, message):
    with pytest.raises(ParameterError, match=message):
        call()


def test_eviction_note_names_what_each_policy_would_take():
    volatile = " ".join(plan_eviction_policy(MEMORY, "volatile-lru", PREFIXES).notes)
    assert "only keys with a TTL (session:)" in volatile
    assert "keys without TTL stay" in volatile and "cache: (24.0 MiB)" in volatile
    allkeys = " ".join(plan_eviction_policy(MEMORY, "allkeys-lru", PREFIXES).notes)
    assert "including those without TTL: cache:" in allkeys


def test_commands_are_pinned_to_the_target():
    target = Target.from_parameters({"kube_context": "prod", "namespace": "ns",
                                     "redis_url": "redis://r.internal:6379/0"})
    scoped = scope_command("kubectl scale deployment/api --replicas=1 -n ns", target)
    assert "kubectl --context prod scale" in scoped
    assert scoped.startswith("# Target: cluster")
    assert scope_command("CONFIG SET timeout 300", target).startswith(
        "# Target: redis redis://r.internal:6379/0")
