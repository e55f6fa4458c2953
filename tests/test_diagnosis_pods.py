"""Crashing pods: the rules for the guide's four causes, on hand-built evidence."""

import pandas as pd
import pytest

from paracle_nb.crash_plans import plan_database_url, plan_image_pull_secret
from paracle_nb.diagnosis.pods import (
    crash_causes_in_logs,
    database_error,
    database_reason,
    diagnose_pods_crashing,
    missing_env,
    missing_variable,
)
from paracle_nb.kube_config import DatabaseAttempt, classify_refusal
from paracle_nb.runbook import Unavailable
from paracle_nb.secrets import fingerprint
from paracle_nb.target import Target

MI = 2**20
AUTH = 'password authentication failed for user "paracle"'
DB_LINE = ('psycopg.OperationalError: connection failed: connection to server at '
           f'"10.96.0.12", port 5432 failed: FATAL:  {AUTH}')
KEY_LOG = ('level=error msg="missing required environment variable OPENAI_API_KEY"'
           "\nTraceback (most recent call last):\nKeyError: 'OPENAI_API_KEY'\n")
OOM_LOG = ('level=info logger=paracle.db msg="connection pool ready" pool_size=20\n'
           'level=info logger=paracle.cache msg="redis connected" port=6379\n'
           'level=warning msg="memory high" rss_mb=503 limit_mb=512\n')


def _containers(rows):
    base = {"state": "running", "reason": None, "ready": True, "restarts": 0,
            "last_reason": None, "last_exit_code": None, "last_finished": None,
            "memory_limit": 512 * MI, "memory_request": 256 * MI,
            "image": "registry.example.invalid/paracle-api:v1.0.3"}
    return pd.DataFrame([{**base, **r} for r in rows])


def _crashing(restarts=(3, 5), exit_code=1, reason="Error"):
    return _containers(
        [{"pod": f"p{i}", "container": "api", "state": "waiting",
          "reason": "CrashLoopBackOff", "ready": False, "restarts": n,
          "last_reason": reason, "last_exit_code": exit_code}
         for i, n in enumerate(restarts)]
        + [{"pod": f"p{i}", "container": "log-shipper"} for i in range(len(restarts))])


def _logs(text, restarts=(3, 5)):
    return pd.DataFrame([{"pod": f"p{i}", "container": "api", "restarts": n,
                          "last_line": text.splitlines()[-1], "log": text}
                         for i, n in enumerate(restarts)])


def _attempt(connected=False, failure="authentication", refusal=AUTH):
    return DatabaseAttempt(
        variable="DATABASE_URL", source="secret paracle-secrets/DATABASE_URL",
        secret="paracle-secrets", key="DATABASE_URL",
        endpoint="postgres-primary:5432/paracle", user="paracle",
        fingerprint="0a1b2c3d", connected=connected,
        failure=None if connected else failure,
        refusal=None if connected else refusal)


def _env(names, container="api"):
    return pd.DataFrame([{"container": container, "name": n, "source": "x",
                          "resolved": True, "problem": None} for n in names])


REQUIRED = "DATABASE_URL,REDIS_URL,OPENAI_API_KEY,ANTHROPIC_API_KEY,LOG_LEVEL"
ALL_SET = missing_env(_env(REQUIRED.split(",")), REQUIRED)


def _causes(findings, at_least="warning"):
    rank = ["ok", "info", "warning", "critical"].index(at_least)
    return [f.cause for f in findings if f.severity.rank >= rank]


# -- reading the crashed container's log -----------------------------------------

def test_database_error_and_what_the_server_said():
    assert database_error(f"starting\n{DB_LINE}\n") == DB_LINE
    assert database_reason(DB_LINE) == AUTH
    refused = ('connection to server at "10.96.0.12", port 5432 failed: '
               "Connection refused")
    assert database_reason(database_error(refused)) == "Connection refused"


def test_healthy_and_redis_lines_are_not_database_errors():
    assert database_error(OOM_LOG) is None
    assert database_error("redis.exceptions.ConnectionError: Error 111 "
                          "connecting to redis:6379. Connection refused.") is None


def test_missing_variable_from_app_line_or_key_error():
    assert missing_variable(KEY_LOG) == "OPENAI_API_KEY"
    assert missing_variable("KeyError: 'OPENAI_API_KEY'") == "OPENAI_API_KEY"
    assert missing_variable("KeyError: 'user_id'") is None
    assert missing_variable(OOM_LOG) is None


def test_causes_in_logs_per_container():
    causes = crash_causes_in_logs(_logs(DB_LINE))
    assert list(causes["database_reason"]) == [AUTH, AUTH]
    assert causes["missing_variable"].isna().all()
    assert crash_causes_in_logs(Unavailable("logs", OSError())).empty


@pytest.mark.parametrize("message, kind, said", [
    (f'connection failed: connection to server at "127.0.0.1", port 5 failed: '
     f"FATAL:  {AUTH}", "authentication", AUTH),
    ('connection to server at "127.0.0.1", port 5 failed: Connection refused\n'
     "\tIs the server running on that host and accepting TCP/IP connections?",
     "unreachable", "Connection refused"),
    ('connection to server at "h", port 5432 failed: FATAL:  database "x" does '
     "not exist", "database", 'database "x" does not exist'),
    ("connection timeout expired", "timeout", "connection timeout expired"),
    ('connection to server at "h", port 5432 failed: FATAL:  sorry, too many '
     "clients already", "no-slot", "sorry, too many clients already"),
])
def test_classify_refusal(message, kind, said):
    assert classify_refusal(message) == (kind, said)


# -- one cause per incident ------------------------------------------------------

def test_database_failure_from_logs_and_refused_attempt_is_the_only_cause():
    findings = diagnose_pods_crashing(_crashing(), logs=_logs(DB_LINE),
                                      database=_attempt(), env=ALL_SET)
    assert _causes(findings) == ["database-connection-failure"]
    [finding] = findings
    assert finding.severity.value == "critical"
    assert finding.evidence["restarts"] == {"p0": 3, "p1": 5}
    assert finding.evidence["log_reason"] == AUTH
    assert finding.evidence["attempt_refusal"] == AUTH
    assert finding.evidence["attempt_secret_fingerprint"] == "0a1b2c3d"
    assert "refused too" in finding.summary


def test_database_failure_in_logs_but_attempt_connects_points_at_network():
    [finding] = diagnose_pods_crashing(_crashing(), logs=_logs(DB_LINE),
                                       database=_attempt(connected=True))
    assert finding.cause == "database-connection-failure"
    assert "network path" in finding.summary


def test_refused_url_without_crash_is_a_warning():
    [finding] = diagnose_pods_crashing(_containers([{"pod": "p", "container": "api"}]),
                                       database=_attempt())
    assert finding.cause == "database-connection-failure"
    assert finding.severity.value == "warning"


def test_unreachable_from_the_runbook_without_crash_is_no_cause():
    findings = diagnose_pods_crashing(
        _containers([{"pod": "p", "container": "api"}]),
        database=_attempt(failure="unreachable", refusal="Name or service not known"))
    assert _causes(findings) == []
    assert [f.cause for f in findings] == ["database-unverified"]


def test_missing_env_var_named_by_spec_and_log():
    env = _env(["DATABASE_URL", "REDIS_URL", "ANTHROPIC_API_KEY", "LOG_LEVEL"])
    required = missing_env(env, REQUIRED)
    assert list(required.loc[~required["provided"], "name"]) == ["OPENAI_API_KEY"]

    findings = diagnose_pods_crashing(_crashing(), logs=_logs(KEY_LOG),
                                      database=_attempt(connected=True),
                                      env=required)
    assert _causes(findings) == ["missing-env-var"]
    evidence = findings[0].evidence
    assert evidence["missing"] == ["OPENAI_API_KEY"]
    assert evidence["named_in_logs"] == ["OPENAI_API_KEY"]
    assert evidence["log_corroborated"] is True
    assert evidence["container"] == "api"


def test_unresolved_reference_counts_as_missing():
    env = _env(REQUIRED.split(","))
    env.loc[env["name"] == "REDIS_URL", ["resolved", "problem"]] = [
        False, "key REDIS_URL not in secret paracle-secrets"]
    [finding] = diagnose_pods_crashing(_containers([{"pod": "p", "container": "api"}]),
                                       env=missing_env(env, REQUIRED))
    assert finding.cause == "missing-env-var" and finding.severity.value == "warning"
    assert finding.evidence["problems"] == {
        "REDIS_URL": "key REDIS_URL not in secret paracle-secrets"}


def _pulling():
    return _containers([
        {"pod": f"p{i}", "container": "api", "state": "waiting", "reason": reason,
         "ready": False, "image": "registry.example.invalid/paracle-api:v1.0.4"}
        for i, reason in enumerate(["ErrImagePull", "ImagePullBackOff"])])


PULL_ERROR = ('Failed to pull image "registry.example.invalid/paracle-api:v1.0.4": '
              "failed to resolve reference: unexpected status from HEAD request: "
              "401 Unauthorized")


def test_image_pull_error_with_registry_answer_and_missing_secret():
    events = pd.DataFrame([
        {"last_seen": None, "type": "Warning", "reason": "Failed", "object": "pod/p0",
         "count": 6, "message": PULL_ERROR},
        {"last_seen": None, "type": "Warning", "reason": "Failed", "object": "pod/p0",
         "count": 6, "message": "Error: ErrImagePull"}])
    secrets = pd.DataFrame([{"pod": p, "service_account": "paracle-api",
                             "secret": "regcred",
                             "referenced_by": "serviceaccount/paracle-api",
                             "exists": False, "type": None} for p in ("p0", "p1")])
    findings = diagnose_pods_crashing(_pulling(), events=events,
                                      pull_secrets=secrets, env=ALL_SET,
                                      database=_attempt(connected=True))
    assert _causes(findings) == ["image-pull-error"]
    evidence = findings[0].evidence
    assert evidence["registry_answer"] == "401 Unauthorized"
    assert evidence["pull_error"] == PULL_ERROR
    assert evidence["registry"] == "registry.example.invalid"
    assert evidence["missing_pull_secrets"] == ["regcred"]
    assert evidence["waiting_reasons"] == {"p0": "ErrImagePull",
                                           "p1": "ImagePullBackOff"}


def test_oom_still_named_alone():
    findings = diagnose_pods_crashing(_crashing(exit_code=137, reason="OOMKilled"),
                                      logs=_logs(OOM_LOG), env=ALL_SET,
                                      database=_attempt(connected=True))
    assert _causes(findings) == ["oom-killed"]


def test_unexplained_crash_stays_a_crashloop():
    findings = diagnose_pods_crashing(_crashing(), logs=_logs("boom\n"),
                                      env=ALL_SET, database=_attempt(connected=True))
    assert _causes(findings) == ["crashloop"]


def test_healthy_pods_name_no_cause():
    healthy = _containers([{"pod": "p", "container": "api"},
                           {"pod": "p", "container": "log-shipper"}])
    assert diagnose_pods_crashing(healthy, env=ALL_SET,
                                  database=_attempt(connected=True)) == []
    assert diagnose_pods_crashing(Unavailable("pods", OSError())) == []


# -- plans that never show a secret value ----------------------------------------

def test_database_plan_shows_fingerprints_not_values(tmp_path):
    corrected = "postgresql://paracle:n3w-pass@postgres-primary:5432/paracle"
    url_file = tmp_path / "url"
    url_file.write_text(corrected + "\n")
    [finding] = diagnose_pods_crashing(_crashing(), logs=_logs(DB_LINE),
                                       database=_attempt())

    plan = plan_database_url(Target(), finding.evidence, "paracle-api",
                             str(url_file))
    shown = plan._repr_html_()
    assert "secret/paracle-secrets" in shown and "data.DATABASE_URL" in shown
    assert "sha256:0a1b2c3d" in shown
    assert f"sha256:{fingerprint(corrected)}" in shown
    assert "n3w-pass" not in shown and "kubectl rollout restart" in shown


def test_image_pull_plan_patches_the_service_account_when_it_names_none():
    evidence = {"service_account": "paracle-api", "image_pull_secrets": [],
                "missing_pull_secrets": [], "registry": "registry.example.invalid"}
    plan = plan_image_pull_secret(Target(), evidence, "paracle-api")
    assert "kubectl create secret docker-registry regcred" in plan.command
    assert ("kubectl patch serviceaccount paracle-api -n paracle-prod -p "
            "'{\"imagePullSecrets\": [{\"name\": \"regcred\"}]}'") in plan.command
    assert "--docker-server=registry.example.invalid" in plan.command


def test_no_pods_is_never_all_clear():
    import pandas as pd

    from paracle_nb.diagnosis.pods import diagnose_pods_crashing

    [finding] = diagnose_pods_crashing(pd.DataFrame(columns=["pod", "container"]))
    assert finding.cause == "no-pods" and finding.severity.value == "warning"
