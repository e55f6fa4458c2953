"""Cells run again, or out of order, in JupyterLab never break a runbook.

The runbook's own state first (pure), then a real kernel running the
connection-pool runbook's cells in an order with repeats, as an engineer
stepping through it does.
"""

import pathlib

import nbformat
import pytest
import yaml

from paracle_nb import runbook
from paracle_nb.errors import ConnectionRefused
from paracle_nb.findings import verdict_from_notebook
from paracle_nb.runbook import Runbook
from paracle_nb.sandbox import procs
from paracle_nb.target import Target

NOTEBOOKS = pathlib.Path(__file__).parent.parent / "notebooks"
POOL_RUNBOOK = NOTEBOOKS / "database" / "connection-pool-exhausted.ipynb"


class Session:
    """Something a step opens, like a database connection."""

    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


def _refused():
    raise ConnectionRefused("Postgres at 127.0.0.1:1 refused the connection")


def test_a_failed_step_run_twice_is_one_finding():
    rb = Runbook("t", Target())
    rb.step("Connect", _refused)
    rb.step("Connect", _refused)

    verdict = rb.conclude([])
    assert [f.cause for f in verdict.findings] == ["connection-refused"]


def test_a_step_that_works_on_rerun_is_no_longer_a_finding():
    rb = Runbook("t", Target())
    rb.step("Connect", _refused)
    rb.step("Connect", Session)

    assert rb.conclude([]).causes == []


def test_a_skipped_step_forgets_its_earlier_failure():
    rb = Runbook("t", Target())
    rb.step("Read", _refused)
    failed = rb.step("Connect", _refused)
    rb.step("Read", lambda conn: conn, failed)

    assert [f.step for f in rb.failures] == ["Connect"]


def test_rerunning_a_connect_step_closes_the_earlier_connection():
    rb = Runbook("t", Target())
    first = rb.step("Connect", Session)
    second = rb.step("Connect", Session)
    passed_on = rb.step("Use it", lambda conn: conn, second)

    assert first.closed and not second.closed
    rb.step("Use it", lambda conn: conn, second)
    assert passed_on is second and not second.closed  # not the step's own
    rb.close()
    assert second.closed


def test_open_continues_the_same_runbook_and_closes_another_targets():
    lab = Target(environment="a", redis_url="redis://127.0.0.1:1/0")
    rb = Runbook.open("t", lab)
    session = rb.step("Connect", Session)
    rb.step("Check", _refused)

    again = Runbook.open("t", Target(environment="a",
                                     redis_url="redis://127.0.0.1:1/0"))
    assert again is rb and [f.step for f in again.failures] == ["Check"]

    elsewhere = Runbook.open("t", Target(environment="b",
                                         redis_url="redis://127.0.0.1:2/0"))
    assert elsewhere is not rb and elsewhere.failures == []
    assert session.closed
    assert runbook.current_target() is elsewhere.target


def _code_cells(nb):
    return {cell.id: index for index, cell in enumerate(nb.cells)
            if cell.cell_type == "code"}


def _run_in_order(nb, folder, cell_ids):
    """Execute cells of ``nb`` by id, in the given order, in one kernel."""
    from nbclient import NotebookClient
    from traitlets.config import Config

    where = _code_cells(nb)
    # Unix sockets, as `paracle-nb run` uses: no kernel port on TCP.
    sockets = Config({"KernelManager": {"transport": "ipc",
                                        "ip": str(folder / "kernel")}})
    client = NotebookClient(nb, kernel_name="python3", timeout=60, config=sockets,
                            resources={"metadata": {"path": str(folder)}})
    with client.setup_kernel():
        for cell_id in cell_ids:
            index = where[cell_id]
            client.execute_cell(nb.cells[index], index)
    return nb


def _errors(nb):
    return [(cell.id, out.get("ename")) for cell in nb.cells
            if cell.cell_type == "code" for out in cell.get("outputs", [])
            if out.output_type == "error"]


def _environment(tmp_path, monkeypatch, values):
    """Point ``environment = "sandbox"`` at ``values``, as `make lab` does."""
    folder = tmp_path / "parameters"
    folder.mkdir()
    (folder / "sandbox.yaml").write_text(yaml.safe_dump(values))
    monkeypatch.setenv("PARACLE_NB_PARAMETERS", str(folder))


# The pool runbook's cells: parameters, setup, connect and limits, sessions,
# plot, findings, remediation.
PARAMS, SETUP, CONNECT, SESSIONS, PLOT, FINDINGS, PLANS = (
    f"connection-pool-exhausted-{n:02d}" for n in (1, 2, 4, 6, 7, 9, 11))
IN_ORDER = [PARAMS, SETUP, CONNECT, SESSIONS, PLOT, FINDINGS]


@pytest.mark.notebook
def test_unreachable_database_stays_one_finding_through_reruns(tmp_path, monkeypatch):
    closed = f"postgresql://sre@{procs.LOOPBACK}:{procs.free_port()}/paracle"
    _environment(tmp_path, monkeypatch, {"postgres_dsn": closed,
                                         "timeout_seconds": 2})
    nb = nbformat.read(POOL_RUNBOOK, as_version=4)

    order = IN_ORDER + [CONNECT, CONNECT, FINDINGS, SETUP, SESSIONS, CONNECT,
                        PLOT, FINDINGS]
    _run_in_order(nb, tmp_path, order)

    assert _errors(nb) == []
    verdict = verdict_from_notebook(nb)
    assert [(f.cause, f.step) for f in verdict.findings] == [
        ("target-unreachable", "Connect")]


@pytest.mark.servers
@pytest.mark.notebook
def test_pool_runbook_survives_reruns_while_every_slot_is_held(
        lab, tmp_path, monkeypatch):
    _environment(tmp_path, monkeypatch, lab.parameters)
    nb = nbformat.read(POOL_RUNBOOK, as_version=4)

    # Only the 3 superuser slots are free: a connection left open by each
    # re-run of the connect cell would take them all.
    order = IN_ORDER + [CONNECT, CONNECT, CONNECT, CONNECT, SESSIONS, PLOT,
                        SETUP, FINDINGS, PLANS, SESSIONS, FINDINGS, PLANS]
    with lab.incident("pool-exhausted"):
        _run_in_order(nb, tmp_path, order)

    assert _errors(nb) == []
    verdict = verdict_from_notebook(nb)
    assert verdict.causes == ["connection-pool-exhausted"]
    evidence = verdict.finding("connection-pool-exhausted").evidence
    assert evidence["held_by_application"] == {"paracle-api": 37}
    plot = nb.cells[_code_cells(nb)[PLOT]].outputs
    assert len([o for o in plot if "image/png" in o.get("data", {})]) == 1
