"""Bad input to `paracle-nb run` gets one clear line, and no artifact debris."""

import shlex

import pytest

from paracle_nb import cli, run
from paracle_nb.errors import ParameterError, UnknownRunbook
from paracle_nb.run import find_runbook, runbooks, split_parameters


def test_runbooks_are_listed():
    names = set(runbooks())
    assert {"api/pods-crashing", "database/connection-pool-exhausted",
            "redis/out-of-memory"} <= names


def test_short_names_resolve():
    assert find_runbook("pods-crashing").name == "pods-crashing.ipynb"
    assert find_runbook("redis/out-of-memory.ipynb").stem == "out-of-memory"


def test_unknown_runbook_names_the_known_ones():
    with pytest.raises(UnknownRunbook, match="known runbooks: .*pods-crashing"):
        find_runbook("disk-full")


@pytest.mark.parametrize("values, message", [
    ({"idle_older_tahn": "10min"},
     "unknown parameter 'idle_older_tahn'.*did you mean 'idle_older_than'.*known:"),
    ({"new_max_connections": "lots"}, "expects a whole number"),
    ({"new_max_connections": True}, "expects a whole number"),
    ({"new_max_connections": -5}, "must not be negative"),
    ({"idle_older_than": "soon"}, "not a duration"),
    ({"idle_older_than": "10"}, "needs a unit, e.g. '10min'"),
    ({"idle_older_than": 10}, "expects a string"),
])
def test_bad_parameters_are_refused(values, message):
    notebook = find_runbook("database/connection-pool-exhausted")
    with pytest.raises(ParameterError, match=message):
        split_parameters(notebook, values)


def test_parameters_split_into_target_and_notebook():
    notebook = find_runbook("database/connection-pool-exhausted")
    target, params = split_parameters(notebook, {
        "namespace": "x", "application": "worker", "new_max_connections": "300"})
    assert target == {"namespace": "x"}
    assert params == {"application": "worker", "new_max_connections": 300}


GOOD_TARGET = """\
kubeconfig: {tmp}/kubeconfig
namespace: paracle-prod
postgres_dsn: postgresql://paracle_sre@127.0.0.1:1/paracle
redis_url: redis://127.0.0.1:1/0
prometheus_url: http://127.0.0.1:1
api_url: http://127.0.0.1:1
timeout_seconds: 1
"""
KUBECONFIG = """\
clusters: [{name: lab, cluster: {server: "http://127.0.0.1:1"}}]
contexts: [{name: lab, context: {cluster: lab, user: lab}}]
users: [{name: lab, user: {}}]
current-context: lab
"""
FILES = {
    "good.yaml": GOOD_TARGET,
    "kubeconfig": KUBECONFIG,
    "bad.yaml": "namespace: [unclosed\n",
    "list.yaml": "- namespace\n- paracle-prod\n",
    "numbered.yaml": "1: paracle-prod\n",
    "empty.yaml": "",
    "typo.yaml": "namspace: paracle-prod\napi_url: http://127.0.0.1:1\n",
    "slow.yaml": "api_url: http://127.0.0.1:1\ntimeout_seconds: fast\n",
    "bad-kubeconfig": "clusters: [oops\n",
    "a-file": "not a folder\n",
    "utf16.yaml": b"\xff\xfen\x00a\x00m\x00e\x00",
    "parameters/staging.example.yaml": "namespace: paracle-staging\n",
}

# Every bad input gets one line on stderr naming the problem, exit code 2,
# and no artifact. ``{tmp}`` is the test's folder; without --parameters
# the run uses {tmp}/good.yaml, a target where nothing answers.
BAD_INPUT = [
    # runbooks
    ("run disk-full", "unknown runbook 'disk-full'; known runbooks: api/"),
    ("run redis", "unknown runbook 'redis'"),
    ("run api/pods-crashin", "did you mean 'api/pods-crashing'?"),
    ("run notebooks/triage.ipynb", "unknown runbook 'notebooks/triage.ipynb'"),
    ("run ../triage", "unknown runbook '../triage'"),
    ("run ''", "unknown runbook ''"),
    # parameters no runbook declares
    ("run redis/out-of-memory -p colour blue", "unknown parameter 'colour'"),
    ("run database/connection-pool-exhausted -p idle_older_tahn 10min",
     "did you mean 'idle_older_than'?"),
    ("run triage -p windw 5m", "did you mean 'window'?"),
    ("run triage -p namepsace x", "did you mean 'namespace'?"),
    ("run triage -p timeout 3", "did you mean 'timeout_seconds'?"),
    ("run llm/provider-errors -p secret_name s", "did you mean 'secret'?"),
    ("run triage -p job x -p jobs y", "unknown parameter 'jobs'"),
    ("run api/pods-crashing -p parameters_file x.yaml",
     "give the parameters file with --parameters FILE"),
    ("run triage --parameters {tmp}/typo.yaml",
     "unknown parameter 'namspace' for triage (did you mean 'namespace'?)"),
    # values of the wrong type
    ("run database/connection-pool-exhausted -p new_max_connections lots",
     "'new_max_connections' expects a whole number (default 200), got 'lots'"),
    ("run database/connection-pool-exhausted -p new_max_connections 2.5",
     "expects a whole number"),
    ("run database/connection-pool-exhausted -p new_max_connections true",
     "expects a whole number"),
    ("run database/connection-pool-exhausted -p new_max_connections -5",
     "must not be negative"),
    ("run database/connection-pool-exhausted -p idle_older_than soon",
     "not a duration"),
    ("run database/connection-pool-exhausted -p idle_older_than 10",
     "'idle_older_than' needs a unit, e.g. '10min' or '10s'"),
    ("run escalation/diagnostic-bundle -p verdicts_since 10",
     "'verdicts_since' needs a unit"),
    ("run triage -p window 5", "'window' needs a unit"),
    ("run api/high-latency -p sample_window 5", "'sample_window' needs a unit"),
    ("run triage -p threshold_seconds fast", "'threshold_seconds' expects a number"),
    ("run triage -p log_lines many", "'log_lines' expects a whole number"),
    ("run redis/out-of-memory -p max_keys_scanned '[1, 2]'",
     "expects a whole number"),
    ("run triage -p timeout_seconds fast",
     "parameter 'timeout_seconds' must be a number, got 'fast'"),
    ("run triage -p timeout_seconds 0", "timeout_seconds must be above 0"),
    ("run triage -p timeout_seconds -1", "timeout_seconds must be above 0"),
    # parameters files
    ("run triage --parameters absent.yaml", "parameters file not found: absent.yaml"),
    ("run triage --parameters {tmp}/bad.yaml", "is not valid YAML at line 2"),
    ("run triage --parameters {tmp}/list.yaml", "must be a mapping of names"),
    ("run triage --parameters {tmp}/numbered.yaml", "must be a mapping of names"),
    ("run triage --parameters {tmp}/empty.yaml", "the parameters name no target"),
    ("run triage --parameters {tmp}", "cannot read parameters file"),
    ("run triage --parameters {tmp}/slow.yaml",
     "'timeout_seconds' must be a number, got 'fast'"),
    ("run triage --parameters {tmp}/utf16.yaml",
     "utf16.yaml is not UTF-8 text (byte 0xff at offset 0); save it as UTF-8"),
    # environments
    ("run triage -p environment ../prod", "environment '../prod' is not a plain name"),
    ("run triage -p environment nowhere",
     "no parameters file for environment 'nowhere': write parameters/nowhere.yaml "
     "(examples to start from: staging.example.yaml)"),
    ("run triage -p environment staging",
     "copy parameters/staging.example.yaml to parameters/staging.yaml and edit it"),
    ("run triage -p environment sandbox",
     "start the lab with `paracle-nb sandbox up`"),
    # the target
    ("run triage -p kube_context nowhere",
     "context 'nowhere' is not in kubeconfig {tmp}/kubeconfig; it has: lab"),
    ("run triage -p kubeconfig {tmp}/absent", "cannot read kubeconfig"),
    ("run triage -p kubeconfig {tmp}/bad-kubeconfig", "is not valid YAML"),
    ("run triage -p namespace Paracle_Prod",
     "namespace 'Paracle_Prod' is not a valid Kubernetes namespace name"),
    ("run triage -p namespace paracle.prod",
     "namespace 'paracle.prod' is not a valid Kubernetes namespace name"),
    ("run database/slow-queries -p postgres_dsn 'not a dsn'",
     "postgres_dsn 'not a dsn' is not a valid connection string"),
    ("run database/slow-queries -p postgres_dsn postgresql://sre@db:abc/x",
     "postgres_dsn has port 'abc'; a port is a number"),
    ("run database/slow-queries -p postgres_dsn "
     "postgresql://sre:hunter2-in-dsn@db:abc/x",
     "a URL for host 'db' has a port that is not a number"),
    ("run redis/out-of-memory -p redis_url http://127.0.0.1:6379",
     "redis_url 'http://127.0.0.1:6379' must be a URL starting with redis://"),
    ("run triage -p prometheus_url 127.0.0.1:9090",
     "prometheus_url '127.0.0.1:9090' must be a URL starting with http://"),
    ("run triage -p api_url http://127.0.0.1:99999", "api_url "),
    # plans to apply
    ("run redis/out-of-memory -p apply notanid",
     "parameter 'apply' takes plan ids (10 lowercase hex digits, as a run shows "
     "them) and 'FLUSHDB db<N>'; got 'notanid'"),
    ("run redis/out-of-memory -p apply a992a0531d,A992A0531D", "got 'A992A0531D'"),
    ("run redis/out-of-memory -p apply a992a0531,flushdb", "got 'a992a0531', "
     "'flushdb'"),
    ("run redis/out-of-memory -p apply 'a992a0531d,FLUSHDB db'", "got 'FLUSHDB db'"),
    ("run database/connection-pool-exhausted -p apply 'a992a0531d FLUSHDB db0'",
     "got 'a992a0531d FLUSHDB db0'"),
    # the command's own options
    ("run triage --deadline 10", "--deadline needs a unit, e.g. '10min'"),
    ("run triage --deadline soon", "not a duration"),
    ("run triage --deadline 0s", "the deadline must be a positive duration"),
    ("run triage --cell-timeout 0", "the cell timeout must be above 0 seconds"),
    ("run triage --artifacts {tmp}/a-file", "is a file, not a folder"),
]


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """A folder with good and bad input files, and no parameters/ folder."""
    (tmp_path / "parameters").mkdir()
    for name, text in FILES.items():
        if isinstance(text, bytes):
            (tmp_path / name).write_bytes(text)
        else:
            (tmp_path / name).write_text(text.replace("{tmp}", str(tmp_path)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARACLE_NB_PARAMETERS", str(tmp_path / "parameters"))
    monkeypatch.setenv("PARACLE_NB_NOTEBOOKS", str(find_runbook("triage").parent))
    return tmp_path


def test_the_table_is_long_enough():
    assert len(BAD_INPUT) >= 40


@pytest.mark.parametrize("command, message", BAD_INPUT,
                         ids=[c for c, _ in BAD_INPUT])
def test_bad_input_gets_one_clear_line(command, message, workspace, capsys):
    argv = shlex.split(command.replace("{tmp}", str(workspace)))
    if "--parameters" not in argv and "environment" not in argv:
        argv += ["--parameters", str(workspace / "good.yaml")]
    if "--artifacts" not in argv:
        argv += ["--artifacts", str(workspace / "art")]

    code = cli.main(argv)

    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("paracle-nb: error: ")
    assert message.replace("{tmp}", str(workspace)) in err
    assert not (workspace / "art").exists()
    assert "hunter2" not in err


@pytest.mark.parametrize("apply", ["", "a992a0531d", "a992a0531d, 0123456789",
                                   "a992a0531d,FLUSHDB db0", "FLUSHDB db12"])
def test_plan_ids_and_second_confirmations_are_accepted(apply):
    notebook = find_runbook("redis/out-of-memory")
    _, params = split_parameters(notebook, {"apply": apply})
    assert params == {"apply": apply}


def test_malformed_parameters_file_via_cli(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("namespace: [unclosed\n")
    code = cli.main(["run", "redis/out-of-memory", "--parameters", str(bad),
                     "--artifacts", str(tmp_path / "art")])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and "is not valid YAML at line" in err


# -- input that is only found wrong once the run started: a finding -------

@pytest.mark.servers
@pytest.mark.notebook
def test_namespace_without_pods_is_a_finding(lab, artifacts):
    result = run.run("api/pods-crashing", lab.parameters_file,
                     {"namespace": "nothing-here", "timeout_seconds": "1"},
                     artifacts=artifacts)

    assert result.failed is None
    finding = result.verdict.finding("no-pods")
    assert finding is not None and "No pod matches" in finding.summary
    assert "no-pods" in result.html.read_text()


@pytest.mark.servers
@pytest.mark.notebook
def test_missing_password_file_is_a_finding(lab, artifacts, tmp_path):
    missing = tmp_path / "no-such-password"
    result = run.run("database/connection-pool-exhausted", lab.parameters_file,
                     {"postgres_password_file": str(missing),
                      "timeout_seconds": "1"}, artifacts=artifacts)

    assert result.failed is None
    [finding] = [f for f in result.verdict.findings if f.step == "Connect"]
    assert f"cannot read password file {missing}" in finding.summary
