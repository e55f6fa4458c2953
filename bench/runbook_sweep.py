"""Every runbook against the lab in one incident state: the sweep vs papermill.

Baseline: the ``papermill`` command line, once per runbook, one after
another, each with the lab's parameters file. Ours: ``paracle-nb sweep
--parameters FILE --artifacts DIR``, which runs them on warm kernels at
once and writes the incident folder. The lab holds one incident
(``pool-exhausted``) for the whole benchmark.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, BenchmarkError, Result, Run, in_turns, timed_child
from paracle_nb.sandbox.lab import Lab

NAME = "sweep"
TARGET = 0.33
WHAT = "sweep of every runbook vs the papermill CLI per runbook, in sequence"
INCIDENT = "pool-exhausted"

BIN = Path(sys.executable).parent
# Exit codes of a finished sweep: 0 nothing found, 1 a problem, 4 a critical one.
SWEEP_EXIT_CODES = (0, 1, 4)


def runbooks() -> list[Path]:
    """Every runbook notebook, in a stable order."""
    return sorted((ROOT / "notebooks").rglob("*.ipynb"))


def sweep_available() -> bool:
    """Tell whether this checkout has the ``paracle-nb sweep`` command."""
    done = subprocess.run([str(BIN / "paracle-nb"), "sweep", "--help"],
                          capture_output=True, timeout=120)
    return done.returncode == 0


def run(repeat: int, workdir: Path) -> Result:
    """Hold the incident, then time the sweep and the papermill sequence in turns."""
    result = Result(NAME, TARGET)
    if not sweep_available():
        result.available = False
        result.notes.append("not available: this checkout has no `paracle-nb sweep`")
        return result

    notebooks = runbooks()
    runs = iter(range(2 * repeat))
    with Lab() as lab:
        lab.reproduce(INCIDENT)
        parameters = str(lab.parameters_file)

        def ours() -> Run:
            folder = workdir / f"sweep-{next(runs)}"
            return timed_child([str(BIN / "paracle-nb"), "sweep", "--parameters",
                                parameters, "--artifacts", str(folder)],
                               cwd=ROOT, exit_codes=SWEEP_EXIT_CODES)

        def baseline() -> Run:
            folder = workdir / f"papermill-{next(runs)}"
            folder.mkdir()
            commands = [[str(BIN / "papermill"), str(notebook),
                         str(folder / notebook.name), "-p", "parameters_file",
                         parameters, "--no-progress-bar"] for notebook in notebooks]
            return _in_sequence(commands)

        in_turns(result, repeat, ours, baseline)
    result.notes.append(f"{len(notebooks)} runbooks, lab incident {INCIDENT}")
    return result


def _in_sequence(commands: list[list[str]]) -> Run:
    """Run commands one after another; return their summed time."""
    total = 0.0
    for command in commands:
        try:
            total += timed_child(command, cwd=ROOT).seconds
        except BenchmarkError as exc:
            raise BenchmarkError(f"papermill failed on {Path(command[1]).name}: "
                                 f"{exc}") from None
    return Run(total)
