"""Runs that always finish: each fault of a dependency becomes a finding.

Each test breaks one part of the lab for real (a server stopped, frozen
with SIGSTOP, out of connection slots, a table locked, the Kubernetes API
answering errors or nothing at all, Prometheus gone), runs one runbook
against it with one-second timeouts, and checks that the artifact is
written whole, that a finding names the step and the cause, and that the
steps that do not need the broken part still ran.
"""

import contextlib
import json
import os
import signal
import socket

import nbformat
import pytest
from tiny_runbooks import write_runbooks, write_target

from paracle_nb import cli, deadline, postgres, postgres_queries, run
from paracle_nb.errors import TargetTimeout
from paracle_nb.sandbox import procs
from paracle_nb.sandbox.postgres import SRE_ROLE, PostgresServer
from paracle_nb.target import Target

pytestmark = pytest.mark.notebook

FAST = {"timeout_seconds": "1"}
# high-latency reads Prometheus, the API's logs, Postgres and Redis: a fault
# of one leaves the others to show that the rest of the run went on.
LATENCY = {**FAST, "latency_window": "8s", "plot_window": "2m",
           "sample_window": "1s", "redis_samples": 3, "log_lines": 100}
TRIAGE = {**FAST, "window": "8s"}


@pytest.fixture(scope="module")
def lab(live_lab):
    return live_lab


def assert_artifact_whole(result):
    """The finished folder holds every file, each readable, and no leftovers."""
    assert result.folder.is_dir()
    nbformat.validate(nbformat.read(result.notebook, as_version=4))
    assert "Verdict" in result.html.read_text()
    verdict = json.loads((result.folder / "verdict.json").read_text())
    assert verdict == result.verdict.to_dict()
    leftovers = [p.name for p in result.folder.parent.iterdir()
                 if p.name.endswith((".partial", ".tmp"))]
    assert not leftovers


def failed_steps(result):
    """Return {step: finding} for the steps the runbook could not run."""
    return {f.step: f for f in result.verdict.findings
            if f.evidence.get("step") == f.step and "could not run" in f.summary}


def assert_fault(result, step, cause, said):
    """The run ended, its artifact is whole, and ``step`` failed for ``said``."""
    assert result.failed is None, result.failed
    assert_artifact_whole(result)
    finding = failed_steps(result).get(step)
    assert finding is not None, [f.to_dict() for f in result.verdict.findings]
    assert finding.cause == cause, finding.to_dict()
    assert said in finding.summary, finding.summary
    return finding


@pytest.mark.servers
def test_postgres_stopped(lab, artifacts):
    spare = PostgresServer()
    spare.start()
    dsn = spare.dsn(SRE_ROLE)
    spare.stop()

    result = run.run("api/high-latency", lab.parameters_file,
                     {**LATENCY, "postgres_dsn": dsn}, artifacts=artifacts)

    assert_fault(result, "Check database query time", "target-unreachable",
                 "is unreachable")
    assert set(failed_steps(result)) == {"Check database query time"}


@pytest.mark.servers
def test_postgres_frozen_with_sigstop(lab, artifacts):
    os.kill(lab.postgres.pid, signal.SIGSTOP)
    try:
        result = run.run("api/high-latency", lab.parameters_file, LATENCY,
                         artifacts=artifacts)
    finally:
        os.kill(lab.postgres.pid, signal.SIGCONT)

    assert_fault(result, "Check database query time", "target-timeout",
                 "did not answer in time")
    assert set(failed_steps(result)) == {"Check database query time"}


@contextlib.contextmanager
def _frozen_backend(lab):
    """A session whose own backend is frozen with SIGSTOP once connected."""
    target = Target.resolve(parameters_file=str(lab.parameters_file),
                            timeout_seconds=1)
    with postgres.connect(target) as conn:
        backend = conn.info.backend_pid
        os.kill(backend, signal.SIGSTOP)
        try:
            yield conn
        finally:
            os.kill(backend, signal.SIGCONT)


@pytest.mark.servers
def test_frozen_backend_ends_a_query_from_the_client(lab):
    # statement_timeout is the server's: only the client can end this query.
    with _frozen_backend(lab) as conn:
        with pytest.raises(TargetTimeout, match=r"no answer within 1s \(session cut\)"):
            postgres.connection_limits(conn)


@pytest.mark.servers
def test_frozen_backend_ends_an_explain_from_the_client(lab):
    with _frozen_backend(lab) as conn:
        with pytest.raises(TargetTimeout, match="no answer within 1s"):
            postgres_queries.explain_statement(conn, "SELECT 1", timeout_ms=1000)


@pytest.mark.servers
def test_query_that_ends_in_time_leaves_the_session_usable(lab):
    target = Target.resolve(parameters_file=str(lab.parameters_file),
                            timeout_seconds=1)
    with postgres.connect(target) as conn:
        assert postgres.session_timeout(conn) == 1.0
        for _ in range(3):
            assert postgres.connection_limits(conn)["max_connections"] > 0
        assert not conn.broken


@pytest.mark.servers
def test_postgres_out_of_connection_slots(lab, artifacts):
    with lab.incident("pool-exhausted-all-slots"):
        result = run.run("api/high-latency", lab.parameters_file, LATENCY,
                         artifacts=artifacts)

    assert_fault(result, "Check database query time", "connection-refused",
                 "too many clients")
    assert set(failed_steps(result)) == {"Check database query time"}


@pytest.mark.servers
def test_postgres_table_locked(lab, artifacts):
    # Another session holds the table: EXPLAIN ANALYZE of a query on it waits
    # for the lock until the one-second timeouts cancel it.
    with lab.postgres.admin_connect("paracle") as holder, holder.transaction():
        holder.execute("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE")
        result = run.run("database/slow-queries", lab.parameters_file,
                         {**FAST, "explain_query": "SELECT count(*) FROM agents"},
                         artifacts=artifacts)

    assert_fault(result, "Explain a slow statement", "target-timeout",
                 "was cancelled")
    assert set(failed_steps(result)) == {"Explain a slow statement"}


@pytest.mark.servers
def test_redis_accepts_but_never_answers(lab, artifacts):
    os.kill(lab.redis.pid, signal.SIGSTOP)
    try:
        result = run.run("api/high-latency", lab.parameters_file, LATENCY,
                         artifacts=artifacts)
    finally:
        os.kill(lab.redis.pid, signal.SIGCONT)

    assert_fault(result, "Connect to Redis", "target-timeout", "did not answer PING")
    assert set(failed_steps(result)) == {"Connect to Redis"}


@pytest.mark.servers
def test_kubernetes_api_answers_500(lab, artifacts):
    lab.kube.fail(r"/namespaces/paracle-prod/pods$", 500)
    try:
        result = run.run("triage", lab.parameters_file, TRIAGE, artifacts=artifacts)
    finally:
        lab.kube.fail_clear()

    assert_fault(result, "Pod status", "step-failed", "HTTP 500")
    # The health probe and Prometheus do not need the Kubernetes API.
    assert set(failed_steps(result)) == {"Pod status", "Logs"}
    assert result.verdict.finding("api-unhealthy") is None


@pytest.mark.servers
def test_kubernetes_api_forbids_logs(lab, artifacts):
    lab.kube.fail(r"/log$", 403)
    try:
        result = run.run("triage", lab.parameters_file, TRIAGE, artifacts=artifacts)
    finally:
        lab.kube.fail_clear()

    finding = assert_fault(result, "Logs", "forbidden", "HTTP 403")
    assert "cannot get resource" in finding.summary
    assert set(failed_steps(result)) == {"Logs"}


@pytest.mark.servers
def test_kubernetes_api_stalls(lab, artifacts, tmp_path):
    with _silent_listener() as port:
        kubeconfig = _kubeconfig_pointing_at(lab, tmp_path, port)
        result = run.run("triage", lab.parameters_file,
                         {**TRIAGE, "kubeconfig": str(kubeconfig)},
                         artifacts=artifacts)

    assert_fault(result, "Pod status", "target-timeout", "no answer within 1s")
    assert set(failed_steps(result)) == {"Pod status", "Logs"}


@pytest.mark.servers
def test_prometheus_unreachable(lab, artifacts):
    closed = procs.free_port()
    result = run.run("triage", lab.parameters_file,
                     {**TRIAGE, "prometheus_url": f"http://127.0.0.1:{closed}"},
                     artifacts=artifacts)

    assert_fault(result, "Metrics", "target-unreachable", "unreachable")
    assert set(failed_steps(result)) == {"Metrics", "p95 latency", "5xx share"}


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    """Tiny runbooks, and a target file naming nothing that answers."""
    monkeypatch.setenv("PARACLE_NB_NOTEBOOKS", str(write_runbooks(tmp_path)))
    return write_target(tmp_path / "target.yaml", procs.free_port())


def test_dead_kernel_is_reported_with_its_cell(tiny, artifacts):
    result = run.run("tiny/kills-its-kernel", tiny, artifacts=artifacts)

    assert_artifact_whole(result)
    assert result.failure.cause == "kernel-died"
    assert (result.failure.cell, result.failure.section) == (7, "Step 2")
    finding = result.verdict.finding("kernel-died")
    assert finding.step == "Step 2" and "in cell 7" in finding.summary
    shown = result.notebook.read_text()
    assert "first step ran" in shown and "never reached\\n" not in shown


def test_deadline_interrupts_the_running_cell(tiny, artifacts):
    result = run.run("tiny/sleeps", tiny, artifacts=artifacts, deadline=2.0)

    assert_artifact_whole(result)
    assert result.failure.cause == "deadline-exceeded"
    assert result.failure.section == "Step 2"
    assert "deadline (2s) passed" in result.verdict.finding(
        "deadline-exceeded").summary
    assert "KeyboardInterrupt" in result.notebook.read_text()


def test_deadline_kills_a_kernel_that_ignores_the_interrupt(tiny, artifacts,
                                                             monkeypatch):
    monkeypatch.setattr(deadline, "KILL_GRACE", 1.0)
    result = run.run("tiny/ignores-interrupts", tiny, artifacts=artifacts,
                     deadline=2.0)

    assert_artifact_whole(result)
    assert result.failure.cause == "deadline-exceeded"
    assert "was killed in cell 7" in result.failure.summary


def test_kernel_talks_over_unix_sockets(tiny, artifacts):
    result = run.run("tiny/reports-transport", tiny, artifacts=artifacts)

    assert result.failed is None
    assert "transport: ipc" in result.notebook.read_text()


def test_failed_run_exits_3_and_says_where(tiny, artifacts, capsys):
    code = cli.main(["run", "tiny/kills-its-kernel", "--parameters", str(tiny),
                     "--artifacts", str(artifacts)])

    shown = capsys.readouterr().out
    assert code == cli.EXIT_FAILED
    assert "kernel-died" in shown and 'in cell 7, under "Step 2"' in shown
    [folder] = artifacts.iterdir()
    assert (folder / "kills-its-kernel.html").exists()


@contextlib.contextmanager
def _silent_listener():
    """A loopback port that accepts connections and never answers on them."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def _kubeconfig_pointing_at(lab, folder, port):
    import yaml

    config = yaml.safe_load((lab.dir / "kubeconfig").read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"http://127.0.0.1:{port}"
    path = folder / "stalled-kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path
