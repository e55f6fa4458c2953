"""Warm kernels: started once, then reused by one runbook after another.

Starting a kernel and importing pandas, matplotlib and the Kubernetes
client costs seconds every time; a sweep pays it once per kernel. Before
each runbook the kernel's namespace is reset and its environment set for
that run, and after a failed run the kernel is restarted, so a runbook
never inherits a stuck cell or a broken interpreter.

A kernel is used by one thread only: its manager and clients live on that
thread's event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import signal
import tempfile
from typing import Any

from papermill.engines import NBClientEngine, papermill_engines

from paracle_nb.artifact import RunFailure
from paracle_nb.deadline import KernelDeadline
from paracle_nb.errors import ParacleError
from paracle_nb.units import format_duration

log = logging.getLogger(__name__)

ENGINE_NAME = "paracle-warm"

# What every runbook imports sooner or later; loaded while the kernel warms.
WARM_MODULES = (
    "pandas", "matplotlib.figure", "matplotlib.dates", "kubernetes.client",
    "kubernetes.config", "psycopg", "redis", "yaml", "IPython.display",
    "paracle_nb.runbook", "paracle_nb.findings", "paracle_nb.target",
    "paracle_nb.kube", "paracle_nb.plots", "paracle_nb.postgres",
    "paracle_nb.redis", "paracle_nb.prometheus", "paracle_nb.diagnosis",
)


class KernelError(ParacleError):
    """A warm kernel could not start, warm up or take its next runbook."""


class WarmKernel:
    """One Python kernel, started once, that runs runbooks one at a time."""

    def __init__(self, name: str, cwd: str | os.PathLike[str] | None = None,
                 environ: dict[str, str] | None = None,
                 startup_timeout: float = 60.0) -> None:
        self.name = name
        self.cwd = str(cwd or os.getcwd())
        self.environ = dict(environ or {})
        self.startup_timeout = startup_timeout
        self.manager: Any = None
        self._sockets: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> None:
        """Start the kernel and import what the runbooks need."""
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        from paracle_nb.run import KERNEL_SETUP, _ipc_config

        self._sockets = tempfile.TemporaryDirectory(prefix="paracle-kernel-")
        self.manager = AsyncKernelManager(kernel_name="python3",
                                          config=_ipc_config(self._sockets.name))
        # An in-memory history: kernels running side by side share no file.
        run_sync(self.manager.start_kernel)(
            cwd=self.cwd, env={**os.environ, **self.environ},
            extra_arguments=[KERNEL_SETUP, "--HistoryManager.hist_file=:memory:"])
        imports = "\n".join(f"import {module}" for module in WARM_MODULES)
        self.run_code(imports, timeout=self.startup_timeout)
        log.debug("kernel %s warm", self.name)

    def run_code(self, code: str, timeout: float) -> None:
        """Execute code outside any notebook; raise if it fails."""
        from jupyter_core.utils import run_sync

        run_sync(self._run_code)(code, timeout)

    async def _run_code(self, code: str, timeout: float) -> None:
        client = self.manager.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=timeout)
            await self.ask(client, code, timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise KernelError(f"kernel {self.name} did not answer: {exc}") from None
        finally:
            client.stop_channels()

    async def ask(self, client: Any, code: str, timeout: float) -> None:
        """Execute code through a ready client, outside the notebook's cells."""
        reply = await client.execute_interactive(
            code, store_history=False, allow_stdin=False, timeout=timeout,
            output_hook=lambda message: None)
        content = reply["content"]
        if content["status"] != "ok":
            raise KernelError(f"kernel {self.name} could not prepare a run: "
                              f"{content.get('ename')}: {content.get('evalue')}")

    @property
    def pid(self) -> int:
        """The kernel's process id, 0 when it does not run."""
        provisioner = getattr(self.manager, "provisioner", None)
        return int(getattr(provisioner, "pid", 0) or 0)

    def execute(self, notebook: pathlib.Path, output: pathlib.Path,
                parameters: dict[str, Any], cell_timeout: float,
                environ: dict[str, str], deadline: float) -> RunFailure | None:
        """Run a notebook with papermill on this kernel; return why it stopped.

        Before its first cell, the kernel's namespace is emptied and
        ``environ`` set, so the runbook starts as on a fresh kernel. Past
        ``deadline`` seconds the kernel is interrupted, then killed.
        """
        import math

        import papermill

        watch = KernelDeadline(deadline)
        watch.pid = self.pid
        try:
            with watch:
                papermill.execute_notebook(
                    str(notebook), str(output), parameters=parameters,
                    engine_name=ENGINE_NAME, kernel_name="python3",
                    progress_bar=False, log_output=False,
                    execution_timeout=max(1, math.ceil(cell_timeout)),
                    # Saving after every cell costs more than most cells
                    # take; the engine saves once when a run ends early.
                    request_save_on_cell_execute=False,
                    warm_kernel=self, save_on_failure=output,
                    setup_code=_setup_code(environ))
        except Exception as exc:  # every way a run ends early becomes a failure
            return _why_stopped(exc, output, watch, cell_timeout)
        return None

    def restart(self) -> None:
        """Replace the kernel with a fresh, warm one."""
        log.info("restarting kernel %s after a failed run", self.name)
        self.shutdown()
        self.start()

    def interrupt(self) -> None:
        """Interrupt whatever the kernel runs (from any thread)."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)

    def shutdown(self) -> None:
        """Stop the kernel process and remove its sockets."""
        from jupyter_core.utils import run_sync

        if self.manager is not None and self.manager.has_kernel:
            run_sync(self.manager.shutdown_kernel)(now=True)
        self.manager = None
        if self._sockets is not None:
            self._sockets.cleanup()
            self._sockets = None


def _why_stopped(exc: Exception, output: pathlib.Path, watch: KernelDeadline,
                 cell_timeout: float) -> RunFailure:
    """Return why a run ended early, in the words ``paracle-nb run`` uses."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    from paracle_nb.run import _failure, _first_line

    if watch.reached and isinstance(exc, PapermillExecutionError):
        return _failure(output, "deadline-exceeded",
                        f"The deadline ({format_duration(watch.seconds)}) passed "
                        "and the kernel was interrupted")
    if watch.reached and isinstance(exc, DeadKernelError):
        return _failure(output, "deadline-exceeded",
                        f"The deadline ({format_duration(watch.seconds)}) passed; "
                        "the kernel ignored the interrupt and was killed")
    if isinstance(exc, PapermillExecutionError):
        return _failure(output, "cell-error",
                        f"{exc.ename}: {_first_line(exc.evalue)}")
    if isinstance(exc, DeadKernelError):
        return _failure(output, "kernel-died",
                        "The kernel died (killed, out of memory or crashed)")
    if isinstance(exc, CellTimeoutError):
        return _failure(output, "cell-timeout",
                        f"A cell ran longer than {format_duration(cell_timeout)}")
    return _failure(output, "run-failed",
                    f"{type(exc).__name__}: {_first_line(str(exc))}")


def _setup_code(environ: dict[str, str]) -> str:
    """Return the code that readies a used kernel for the next runbook."""
    return ("get_ipython().reset(new_session=True)\n"
            "import os as _os\n"
            f"_os.environ.update({environ!r})\n"
            "del _os\n")


class _WarmKernelEngine(NBClientEngine):  # type: ignore[misc]
    """Papermill's nbclient engine, on a kernel that outlives the run."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, *,
                                 warm_kernel: WarmKernel,
                                 save_on_failure: pathlib.Path,
                                 setup_code: str,
                                 log_output: bool = False,
                                 execution_timeout: int | None = None,
                                 start_timeout: float = 60,
                                 **kwargs: Any) -> Any:
        import nbformat
        from papermill.clientwrap import PapermillNotebookClient

        client = PapermillNotebookClient(
            nb_man, km=warm_kernel.manager, timeout=execution_timeout,
            startup_timeout=start_timeout, kernel_name=kernel_name, log=log,
            log_output=log_output)

        async def prepare(notebook: Any) -> None:
            await warm_kernel.ask(client.kc, setup_code, start_timeout)

        client.on_notebook_start = prepare
        try:
            return client.execute()
        except Exception:
            # Keep what ran, so the failure can name the cell it stopped in.
            save_on_failure.write_text(nbformat.writes(nb_man.nb))
            raise
        finally:
            # The client is ours to close; the kernel stays for the next run.
            if client.kc is not None:
                client.kc.stop_channels()


papermill_engines.register(ENGINE_NAME, _WarmKernelEngine)
