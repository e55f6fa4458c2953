"""The demo: real incidents, reproduced, diagnosed and one of them remediated.

Three incidents of the lab are each diagnosed by their runbook. The pool
exhaustion is then remediated the way an on-call engineer would do it in a
batch: the runbook runs again with ``apply`` set to the id of the plan the
first run showed (ending the API's idle sessions), which is applied,
verified and audited. Last, the lab's PgBouncer shows the lasting fix: the
same clients, straight to Postgres and through the pooler, as a plot.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

from paracle_nb import run as runner
from paracle_nb.cli import print_result

log = logging.getLogger(__name__)

# (incident the lab reproduces, runbook that diagnoses it, its parameters)
SCENES: list[tuple[str, str, dict[str, Any]]] = [
    ("crashloop-oom", "api/pods-crashing", {}),
    # The lab's idle sessions are seconds old, not the 10 minutes of a real pool.
    ("pool-exhausted", "database/connection-pool-exhausted",
     {"idle_older_than": "1s"}),
    ("redis-oom", "redis/out-of-memory", {}),
]

REMEDIATED = "pool-exhausted"


def demo(artifacts: str = "artifacts") -> int:
    """Start the lab, reproduce each incident, run its runbook; 0 if all named."""
    from paracle_nb.sandbox.lab import Lab

    missed = 0
    print("Starting the incident lab (Postgres, Redis, Kubernetes API)...")
    with Lab() as lab:
        for incident, runbook, overrides in SCENES:
            print(f"\n== Incident: {incident} -> runbook {runbook}")
            with lab.incident(incident):
                result = runner.run(runbook, lab.parameters_file, overrides,
                                    artifacts=artifacts)
                print_result(result)
                if not result.verdict.problem or result.failed:
                    missed += 1
                elif incident == REMEDIATED:
                    missed += not _remediate(lab, runbook, overrides, result,
                                             artifacts)
        _pooling(lab, artifacts)
    print(f"\n{len(SCENES) - missed} of {len(SCENES)} incidents handled; "
          f"artifacts under {artifacts}/ (audit trail: {artifacts}/audit.jsonl)")
    return 0 if missed == 0 else 1


def _remediate(lab: Any, runbook: str, overrides: dict[str, Any],
               shown: runner.RunResult, artifacts: str) -> bool:
    """Apply the plan the first run showed, by its id; True if it worked."""
    from paracle_nb.remediate import plans_from_notebook

    plans = plans_from_notebook(json.loads(shown.notebook.read_text()))
    wanted = [p for p in plans if p["kind"] == "postgres.terminate_idle"
              and p["applicable"]]
    if not wanted:
        print("  no applicable plan to end idle sessions was shown")
        return False
    plan = wanted[0]
    print(f"\n== Remediation: apply plan {plan['id']} ({plan['title']})")
    result = runner.run(runbook, lab.parameters_file,
                        {**overrides, "apply": plan["id"]}, artifacts=artifacts)
    print_result(result)  # lists the plan as applied, with what it verified
    return result.verdict.finding("remediation-applied") is not None


def _pooling(lab: Any, artifacts: str) -> None:
    """Write the PgBouncer before/after plot, if PgBouncer is installed."""
    from paracle_nb import plots
    from paracle_nb.errors import MissingServerBinary
    from paracle_nb.sandbox.pgbouncer import PgBouncerServer, pooled_load

    print("\n== Lasting fix: PgBouncer in front of Postgres (measured in the lab)")
    pool_size = 8
    try:
        with PgBouncerServer(lab.postgres, pool_size=pool_size) as bouncer:
            direct = pooled_load(lab.postgres, clients=60)
            pooled = pooled_load(bouncer, clients=60)
    except MissingServerBinary as exc:
        print(f"  skipped: {exc}")
        return
    limits = {"max_connections": lab.postgres.max_connections,
              "superuser_reserved": lab.postgres.superuser_reserved_connections}
    folder = pathlib.Path(artifacts) / "pgbouncer"
    folder.mkdir(parents=True, exist_ok=True)
    figure = plots.pooling_plot(direct, pooled, limits, pool_size).figure
    figure.savefig(folder / "connections-before-after.png", dpi=100,
                   bbox_inches="tight")
    (folder / "measured.json").write_text(json.dumps(
        {"direct": direct, "pgbouncer": pooled, "pool_size": pool_size}, indent=1))
    print(f"  direct: {direct['served']} of 60 clients served, {direct['refused']} "
          f"refused, {direct['peak_server_connections']} server connections")
    print(f"  via PgBouncer: {pooled['served']} of 60 served on "
          f"{pooled['peak_server_connections']} server connections")
    print(f"  plot: {folder / 'connections-before-after.png'}")
