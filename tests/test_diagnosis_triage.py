"""Quick-diagnostics rules: each symptom points at the runbook to open next."""

import pandas as pd

from paracle_nb.diagnosis.triage import diagnose_triage, next_runbooks
from paracle_nb.errors import TargetUnreachable
from paracle_nb.runbook import Unavailable

HEALTHY = {"status": 200, "latency_ms": 12.0}


def _pods(*statuses):
    return pd.DataFrame({"pod": [f"p{i}" for i in range(len(statuses))],
                         "status": list(statuses)})


def test_healthy_has_nothing_to_open():
    assert diagnose_triage(HEALTHY, _pods("Running", "Running"),
                           ["level=info msg=ok"], {"targets": 3, "down": 0},
                           0.2) == []


def test_each_symptom_names_its_runbook():
    findings = diagnose_triage(
        Unavailable("Health", TargetUnreachable("refused")),
        _pods("CrashLoopBackOff", "Pending", "Running"),
        ['level=error msg="db" error="FATAL: sorry, too many clients already"',
         "Traceback (most recent call last):"],
        {"targets": 3, "down": 1}, 2.5)
    assert next_runbooks(findings)[0] == "api/pods-crashing"
    assert set(next_runbooks(findings)) == {
        "kubernetes/service-not-accessible", "api/pods-crashing",
        "kubernetes/pods-not-scheduling", "api/high-latency",
        "database/connection-pool-exhausted", "api/500-errors"}
