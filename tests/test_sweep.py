"""The incident sweep: selection by tag, warm kernels, verdicts, report, exit codes."""

import io
import json
import pathlib
import zipfile

import nbformat
import pytest

from paracle_nb import cli, report, sweep
from paracle_nb.artifact import RunFailure
from paracle_nb.findings import Finding, Severity, Verdict
from paracle_nb.kernels import WarmKernel
from paracle_nb.progress import Progress, status_line
from paracle_nb.redact import Scrubber
from paracle_nb.run import RunResult

POOL = "database/connection-pool-exhausted"


def test_tags_select_by_folder_and_by_what_a_runbook_looks_at():
    redis = sweep.select_runbooks(["redis"])
    assert {"redis/out-of-memory", "redis/connection-timeout"} <= set(redis)
    assert "api/high-latency" in redis  # it can blame slow Redis
    assert POOL not in redis
    assert sweep.select_runbooks([POOL, "triage"]) == [POOL, "triage"]


def test_a_full_sweep_starts_the_slow_sampler_and_ends_with_escalation():
    names = sweep.select_runbooks()
    assert names[0] == "api/high-latency"
    assert names[-1] == sweep.ESCALATION
    assert len(names) == len(set(names)) == 12
    assert all(sweep.runbook_tags(n) for n in names)


def test_an_unknown_tag_is_refused_with_the_known_ones(capsys):
    assert cli.main(["sweep", "--only", "databse"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown tag databse" in err and "database" in err


def _item(name, *findings, failure=None, state="done"):
    item = sweep.SweepRun(name, pathlib.Path(f"{name}.ipynb"), {}, state=state,
                          duration_s=1.25)
    if state == "done":
        verdict = Verdict(name, list(findings))
        if failure:
            verdict.findings.append(failure.finding())
        folder = pathlib.Path(item.slug)
        item.result = RunResult("x", folder, folder / "n.ipynb",
                                folder / "n.html", verdict,
                                failure.summary if failure else None, failure)
    return item


def _result(*items):
    import datetime as dt

    return sweep.SweepResult("s", pathlib.Path("s"), {"environment": "lab"},
                             list(items), [], 2, dt.datetime.now(dt.timezone.utc))


OK = Finding("no-problem", Severity.OK, "Nothing abnormal found.")
WARN = Finding("idle-clients", Severity.WARNING, "25 idle clients")
CRIT = Finding("redis-oom", Severity.CRITICAL, "used 32 MiB of 32 MiB")
STOPPED = RunFailure("cell-error", "KeyError: 'x' in cell 4", 4)


@pytest.mark.parametrize("items, code", [
    ((_item("a", OK), _item("b", OK)), cli.EXIT_OK),
    ((_item("a", OK), _item("b", WARN)), cli.EXIT_PROBLEM),
    ((_item("a", WARN), _item("b", OK, failure=STOPPED)), cli.EXIT_FAILED),
    ((_item("a", CRIT), _item("b", OK, failure=STOPPED)), cli.EXIT_CRITICAL),
    ((_item("a", WARN), _item("b", state="running")), cli.EXIT_FAILED),
])
def test_exit_code_pages_on_critical_and_not_on_a_crashed_runbook(items, code):
    assert _result(*items).exit_code == code


def test_progress_lines_go_to_a_log_one_per_change():
    stream = io.StringIO()
    progress = Progress(stream, live=False)
    queued = _item("redis/out-of-memory", state="queued")
    progress(queued)
    progress(_item("redis/out-of-memory", CRIT))
    progress(_item("triage", OK, failure=STOPPED))
    lines = stream.getvalue().splitlines()
    assert lines[0].split() == ["queued", "redis/out-of-memory"]
    assert lines[1].split()[:4] == ["done", "redis/out-of-memory", "CRITICAL",
                                    "redis-oom"]
    assert "FAILED KeyError" in lines[2] and lines[2].endswith("(1.2 s)")


def test_progress_on_a_terminal_redraws_the_table_in_place():
    stream = io.StringIO()
    progress = Progress(stream, live=True)
    for name in ("a", "b"):
        progress(_item(name, state="queued"))
    progress(_item("a", state="running"))
    out = stream.getvalue()
    assert out.count("\x1b[2F") == 1  # moved up over both rows once
    assert out.rsplit("\x1b[2F", 1)[1].count("\x1b[2K") == 2
    assert status_line(_item("a", state="running")) == "running  a"


def test_findings_json_puts_the_top_evidence_in_one_line():
    result = _result(_item("redis/out-of-memory", OK, CRIT),
                     _item("triage", state="skipped"))
    document = report.findings_document(result)
    first, skipped = document["runbooks"]
    assert document["schema"] == report.SCHEMA
    assert document["severity"] == "critical" and document["exit_code"] == 4
    assert document["counts"]["critical"] == 1 and document["counts"]["skipped"] == 1
    assert first["evidence"] == "used 32 MiB of 32 MiB" and first["critical"]
    assert first["files"]["html"] == "redis-out-of-memory/n.html"
    assert skipped["severity"] is None and skipped["files"] == {}
    page = report.index_html(result, document)
    assert page.index("id='summary'") < page.index("<h2>Plots</h2>")


def test_the_archive_is_scrubbed_and_lists_every_file(tmp_path):
    planted = "planted-sweep-secret-42"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "n.html").write_text(
        f"<p>dsn password={planted}</p><img src='data:image/png;base64,"
        f"iVBORw0K+/=='><p>{planted}</p>")
    (tmp_path / "run" / "plot.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "findings.json").write_text("{}")

    path = report.write_archive(tmp_path, "s", Scrubber([planted]))
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        everything = b"".join(archive.read(n) for n in names)
        manifest = json.loads(archive.read("s/MANIFEST.json"))
    assert names == {"s/run/n.html", "s/run/plot.png", "s/findings.json",
                     "s/MANIFEST.json"}
    assert planted.encode() not in everything
    assert b"base64,iVBORw0K+/==" in everything
    assert manifest["redactions"] >= 2
    assert {f["name"] for f in manifest["files"]} == {
        "run/n.html", "run/plot.png", "findings.json"}


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "language": "python",
                                 "display_name": "Python 3"}})
    nbformat.write(nb, path)
    return path


@pytest.mark.notebook
def test_a_warm_kernel_gives_each_run_a_fresh_namespace_and_survives_failures(
        tmp_path):
    leave = _notebook(tmp_path / "leave.ipynb", "leftover = 1")
    crash = _notebook(tmp_path / "crash.ipynb", "x = 1", "{}['missing']")
    hang = _notebook(tmp_path / "hang.ipynb", "import time\ntime.sleep(60)")
    check = _notebook(tmp_path / "check.ipynb",
                      "import os\nassert 'leftover' not in globals()\n"
                      "assert os.environ['SWEEP_TEST'] == 'second'")

    kernel = WarmKernel("test", cwd=tmp_path)
    kernel.start()
    try:
        first = kernel.execute(leave, tmp_path / "1.ipynb", {}, 30,
                               {"SWEEP_TEST": "first"}, deadline=30)
        crashed = kernel.execute(crash, tmp_path / "2.ipynb", {}, 30, {},
                                 deadline=30)
        pid = kernel.pid
        kernel.restart()
        assert kernel.pid not in (0, pid)
        overdue = kernel.execute(hang, tmp_path / "3.ipynb", {}, 30, {},
                                 deadline=1)
        kernel.restart()
        second = kernel.execute(check, tmp_path / "4.ipynb", {}, 30,
                                {"SWEEP_TEST": "second"}, deadline=30)
    finally:
        kernel.shutdown()

    assert first is None and second is None
    assert crashed.cause == "cell-error" and crashed.cell is not None
    assert "KeyError" in crashed.summary
    assert overdue.cause == "deadline-exceeded"
    assert "interrupted" in overdue.summary


SUBSET = [POOL, "redis/out-of-memory", "triage", "escalation"]


@pytest.mark.servers
@pytest.mark.notebook
def test_a_tagged_sweep_names_the_incident_and_writes_one_folder(lab, artifacts):
    lines = io.StringIO()
    with lab.incident("pool-exhausted"):
        result = sweep.sweep(lab.parameters_file, SUBSET, artifacts=artifacts,
                             kernels=2, on_change=Progress(lines, live=False))

    by_name = {item.runbook: item for item in result.runs}
    assert list(by_name) == [POOL, "redis/out-of-memory", "triage",
                             sweep.ESCALATION]
    assert by_name[POOL].result.verdict.cause == "connection-pool-exhausted"
    assert by_name[POOL].critical
    assert not by_name["redis/out-of-memory"].result.verdict.problem
    assert all(item.result.failed is None for item in result.runs)
    assert result.exit_code == cli.EXIT_CRITICAL
    assert f"done     {POOL}" in lines.getvalue()

    folder = result.folder
    assert folder.parent == artifacts and not list(artifacts.glob(".*.partial"))
    document = json.loads((folder / "findings.json").read_text())
    assert document["exit_code"] == cli.EXIT_CRITICAL
    assert [e["runbook"] for e in document["runbooks"]] == list(by_name)
    for entry in document["runbooks"]:
        for relative in (*entry["files"].values(), *(p["path"] for p in
                                                     entry["plots"])):
            assert (folder / relative).is_file(), relative
    assert document["runbooks"][0]["plots"], "the pool runbook draws its plot"

    # The escalation ran last, into its own folder, over the sweep's verdicts.
    [bundle] = (folder / "escalation-diagnostic-bundle").glob("diagnostic-*.zip")
    with zipfile.ZipFile(bundle) as archive:
        gathered = json.loads(archive.read("verdicts.json"))
    assert {v["runbook"] for v in gathered} >= {POOL, "triage"}

    with zipfile.ZipFile(folder / "incident.zip") as archive:
        names = set(archive.namelist())
        everything = b"".join(archive.read(n) for n in names)
    on_disk = {f"{folder.name}/{p.relative_to(folder).as_posix()}"
               for p in folder.rglob("*") if p.is_file()}
    assert names == on_disk - {f"{folder.name}/incident.zip"} | {
        f"{folder.name}/MANIFEST.json"}
    for secret in (lab.postgres.password("paracle_sre"), lab.redis.password):
        assert secret.encode() not in everything


@pytest.mark.servers
@pytest.mark.notebook
def test_a_full_sweep_of_a_healthy_lab_finds_nothing(lab, artifacts):
    result = sweep.sweep(lab.parameters_file, artifacts=artifacts)

    assert [item.state for item in result.runs] == ["done"] * 12
    problems = [item.result.verdict.headline() for item in result.runs
                if item.result.verdict.problem]
    assert problems == []
    assert result.exit_code == cli.EXIT_OK
    assert result.kernels < len(result.runs)  # kernels were reused
