"""`paracle-nb run` stopped with SIGTERM writes its partial artifact, as Ctrl-C.

A Kubernetes Job that is stopped, or an operator's `kill`, sends SIGTERM to
the runner: the artifact must still appear, saying in which cell the run
was, and the exit code must say how it ended.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from tiny_runbooks import write_runbooks, write_target

from paracle_nb import cli
from paracle_nb.sandbox import procs

pytestmark = pytest.mark.notebook


def _wait_for_mark(artifacts: pathlib.Path, runner: subprocess.Popen) -> None:
    """Wait until the run's second step has written its mark (or the run ended)."""
    for _ in range(300):
        if list(artifacts.glob(".*.partial/sleeping")) or runner.poll() is not None:
            return
        time.sleep(0.1)


def test_sigterm_writes_the_partial_artifact(tmp_path):
    target = write_target(tmp_path / "target.yaml", procs.free_port())
    artifacts = tmp_path / "artifacts"
    environ = {**os.environ, "PARACLE_NB_NOTEBOOKS": str(write_runbooks(tmp_path))}
    runner = subprocess.Popen(
        [sys.executable, "-m", "paracle_nb.cli", "run", "tiny/marks-then-sleeps",
         "--parameters", str(target), "--artifacts", str(artifacts)],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_mark(artifacts, runner)
        assert runner.poll() is None, runner.communicate()
        os.kill(runner.pid, signal.SIGTERM)
        _, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()

    assert runner.returncode == cli.EXIT_TERMINATED, err
    assert "paracle-nb: terminated; partial artifact in" in err
    [folder] = artifacts.iterdir()
    verdict = json.loads((folder / "verdict.json").read_text())
    [finding] = verdict["findings"]
    assert finding["cause"] == "interrupted"
    assert finding["step"] == "Step 2"
    assert 'Stopped by SIGTERM in cell 7, under "Step 2"' in finding["summary"]
    assert (folder / "marks-then-sleeps.html").exists()
