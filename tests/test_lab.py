"""The lab as an SRE meets it: kubectl on its kubeconfig, `sandbox up/down`."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from paracle_nb.sandbox import procs

pytestmark = pytest.mark.servers


def _kubectl(lab, tmp_path, *args):
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed (apt-get install kubernetes-client)")
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(
        ["kubectl", "--kubeconfig", str(lab.dir / "kubeconfig"),
         "--cache-dir", str(tmp_path / "cache"), *args],
        capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.kubectl
def test_kubectl_sees_the_crashloop(lab, tmp_path):
    with lab.incident("crashloop-oom"):
        pods = _kubectl(lab, tmp_path, "get", "pods", "-l", "app=paracle-api")
        assert pods.count("CrashLoopBackOff") == 3
        name = pods.splitlines()[1].split()[0]
        previous = _kubectl(lab, tmp_path, "logs", name, "-c", "api", "--previous")
        assert "memory high" in previous
    healthy = _kubectl(lab, tmp_path, "get", "pods", "-l", "app=paracle-api")
    assert healthy.count("Running") == 3


def test_parameters_file_points_at_the_lab_without_secrets(lab):
    text = lab.parameters_file.read_text()
    params = yaml.safe_load(text)
    assert params["postgres_dsn"].endswith(f"127.0.0.1:{lab.postgres.port}/paracle")
    assert params["redis_url"] == lab.redis.url
    assert lab.postgres.password("paracle_sre") not in text
    assert lab.redis.password not in text


def test_sandbox_up_and_down(tmp_path):
    out = tmp_path / "sandbox.yaml"
    up = subprocess.Popen(
        [sys.executable, "-m", "paracle_nb.cli", "sandbox", "up",
         "--parameters-out", str(out), "--incident", "redis-oom"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        procs.wait_for(out.exists, timeout=60, what="sandbox parameters")
        params = yaml.safe_load(out.read_text())
        port = int(params["redis_url"].rsplit(":", 1)[1].split("/")[0])
        assert procs.port_accepts(port)

        down = subprocess.run(
            [sys.executable, "-m", "paracle_nb.cli", "sandbox", "down"],
            cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=30)

    output = up.stdout.read()
    up.stdout.close()
    assert "Incidents active: redis-oom" in output and "Lab stopped." in output
    assert not out.exists()
    deadline = time.monotonic() + 10
    while procs.port_accepts(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not procs.port_accepts(port)


def test_sandbox_down_without_a_lab_is_one_clear_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "paracle_nb.cli", "sandbox", "down"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "paracle-nb: error: no running lab found (no .sandbox/state.json here)")
