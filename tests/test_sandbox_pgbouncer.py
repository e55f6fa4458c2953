"""The lab's real PgBouncer: many clients, few server connections."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paracle_nb import plots
from paracle_nb.errors import MissingServerBinary
from paracle_nb.sandbox.pgbouncer import PgBouncerServer, pooled_load
from paracle_nb.sandbox.postgres import PostgresServer

pytestmark = pytest.mark.servers


@pytest.fixture()
def pgbouncer(postgres_server: PostgresServer) -> Iterator[PgBouncerServer]:
    server = PgBouncerServer(postgres_server, pool_size=6)
    try:
        server.start()
    except MissingServerBinary as exc:
        import os

        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


def test_clients_beyond_the_limit_are_served_on_a_few_server_connections(
        postgres_server: PostgresServer, pgbouncer: PgBouncerServer) -> None:
    direct = pooled_load(postgres_server, clients=60)
    pooled = pooled_load(pgbouncer, clients=60)

    assert direct["refused"] > 0
    assert "too many clients" in direct["refusal"] or "reserved" in direct["refusal"]
    assert direct["peak_server_connections"] > 2 * 6  # far above the pool
    assert pooled == {"clients": 60, "served": 60, "refused": 0, "refusal": None,
                      "peak_server_connections": pooled["peak_server_connections"]}
    assert 1 <= pooled["peak_server_connections"] <= 6

    limits = {"max_connections": 40, "superuser_reserved": 3}
    plot = plots.pooling_plot(direct, pooled, limits, pool_size=6)
    assert "image/png" in plot._repr_mimebundle_()


def test_pgbouncer_stops_by_its_pid(postgres_server: PostgresServer) -> None:
    from paracle_nb.sandbox import procs

    server = PgBouncerServer(postgres_server).start()
    pid = server.pid
    server.stop()
    assert not procs.pid_alive(pid)
    assert server.work_dir is None
