"""API pods crashing: each of the guide's four causes named from real evidence.

One lab for the module: real Postgres behind the DATABASE_URL the pods get
from their Secret, our Kubernetes API serving each incident's cluster state.
Every run must name its incident's cause and no other, with the values that
prove it, and never write a secret value into its artifact.
"""

import base64
import json

import pytest

from paracle_nb import kube_config, run
from paracle_nb.sandbox.lab import NAMESPACE
from paracle_nb.secrets import fingerprint
from paracle_nb.target import Target

pytestmark = [pytest.mark.servers, pytest.mark.notebook]

RUNBOOK = "api/pods-crashing"
CAUSES = {"oom-killed", "database-connection-failure", "missing-env-var",
          "image-pull-error", "crashloop"}


def _database_url(lab):
    secret = lab.kube.store.get("Secret", NAMESPACE, "paracle-secrets")
    return base64.b64decode(secret["data"]["DATABASE_URL"]).decode()


def _run(lab, artifacts):
    # Read before the run: the Secret's value must not reach the artifact.
    url = _database_url(lab)
    result = run.run(RUNBOOK, lab.parameters_file, artifacts=artifacts)
    assert result.failed is None, result.failed
    written = b"".join(p.read_bytes() for p in result.folder.iterdir())
    for secret in (url, url.split("@")[0].rsplit(":", 1)[1],
                   lab.postgres.password("paracle"),
                   lab.postgres.password("paracle_sre"), lab.redis.password):
        assert secret.encode() not in written
    return result


def _only(result, cause):
    assert result.verdict.causes == [cause], result.verdict.to_dict()
    assert not (set(result.verdict.causes) - {cause}) & CAUSES
    return result.verdict.finding(cause).evidence


def test_healthy_lab_secret_points_at_real_postgres(lab):
    target = Target.resolve(parameters_file=str(lab.parameters_file))
    attempt = kube_config.try_database_url(target, "paracle-api", "api")

    assert attempt.connected, attempt.evidence()
    assert attempt.endpoint == f"127.0.0.1:{lab.postgres.port}/paracle"
    assert attempt.user == "paracle"
    assert attempt.source == "secret paracle-secrets/DATABASE_URL"
    assert attempt.fingerprint == fingerprint(_database_url(lab))


def _deployment_copy(lab, name, env):
    """A uniquely named copy of the API deployment whose api container has env."""
    deployment = lab.kube.store.get("Deployment", NAMESPACE, "paracle-api")
    deployment["metadata"] = {"name": name, "namespace": NAMESPACE}
    deployment["spec"]["template"]["spec"]["containers"][0]["env"] = env
    lab.kube.store.put(deployment)
    return Target.resolve(parameters_file=str(lab.parameters_file))


def test_env_names_read_keys_never_values(lab):
    target = Target.resolve(parameters_file=str(lab.parameters_file))
    env = kube_config.env_names(target, "paracle-api", "api")

    sources = dict(zip(env["name"], env["source"], strict=True))
    assert sources["LLM_TIMEOUT"] == "configmap paracle-config (envFrom)"
    assert sources["OPENAI_API_KEY"] == "secret paracle-secrets/OPENAI_API_KEY"
    assert sources["LOG_LEVEL"] == "value in the deployment"
    assert env["resolved"].all()
    assert "3600" not in env.to_string() and "info" not in set(env["source"])
    assert kube_config.pull_secrets(target, lab.kube.store.list(
        "Pod", NAMESPACE)).empty


def test_unresolved_references_are_reported(lab):
    target = _deployment_copy(lab, "paracle-api-test-unresolved", [
        {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": "paracle-secrets", "key": "OPENAI_KEY_RENAMED"}}},
        {"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {
            "name": "paracle-config-test-absent", "key": "LOG_LEVEL"}}}])
    env = kube_config.env_names(target, "paracle-api-test-unresolved", "api")

    problems = dict(zip(env["name"], env["problem"], strict=True))
    assert problems["OPENAI_API_KEY"] == \
        "key OPENAI_KEY_RENAMED not in secret paracle-secrets"
    assert problems["LOG_LEVEL"] == "configmap paracle-config-test-absent not found"


def test_unreachable_database_url_is_classified(lab):
    from paracle_nb.sandbox import procs

    closed = procs.free_port()
    lab.write_secret("paracle-secrets-test-closed", {
        "DATABASE_URL": f"postgresql://paracle:x@127.0.0.1:{closed}/paracle"})
    target = _deployment_copy(lab, "paracle-api-test-closed", [
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {
            "name": "paracle-secrets-test-closed", "key": "DATABASE_URL"}}}])
    attempt = kube_config.try_database_url(target, "paracle-api-test-closed", "api")

    assert not attempt.connected and not attempt.server_refused
    assert attempt.failure == "unreachable"
    assert attempt.refusal == "Connection refused"
    assert attempt.endpoint == f"127.0.0.1:{closed}/paracle"


def test_healthy_lab_names_no_cause(lab, artifacts):
    result = _run(lab, artifacts)
    assert not result.verdict.problem, result.verdict.to_dict()
    assert result.verdict.cause is None
    assert "No cause found" in result.html.read_text()


def test_oom_is_named_and_nothing_else(lab, artifacts):
    with lab.incident("crashloop-oom"):
        result = _run(lab, artifacts)

    evidence = _only(result, "oom-killed")
    assert sorted(evidence["restarts"].values()) == [7, 9, 12]
    assert evidence["last_exit_code"] == 137
    assert ("kubectl --context paracle-sandbox set resources "
            "deployment/paracle-api -c api --limits=memory=1024Mi"
            in result.html.read_text())


def test_database_failure_is_named_from_logs_and_a_real_attempt(lab, artifacts):
    with lab.incident("crashloop-db-connection") as stale:
        result = _run(lab, artifacts)

    evidence = _only(result, "database-connection-failure")
    assert evidence["container"] == "api"
    assert evidence["restarts"] == {"paracle-api-7c9f8d6b5-x2v7k": 6,
                                    "paracle-api-7c9f8d6b5-m4q9t": 8,
                                    "paracle-api-7c9f8d6b5-hz8rw": 11}
    refused = 'password authentication failed for user "paracle"'
    assert evidence["log_reason"] == refused
    # The lab's real server refused the stale password the Secret holds.
    assert evidence["attempt_connected"] is False
    assert evidence["attempt_failure"] == "authentication"
    assert evidence["attempt_refusal"] == refused
    assert evidence["attempt_endpoint"] == f"127.0.0.1:{lab.postgres.port}/paracle"
    assert evidence["attempt_user"] == stale["user"] == "paracle"
    assert evidence["attempt_secret"] == "paracle-secrets"
    assert evidence["attempt_key"] == "DATABASE_URL"
    assert evidence["attempt_secret_fingerprint"] == stale["secret_fingerprint"]
    html = result.html.read_text()
    assert "secret/paracle-secrets" in html and \
        "kubectl --context paracle-sandbox rollout restart" in html
    assert f"sha256:{stale['secret_fingerprint']}" in html


def test_healing_points_the_secret_back_at_postgres(lab):
    with lab.incident("crashloop-db-connection") as stale:
        assert fingerprint(_database_url(lab)) == stale["secret_fingerprint"]
    target = Target.resolve(parameters_file=str(lab.parameters_file))
    assert kube_config.try_database_url(target, "paracle-api", "api").connected


def test_missing_env_var_is_named_by_name_only(lab, artifacts):
    with lab.incident("crashloop-missing-env"):
        result = _run(lab, artifacts)

    evidence = _only(result, "missing-env-var")
    assert evidence["container"] == "api"
    assert evidence["missing"] == ["OPENAI_API_KEY"]
    recorded = json.loads(result.notebook.read_text())["metadata"]["paracle"]
    assert recorded["verdict"]["causes"] == ["missing-env-var"]
    assert evidence["named_in_logs"] == ["OPENAI_API_KEY"]
    assert evidence["log_corroborated"] is True
    assert sorted(evidence["restarts"].values()) == [4, 5, 7]
    html = result.html.read_text()
    assert "--from=secret/paracle-secrets --keys=OPENAI_API_KEY" in html
    openai_key = lab.kube.store.get("Secret", NAMESPACE,
                                    "paracle-secrets")["data"]["OPENAI_API_KEY"]
    written = b"".join(p.read_bytes() for p in result.folder.iterdir())
    assert openai_key.encode() not in written
    assert base64.b64decode(openai_key) not in written


def test_image_pull_error_is_named_with_registry_answer_and_pull_secret(
        lab, artifacts):
    with lab.incident("image-pull-error"):
        result = _run(lab, artifacts)

    evidence = _only(result, "image-pull-error")
    assert evidence["image"] == "registry.example.invalid/paracle-api:v1.0.4"
    assert evidence["pods_waiting"] == 3
    assert sorted(evidence["waiting_reasons"].values()) == [
        "ErrImagePull", "ImagePullBackOff", "ImagePullBackOff"]
    assert evidence["restarts"] == 0
    assert evidence["registry_answer"] == "401 Unauthorized"
    assert evidence["pull_error"].startswith(
        'Failed to pull image "registry.example.invalid/paracle-api:v1.0.4"')
    assert evidence["service_account"] == "paracle-api"
    assert evidence["image_pull_secrets"] == ["regcred"]
    assert evidence["missing_pull_secrets"] == ["regcred"]
    html = result.html.read_text()
    assert "kubectl --context paracle-sandbox create secret docker-registry regcred" \
        in html

