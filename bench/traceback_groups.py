"""Tracebacks extracted and grouped from 200 MB of API log, against ``grep``.

Baseline: ``grep -A 20 Traceback`` over the same file, its output written
to a file (grep stops at the first match when it writes to /dev/null),
which finds the lines but groups nothing. Ours: ``group(extract_file(path))``
timed inside a fresh Python that has imported pandas already, as the
runbook's kernel has by the time it gets there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.api_log import write_api_log
from bench.common import BenchmarkError, Result, in_turns, timed_child, timed_python
from paracle_nb.tracebacks import extract_file, group

NAME = "tracebacks"
TARGET = 2.0
WHAT = "group tracebacks of a 200 MB API log vs grep -A 20 Traceback"

LOG_BYTES = 200 * 1000 * 1000
SETUP = "import pandas\nfrom paracle_nb.tracebacks import extract_file, group"


def run(repeat: int, workdir: Path) -> Result:
    """Write the log once, check what ours finds, then time both in turns."""
    grep = shutil.which("grep")
    if grep is None:
        raise BenchmarkError("grep is not installed (the baseline needs it)")
    log_path = workdir / "api.log"
    written = write_api_log(log_path, LOG_BYTES)
    found = extract_file(log_path)
    if len(found) != written:
        raise BenchmarkError(f"found {len(found)} tracebacks of the {written} written")
    groups = group(found)

    result = Result(NAME, TARGET)
    result.notes.append(f"{log_path.stat().st_size / 1e6:.0f} MB, {written} tracebacks"
                        f" in {len(groups)} groups")
    timed = f"group(extract_file({str(log_path)!r}))"

    def baseline():  # type: ignore[no-untyped-def]
        with (workdir / "grep.out").open("wb") as out:
            return timed_child([grep, "-A", "20", "Traceback", str(log_path)],
                               stdout=out)

    return in_turns(result, repeat, ours=lambda: timed_python(SETUP, timed),
                    baseline=baseline)
