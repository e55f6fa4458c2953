"""Run the benchmarks; print a table and write it as JSON.

    python -m bench.run                       # all of them, 5 runs each
    python -m bench.run --only redis-delete --repeat 7

Results go to ``artifacts/bench/latest.json`` (and a copy named by time).
Exit status: 0 when every benchmark that ran met its target, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from bench import (
    import_time,
    kube_analysis,
    redis_keys,
    runbook_sweep,
    traceback_groups,
)
from bench.common import ROOT, BenchmarkError, Result
from paracle_nb.errors import ParacleError

BENCHMARKS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (runbook_sweep, redis_keys, traceback_groups, kube_analysis,
                   import_time)
}
MIN_REPEAT = 5

log = logging.getLogger("bench")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    names = args.only or list(BENCHMARKS)

    results = []
    for name in names:
        module = BENCHMARKS[name]
        print(f"== {name}: {module.WHAT}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"paracle-bench-{name}-") as workdir:
            results.append(_run_one(module, args.repeat, Path(workdir)))

    print(table(results))
    written = save(results, args.output, args.repeat)
    print(f"\nresults: {written}")
    return 0 if all(r.passed is not False for r in results) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS),
                        metavar="NAME", help="run this benchmark only (repeatable): "
                        + ", ".join(BENCHMARKS))
    parser.add_argument("--repeat", type=_repeat, default=MIN_REPEAT,
                        help=f"runs of each side (at least {MIN_REPEAT})")
    parser.add_argument("--output", type=Path, default=ROOT / "artifacts" / "bench",
                        help="folder for the JSON results")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _repeat(text: str) -> int:
    value = int(text)
    if value < MIN_REPEAT:
        raise argparse.ArgumentTypeError(f"at least {MIN_REPEAT} runs, for a median")
    return value


def _run_one(module: ModuleType, repeat: int, workdir: Path) -> Result:
    """Run one benchmark; a failure becomes a result that says so."""
    try:
        result: Result = module.run(repeat, workdir)
    except (BenchmarkError, ParacleError) as exc:
        result = Result(module.NAME, module.TARGET, available=False,
                        notes=[f"failed: {exc}"])
    for note in result.notes:
        print(f"   {note}", file=sys.stderr)
    return result


def table(results: list[Result]) -> str:
    """Return the results as an aligned text table."""
    header = ["benchmark", "ours median", "baseline median", "ratio", "target",
              "pass/fail", "runs"]
    rows = [header]
    for r in results:
        verdict = {True: "pass", False: "FAIL", None: "not available"}[r.passed]
        target = f"<= {r.target:g}x"
        if r.memory_limit:
            target += f", peak <= {r.memory_limit >> 20} MB"
            if r.peak_bytes:
                verdict += f" (peak {r.peak_bytes >> 20} MB)"
        rows.append([r.name, _seconds(r.ours_median), _seconds(r.baseline_median),
                     f"{r.ratio:.2f}x" if r.ratio is not None else "-", target,
                     verdict, str(min(len(r.ours), len(r.baseline)))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def save(results: list[Result], folder: Path, repeat: int) -> Path:
    """Write the results to ``folder/latest.json`` and a timestamped copy."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc)
    document = {
        "when": stamp.isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(),
                    "platform": platform.platform()},
        "repeat": repeat,
        "results": [r.as_dict() for r in results],
    }
    text = json.dumps(document, indent=2) + "\n"
    (folder / f"bench-{stamp:%Y%m%dT%H%M%SZ}.json").write_text(text)
    latest = folder / "latest.json"
    latest.write_text(text)
    return latest


if __name__ == "__main__":
    sys.exit(main())
