"""JupyterLab for the runbooks: loopback, a token kept out of sight, our kernel.

Also what a notebook shows at its top (the target, never a credential) and
how a step's table is kept to one screen.
"""

import json
import sys
import urllib.error
import urllib.request

import pandas as pd
import pytest

from paracle_nb.jupyter import JupyterLab, JupyterLabError, main
from paracle_nb.runbook import compact_table
from paracle_nb.sandbox import procs
from paracle_nb.target import Target


def _lab(tmp_path, **kw):
    root = tmp_path / "notebooks"
    root.mkdir(exist_ok=True)
    return JupyterLab(root, port=kw.pop("port", 8999), state_dir=tmp_path / "state",
                      **kw)


def test_command_binds_loopback_with_no_browser_and_no_token(tmp_path):
    lab = _lab(tmp_path)
    command = lab.command()

    assert "--ServerApp.ip=127.0.0.1" in command
    assert "--ServerApp.port=8999" in command
    assert "--ServerApp.open_browser=False" in command
    assert f"--ServerApp.root_dir={tmp_path / 'notebooks'}" in command
    assert "--LabApp.news_url=None" in command
    assert ("--allow-root" in command) == procs.running_as_root()
    assert not any(lab.token.reveal() in part for part in command)


def test_token_comes_from_a_private_file_and_kernels_from_our_spec(tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("JUPYTER_TOKEN", "inherited-token")
    monkeypatch.setenv("JUPYTER_PATH", "/elsewhere")
    lab = _lab(tmp_path, env={"PARACLE_NB_PARAMETERS": "/params"})
    env = lab.environment()

    assert "JUPYTER_TOKEN" not in env
    assert env["JUPYTER_TOKEN_FILE"] == str(tmp_path / "state" / "token")
    assert env["JUPYTER_PATH"].split(":") == [str(tmp_path / "state" / "share"),
                                             "/elsewhere"]
    assert env["PARACLE_NB_PARAMETERS"] == "/params"
    assert lab.kernel_spec()["argv"][0] == sys.executable


def test_address_has_no_token_and_the_open_link_has_it(tmp_path):
    lab = _lab(tmp_path)
    token = lab.token.reveal()

    assert lab.url == "http://127.0.0.1:8999/lab"
    assert lab.open_url("database/x.ipynb") == (
        f"http://127.0.0.1:8999/lab/tree/database/x.ipynb?token={token}")
    assert token not in repr(lab.token) and len(token) >= 32


def test_missing_notebooks_folder_is_one_clear_error(tmp_path):
    lab = JupyterLab(tmp_path / "nowhere", state_dir=tmp_path / "state")
    with pytest.raises(JupyterLabError, match="no notebooks folder"):
        lab.start()


def _get(url, token=None):
    headers = {"Authorization": f"token {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_started_lab_serves_our_kernel_to_the_token_only(tmp_path):
    lab = _lab(tmp_path, port=None)
    with lab:
        token = lab.token.reveal()
        api = lab.url.removesuffix("/lab") + "/api"
        specs = _get(f"{api}/kernelspecs", token)
        with pytest.raises(urllib.error.HTTPError, match="403"):
            _get(f"{api}/contents")
        assert (tmp_path / "state" / "token").stat().st_mode & 0o077 == 0
        assert (tmp_path / "state" / "open.html").stat().st_mode & 0o077 == 0
        pid = lab.process.pid

    python3 = specs["kernelspecs"]["python3"]["spec"]
    assert python3["argv"][0] == sys.executable
    assert not procs.pid_alive(pid)
    assert not (tmp_path / "state" / "token").exists()
    assert token not in lab.log_file.read_text()


def test_main_refuses_a_missing_notebooks_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--notebooks", str(tmp_path / "none")]) == 2
    assert "no notebooks folder" in capsys.readouterr().err


def test_target_display_names_where_it_points_never_a_password(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "clusters: [{name: c, cluster: {server: 'https://k8s.internal:6443'}}]\n"
        "contexts: [{name: prod, context: {cluster: c}}]\ncurrent-context: prod\n")
    target = Target.from_parameters({
        "environment": "production", "kubeconfig": str(kubeconfig),
        "namespace": "paracle-prod",
        "postgres_dsn": "host=db.internal port=5432 dbname=paracle user=sre "
                        "password=kv-s3cret",
        "redis_url": "rediss://:r3dis-pw@cache.internal:6380/0",
        "prometheus_url": "http://scraper:pr0m-pw@prom.internal:9090"})

    shown = target.pointed_at()
    page = target._repr_html_() + repr(target)

    assert shown == {
        "cluster": "https://k8s.internal:6443", "context": "prod",
        "namespace": "paracle-prod", "database": "sre@db.internal:5432/paracle",
        "Redis": "rediss://cache.internal:6380/0",
        "Prometheus": "http://scraper@prom.internal:9090", "API": "-"}
    assert "Pointed at <code>production</code>" in page
    for secret in ("kv-s3cret", "r3dis-pw", "pr0m-pw"):
        assert secret not in page


def test_long_tables_and_texts_are_cut_saying_how_much():
    frame = pd.DataFrame({"query": ["SELECT " + "x, " * 200] * 30,
                          "pids": [[1, 2, 3]] * 30})
    page = compact_table(frame, max_rows=12)

    assert "First 12 of 30 rows; 18 more rows not shown." in page
    assert page.count("<tr>") == 12  # body rows; the header row has a style
    assert "x, " * 60 not in page and "…" in page
    assert "1, 2, 3" in page
