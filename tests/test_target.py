import pytest

from paracle_nb.errors import ParameterError
from paracle_nb.target import Target, load_parameters


def test_password_in_dsn_is_held_not_shown(tmp_path):
    target = Target.from_parameters({
        "postgres_dsn": "postgresql://sre:s3cr3t-pw@db.internal:5432/paracle",
        "redis_url": "redis://:r3dis-pw@cache.internal:6379/0",
    })
    assert target.postgres_dsn == "postgresql://sre@db.internal:5432/paracle"
    assert target.postgres_password.reveal() == "s3cr3t-pw"
    assert target.redis_password.reveal() == "r3dis-pw"
    shown = repr(target) + target._repr_html_() + str(target.describe())
    assert "s3cr3t-pw" not in shown and "r3dis-pw" not in shown


def test_password_file_wins(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    target = Target.from_parameters({"postgres_dsn": "postgresql://a@h/db",
                                     "postgres_password_file": str(secret)})
    assert target.postgres_password.reveal() == "from-file"


def test_missing_password_file_is_one_clear_error_when_needed(tmp_path):
    target = Target.from_parameters({"redis_url": "redis://127.0.0.1:1/0",
                                     "postgres_password_file": str(tmp_path / "nope")})
    target.check()  # a runbook that never needs Postgres still runs
    with pytest.raises(ParameterError, match="cannot read password file"):
        target.postgres_password.reveal()


@pytest.mark.parametrize("values, message", [
    ({}, "name no target"),
    ({"redis_url": "redis://127.0.0.1:1/0", "timeout_seconds": 0},
     "timeout_seconds must be above 0"),
    ({"kubeconfig": "/nonexistent/kubeconfig"}, "cannot read kubeconfig"),
])
def test_unusable_targets_are_refused(values, message, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(ParameterError, match=message):
        Target.from_parameters(values).check()


def test_unknown_kube_context_names_the_known_ones(tmp_path):
    config = tmp_path / "kubeconfig"
    config.write_text("contexts: [{name: lab}, {name: prod}]\ncurrent-context: lab\n")
    with pytest.raises(ParameterError,
                       match="'nowhere' is not in kubeconfig.*lab, prod"):
        Target.from_parameters({"kubeconfig": str(config),
                                "kube_context": "nowhere"}).check()


def test_wrong_type_is_refused():
    with pytest.raises(ParameterError, match="'namespace' must be a str"):
        Target.from_parameters({"namespace": 42})


@pytest.mark.parametrize("content, message", [
    ("a: [1, 2", "not valid YAML at line"),
    ("- just\n- a list\n", "must be a mapping"),
    ("42", "must be a mapping"),
])
def test_malformed_parameters_file(tmp_path, content, message):
    path = tmp_path / "p.yaml"
    path.write_text(content)
    with pytest.raises(ParameterError, match=message):
        load_parameters(path)


def test_missing_parameters_file(tmp_path):
    with pytest.raises(ParameterError, match="parameters file not found"):
        load_parameters(tmp_path / "absent.yaml")


def test_environment_resolves_from_parameters_dir(tmp_path, monkeypatch):
    (tmp_path / "staging.yaml").write_text("namespace: paracle-staging\n")
    monkeypatch.setenv("PARACLE_NB_PARAMETERS", str(tmp_path))
    target = Target.resolve("staging")
    assert target.namespace == "paracle-staging"
    assert target.environment == "staging"
    with pytest.raises(ParameterError, match="paracle-nb sandbox up"):
        Target.resolve("sandbox")
