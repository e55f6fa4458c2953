"""What every benchmark shares: timing child processes, results, verdicts."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class BenchmarkError(Exception):
    """A benchmark could not measure what it should (a run failed, data differ)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One timed execution: wall seconds and peak resident memory in bytes."""

    seconds: float
    peak_bytes: int = 0


@dataclasses.dataclass
class Result:
    """Ours against the baseline: the runs of each, the target ratio, notes."""

    name: str
    target: float
    ours: list[Run] = dataclasses.field(default_factory=list)
    baseline: list[Run] = dataclasses.field(default_factory=list)
    available: bool = True
    notes: list[str] = dataclasses.field(default_factory=list)
    memory_limit: int | None = None  # bytes ours may peak at, when there is one

    @property
    def ours_median(self) -> float | None:
        return _median([r.seconds for r in self.ours])

    @property
    def baseline_median(self) -> float | None:
        return _median([r.seconds for r in self.baseline])

    @property
    def peak_bytes(self) -> int | None:
        peaks = [r.peak_bytes for r in self.ours if r.peak_bytes]
        return max(peaks) if peaks else None

    @property
    def ratio(self) -> float | None:
        ours, baseline = self.ours_median, self.baseline_median
        if ours is None or not baseline:
            return None
        return ours / baseline

    @property
    def passed(self) -> bool | None:
        """True when the ratio (and memory, if limited) meet the target."""
        if self.ratio is None:
            return None
        peak = self.peak_bytes
        memory_ok = self.memory_limit is None or (peak or 0) <= self.memory_limit
        return self.ratio <= self.target and memory_ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "available": self.available,
            "ours_seconds": [round(r.seconds, 4) for r in self.ours],
            "baseline_seconds": [round(r.seconds, 4) for r in self.baseline],
            "ours_median": _rounded(self.ours_median),
            "baseline_median": _rounded(self.baseline_median),
            "ratio": _rounded(self.ratio),
            "target": self.target,
            "ours_peak_bytes": self.peak_bytes,
            "memory_limit_bytes": self.memory_limit,
            "passed": self.passed,
            "runs": min(len(self.ours), len(self.baseline)),
            "notes": self.notes,
        }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def in_turns(result: Result, repeat: int, ours: Callable[[], Run],
             baseline: Callable[[], Run],
             between: Callable[[], None] | None = None) -> Result:
    """Run ours and the baseline ``repeat`` times each, alternating.

    Alternating spreads whatever else the machine does over both sides.
    ``between`` runs before every measurement (e.g. to re-load data).
    """
    for _ in range(repeat):
        for side, measure in ((result.ours, ours), (result.baseline, baseline)):
            if between is not None:
                between()
            side.append(measure())
    return result


def timed_child(command: Sequence[str], *, env: dict[str, str] | None = None,
                stdout: IO[Any] | int | None = subprocess.DEVNULL,
                stdin: IO[Any] | int | None = subprocess.DEVNULL,
                cwd: Path | None = None, timeout: float = 600.0,
                exit_codes: Sequence[int] = (0,)) -> Run:
    """Run a command to its end; return its wall time and peak memory.

    The peak is the child's own maximum resident set (``wait4``), so it
    counts that process and not this one. An exit code not in
    ``exit_codes`` is an error.
    """
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(list(command), env=env, stdout=stdout,
                                 stdin=stdin, stderr=stderr, cwd=cwd)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                child.wait()
                raise BenchmarkError(f"{command[0]} did not finish in {timeout:.0f} s")
            time.sleep(0.002)
        seconds = time.perf_counter() - started
        # wait4 reaped the child; tell Popen so that it does not wait again.
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode not in exit_codes:
            stderr.seek(0)
            said = stderr.read().decode(errors="replace").strip()[-400:]
            raise BenchmarkError(f"{' '.join(command)[:120]} exited with "
                                 f"{child.returncode}: {said}")
    return Run(seconds, usage.ru_maxrss * 1024)


_TIMER = """
import json, resource, sys, time
exec(compile(sys.argv[1], "<setup>", "exec"))
started = time.perf_counter()
exec(compile(sys.argv[2], "<timed>", "exec"))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_bytes": peak}))
"""


def timed_python(setup: str, timed: str, *, env: dict[str, str] | None = None,
                 timeout: float = 600.0) -> Run:
    """Run ``setup`` then ``timed`` in a fresh Python; return the time of ``timed``.

    The peak memory is that of the whole child process.
    """
    done = subprocess.run([PYTHON, "-c", _TIMER, setup, timed], env=env or python_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        raise BenchmarkError(f"timed Python failed: {done.stderr.strip()[-600:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return Run(measured["seconds"], measured["peak_bytes"])


def python_env() -> dict[str, str]:
    """The environment for child Pythons: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env
