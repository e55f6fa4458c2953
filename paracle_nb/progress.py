"""The sweep's progress display: each runbook queued, running, or done.

On a terminal the whole table is redrawn in place at every change; into a
pipe or a file, each change is one line, so a batch log reads top to bottom.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from paracle_nb.sweep import SweepRun


class Progress:
    """Shows where each runbook of a sweep stands; safe to call from threads."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None
                 ) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.rows: dict[str, str] = {}
        self._drawn = 0
        self._lock = threading.Lock()

    def __call__(self, item: SweepRun) -> None:
        with self._lock:
            self.rows[item.runbook] = status_line(item)
            if self.live:
                self._redraw()
            else:
                self.stream.write(self.rows[item.runbook] + "\n")
            self.stream.flush()

    def _redraw(self) -> None:
        # Move up over the previous drawing, then write every row afresh.
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F")
        for line in self.rows.values():
            self.stream.write(f"\x1b[2K{line}\n")
        self._drawn = len(self.rows)


def status_line(item: SweepRun) -> str:
    """Return one runbook's progress line, e.g. ``done  redis/... CRITICAL ...``."""
    line = f"{item.state:<8} {item.runbook:<36}"
    if item.state != "done" or item.result is None:
        return line.rstrip()
    verdict = item.result.verdict
    if item.result.failed:
        outcome = f"FAILED {item.result.failed}"
    elif verdict.problem:
        outcome = f"{verdict.severity.value.upper()} {verdict.cause}"
    else:
        outcome = "no problem found"
    return f"{line} {outcome} ({item.duration_s:.1f} s)"
