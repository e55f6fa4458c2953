"""Pattern deletes against the lab's real Redis: exactly the matching keys go."""

from __future__ import annotations

import secrets

import pytest

from paracle_nb.errors import ParacleError
from paracle_nb.redis_delete import (
    FlushRefused,
    count_matching,
    delete_matching,
    literal_part,
)

pytestmark = pytest.mark.servers

# Keys that contain the pattern's words, but not where the pattern wants them.
LOOKALIKES = ("{p}:user:cache:{i}", "{p}:cachex:{i}", "{p}:Cache:{i}",
              "{p}:cache-{i}", "x{p}:cache:{i}", "{p}:cache[1]:{i}")


@pytest.fixture()
def client(redis_server):
    client = redis_server.client()
    yield client
    client.close()


def load(client, names: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(names), 2000):
        pipe.mset({name: b"v" * 16 for name in names[start:start + 2000]})
    pipe.execute()


def keys_of(client, prefix: str) -> set[bytes]:
    """Every key holding ``prefix`` anywhere (the lookalikes included)."""
    return set(client.scan_iter(match=f"*{prefix}*", count=5000))


@pytest.mark.parametrize("in_server", [True, False], ids=["script", "pipeline"])
def test_deletes_exactly_the_matching_keys(client, in_server):
    prefix = "t" + secrets.token_hex(4)
    matching = [f"{prefix}:cache:{i}" for i in range(10_000)]
    others = [name.format(p=prefix, i=i) for i in range(10_000 // len(LOOKALIKES) + 1)
              for name in LOOKALIKES][:10_000]
    load(client, matching + others)
    seen: list[int] = []

    count, estimate = count_matching(client, f"{prefix}:cache:*", sample=200)
    result = delete_matching(client, f"{prefix}:cache:*", batch=1500,
                             progress=seen.append, in_server=in_server)

    assert (count, result.keys) == (10_000, 10_000)
    assert estimate > 10_000 * 16
    assert keys_of(client, prefix) == {name.encode() for name in others}
    assert seen == sorted(seen) and seen[-1] == 10_000
    assert result.bytes_freed > 0
    client.delete(*others)


def test_escaped_glob_characters_match_literally(client):
    prefix = "t" + secrets.token_hex(4)
    bracketed = [f"{prefix}:cache[1]:{i}" for i in range(300)]
    plain = [f"{prefix}:cache1:{i}" for i in range(300)]
    load(client, bracketed + plain)

    result = delete_matching(client, rf"{prefix}:cache\[1\]:*", batch=100)

    assert result.keys == 300
    assert keys_of(client, prefix) == {name.encode() for name in plain}
    client.delete(*plain)


def test_nothing_matching_deletes_nothing(client):
    result = delete_matching(client, f"t{secrets.token_hex(4)}:cache:*")
    assert result.keys == 0
    assert count_matching(client, f"t{secrets.token_hex(4)}:*") == (0, 0)


@pytest.mark.parametrize("pattern", ["*", "**", "?*", "[a-z]*", "[^x]*?"])
def test_a_pattern_for_every_key_is_a_flush_and_refused(client, pattern):
    kept = f"t{secrets.token_hex(4)}:kept"
    client.set(kept, b"1")

    with pytest.raises(FlushRefused, match="second confirmation"):
        delete_matching(client, pattern)
    with pytest.raises(FlushRefused):
        count_matching(client, pattern)

    assert client.exists(kept)
    client.delete(kept)


def test_empty_pattern_and_bad_batch_are_refused(client):
    with pytest.raises(ParacleError, match="empty pattern"):
        delete_matching(client, "")
    with pytest.raises(ParacleError, match="batch"):
        delete_matching(client, "cache:*", batch=0)


@pytest.mark.parametrize(("pattern", "literal"), [
    ("cache:*", "cache:"),
    ("*:cache", ":cache"),
    (r"cache\*x", "cache*x"),
    ("a[bc]d?e", "ade"),
    (r"[\]x]y", "y"),
])
def test_literal_part_of_a_pattern(pattern, literal):
    assert literal_part(pattern) == literal


def test_a_user_without_scripts_still_deletes_exactly(redis_server, client):
    """An ACL user who may not run scripts gets the client-side delete."""
    prefix = "t" + secrets.token_hex(4)
    user, password = f"{prefix}-noscript", secrets.token_urlsafe(16)
    client.acl_setuser(user, enabled=True, passwords=[f"+{password}"],
                       keys=[f"{prefix}:*"], commands=["+@all", "-@scripting"])
    load(client, [f"{prefix}:cache:{i}" for i in range(500)]
         + [f"{prefix}:session:{i}" for i in range(500)])
    limited = redis_server.client(username=user, password=password)

    try:
        result = delete_matching(limited, f"{prefix}:cache:*", batch=200)
    finally:
        limited.close()
        client.acl_deluser(user)

    assert result.keys == 500
    assert keys_of(client, prefix) == {f"{prefix}:session:{i}".encode()
                                       for i in range(500)}
    client.delete(*keys_of(client, prefix))
