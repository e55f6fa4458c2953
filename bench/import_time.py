"""``import paracle_nb`` against importing what it leans on.

A runbook's first cell imports the package and the helper modules every
runbook uses; kubernetes, pandas and matplotlib load only when a step
needs them. ``paracle_nb`` alone imports nothing, so our side imports
those modules too. Each side is timed inside a fresh interpreter, from
just before the import to just after.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Result, in_turns, python_env, timed_python

NAME = "import"
TARGET = 0.3
WHAT = ("import paracle_nb and its runbook helpers vs import kubernetes, "
        "pandas, matplotlib.pyplot")

OURS = ("import paracle_nb, paracle_nb.runbook, paracle_nb.target, "
        "paracle_nb.findings, paracle_nb.actions, paracle_nb.plots, "
        "paracle_nb.kube, paracle_nb.postgres, paracle_nb.redis")
BASELINE = "import kubernetes, pandas, matplotlib.pyplot"


def run(repeat: int, workdir: Path) -> Result:
    """Time both imports ``repeat`` times each, in turns."""
    env = python_env()
    env["MPLBACKEND"] = "Agg"
    result = Result(NAME, TARGET)
    return in_turns(result, repeat,
                    ours=lambda: timed_python("", OURS, env=env),
                    baseline=lambda: timed_python("", BASELINE, env=env))
