"""A run's deadline: the kernel is interrupted, then killed, when it passes.

Per-call timeouts bound each step; the deadline bounds the whole run, for
what they cannot catch (a cell that loops, a library that ignores its
timeout). The cell the run was in when it stopped is read back from the
notebook papermill saved, so the artifact can name it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import signal
import threading
from typing import Any

from paracle_nb.units import format_duration

log = logging.getLogger(__name__)

KILL_GRACE = 10.0  # seconds from the deadline's interrupt to the kill


def running_cell(path: pathlib.Path) -> tuple[int, str | None] | None:
    """Return (index, heading above it) of the last cell the run started.

    papermill stamps each cell when it starts and saves the notebook when
    execution ends, even when the kernel died.
    """
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # missing or cut short: nothing to point at
        return None
    started = [i for i, cell in enumerate(nb.cells)
               if cell.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not started:
        return None
    return started[-1], heading_above(nb.cells, started[-1])


def heading_above(cells: list[Any], index: int) -> str | None:
    """Return the last markdown heading before a cell: the step it belongs to."""
    for cell in reversed(cells[:index]):
        if cell.cell_type != "markdown":
            continue
        for line in reversed(cell.source.splitlines()):
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return None


class KernelDeadline:
    """Interrupts, then kills, the kernel of a run that outlives its deadline.

    The kernel gets SIGINT first, which ends the running cell with
    KeyboardInterrupt; one that still runs ``grace`` seconds later gets
    SIGKILL. Only the kernel this run started is signalled, by its PID.
    """

    def __init__(self, seconds: float, grace: float | None = None) -> None:
        self.seconds = seconds
        self.grace = KILL_GRACE if grace is None else grace
        self.pid = 0
        self.reached = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="paracle-deadline")

    def __enter__(self) -> KernelDeadline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def manager_class(self) -> type:
        """Return a kernel manager class that tells this watch its kernel's PID."""
        from jupyter_client.manager import AsyncKernelManager

        watch = self

        class WatchedKernelManager(AsyncKernelManager):  # type: ignore[misc]
            async def start_kernel(  # type: ignore[override]
                    self, **kw: Any) -> None:
                await super().start_kernel(**kw)
                watch.pid = int(getattr(self.provisioner, "pid", 0) or 0)

            async def shutdown_kernel(  # type: ignore[override]
                    self, *args: Any, **kw: Any) -> None:
                # Once it is gone its PID may be another process's.
                watch.pid = 0
                await super().shutdown_kernel(*args, **kw)

        return WatchedKernelManager

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.reached = True
        log.warning("deadline of %s passed; interrupting the kernel",
                    format_duration(self.seconds))
        self._signal(signal.SIGINT)
        if self._done.wait(self.grace):
            return
        log.warning("the kernel ignored the interrupt; killing it")
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)
