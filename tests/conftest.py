"""Shared fixtures: one lab PostgreSQL and one lab Redis per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from paracle_nb.errors import MissingServerBinary
from paracle_nb.sandbox.lab import Lab
from paracle_nb.sandbox.postgres import PostgresServer
from paracle_nb.sandbox.redis_server import RedisServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running lab PostgreSQL (max_connections=40, 3 reserved), shared."""
    server = PostgresServer(max_connections=40, superuser_reserved_connections=3)
    try:
        server.start()
    except MissingServerBinary as exc:
        _skip_unless_ci(exc)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A running lab Redis (maxmemory 32mb, noeviction), shared."""
    server = RedisServer(maxmemory="32mb", maxmemory_policy="noeviction")
    try:
        server.start()
    except MissingServerBinary as exc:
        _skip_unless_ci(exc)
    try:
        yield server
    finally:
        server.stop()


def _skip_unless_ci(exc: MissingServerBinary) -> None:
    """On a workstation, skip with the install hint; in CI, fail."""
    if os.environ.get("CI"):
        raise exc
    pytest.skip(str(exc))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The whole lab, healthy, one per test module."""
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def live_lab(lab: Lab) -> Lab:
    """The lab, for tests that need Prometheus scraping the API stand-in."""
    if lab.live.prometheus is None:
        if os.environ.get("CI"):
            pytest.fail(lab.live.prometheus_missing)
        pytest.skip(lab.live.prometheus_missing)
    return lab


@pytest.fixture()
def audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Remediation as a batch run: nothing asks for input, the audit trail
    is a file of the test's, and no plan counts as applied before."""
    from paracle_nb import remediate

    path = tmp_path / "audit.jsonl"
    monkeypatch.setenv(remediate.AUDIT_ENV, str(path))
    monkeypatch.setenv(remediate.BATCH_ENV, "1")
    monkeypatch.delenv("PARACLE_NB_ARTIFACT_DIR", raising=False)
    remediate.forget_applied()
    yield path
    remediate.forget_applied()


@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    """Where a test's runbook runs write their artifact folders."""
    return tmp_path / "artifacts"
