"""The demo: three real incidents, reproduced and diagnosed by the runbooks."""

from __future__ import annotations

import logging

from paracle_nb import run as runner
from paracle_nb.cli import print_result

log = logging.getLogger(__name__)

# (incident the lab reproduces, runbook that diagnoses it)
SCENES = [
    ("crashloop-oom", "api/pods-crashing"),
    ("pool-exhausted", "database/connection-pool-exhausted"),
    ("redis-oom", "redis/out-of-memory"),
]


def demo(artifacts: str = "artifacts") -> int:
    """Start the lab, reproduce each incident, run its runbook; 0 if all named."""
    from paracle_nb.sandbox.lab import Lab

    missed = 0
    print("Starting the incident lab (Postgres, Redis, Kubernetes API)...")
    with Lab() as lab:
        for incident, runbook in SCENES:
            print(f"\n== Incident: {incident} -> runbook {runbook}")
            with lab.incident(incident):
                result = runner.run(runbook, lab.parameters_file,
                                    artifacts=artifacts)
            print_result(result)
            if not result.verdict.problem or result.failed:
                missed += 1
    print(f"\n{len(SCENES) - missed} of {len(SCENES)} incidents diagnosed; "
          f"artifacts under {artifacts}/")
    return 0 if missed == 0 else 1
