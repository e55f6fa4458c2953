"""Bad input to `paracle-nb run` gets one clear line, and no artifact debris."""

import pytest

from paracle_nb import cli
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


@pytest.mark.parametrize("argv, message", [
    (["run", "disk-full"], "unknown runbook 'disk-full'"),
    (["run", "redis/out-of-memory", "--parameters", "absent.yaml"],
     "parameters file not found"),
    (["run", "redis/out-of-memory", "-p", "colour", "blue"],
     "unknown parameter 'colour'"),
])
def test_cli_bad_input_is_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARACLE_NB_NOTEBOOKS", str(find_runbook("pods-crashing")
                                                   .parent.parent))
    code = cli.main([*argv, "--artifacts", str(tmp_path / "art")])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "art").exists()


def test_malformed_parameters_file_via_cli(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("namespace: [unclosed\n")
    code = cli.main(["run", "redis/out-of-memory", "--parameters", str(bad),
                     "--artifacts", str(tmp_path / "art")])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and "is not valid YAML at line" in err
