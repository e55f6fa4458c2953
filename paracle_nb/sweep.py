"""The incident sweep: every runbook, or a tagged few, against one target at once.

``sweep()`` runs the selected runbooks read-only on a small pool of warm
kernels (:mod:`paracle_nb.kernels`) into one incident folder,
``artifacts/<stamp>-sweep-<hex>/``: one sub-folder per runbook with its
executed notebook, HTML and verdict, then the one-page ``index.html``, the
machine-readable ``findings.json`` and the scrubbed ``incident.zip``
(:mod:`paracle_nb.report`). Like a single run, the folder is assembled
under a hidden name and appears only when complete.

The escalation bundle runs last, over the verdicts the sweep just wrote.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import logging
import os
import pathlib
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from paracle_nb import artifact, report
from paracle_nb import run as runner
from paracle_nb.artifact import RunFailure
from paracle_nb.bundle import ARTIFACT_DIR_ENV
from paracle_nb.errors import ParameterError
from paracle_nb.findings import Severity
from paracle_nb.kernels import KernelError, WarmKernel
from paracle_nb.redact import Scrubber
from paracle_nb.target import TARGET_KEYS, Target

log = logging.getLogger(__name__)

ESCALATION = "escalation/diagnostic-bundle"

# Tags beyond a runbook's folder (api, database, redis, llm, kubernetes,
# escalation): what else a runbook looks at, so `--only redis` finds every
# runbook that can blame Redis.
EXTRA_TAGS: dict[str, tuple[str, ...]] = {
    "triage": ("triage", "api", "kubernetes"),
    "api/pods-crashing": ("kubernetes", "database"),
    "api/high-latency": ("database", "redis", "llm"),
    "api/500-errors": ("kubernetes",),
    "llm/provider-errors": ("api",),
    "kubernetes/service-not-accessible": ("api",),
}

# Runbooks that sample the target seconds apart: they start first, so the
# waiting overlaps the other runbooks instead of ending the sweep.
STARTS_FIRST = ("api/high-latency",)

QUEUED, RUNNING, DONE, SKIPPED = "queued", "running", "done", "skipped"


def runbook_tags(name: str) -> tuple[str, ...]:
    """Return a runbook's tags: its folder, then what else it looks at."""
    folder = (name.split("/")[0],) if "/" in name else ()
    extra = EXTRA_TAGS.get(name, ())
    return tuple(dict.fromkeys((*folder, *extra)))


def known_tags() -> list[str]:
    """Return every tag some runbook carries."""
    return sorted({tag for name in runner.runbooks() for tag in runbook_tags(name)})


def select_runbooks(only: Sequence[str] = ()) -> list[str]:
    """Return the runbooks to sweep, in the order they start.

    With ``only``, a runbook is selected when it carries any of the tags
    or is named by one of them; an unknown tag is refused.
    """
    names = list(runner.runbooks())
    wanted = {tag.strip().strip("/") for tag in only if tag.strip()}
    if wanted:
        unknown = wanted - set(known_tags()) - set(names)
        if unknown:
            raise ParameterError(_unknown_tags(sorted(unknown), names))
        names = [n for n in names if n in wanted or wanted & set(runbook_tags(n))]
    first = [n for n in STARTS_FIRST if n in names]
    rest = [n for n in names if n not in first and n != ESCALATION]
    return first + rest + ([ESCALATION] if ESCALATION in names else [])


def _unknown_tags(unknown: list[str], names: list[str]) -> str:
    """Return the refusal of unknown ``--only`` tags, with the closest known."""
    tags = known_tags()
    close = [match for tag in unknown
             for match in difflib.get_close_matches(tag, tags + names, n=1)]
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return (f"unknown tag {', '.join(unknown)}{hint}; known tags: "
            f"{', '.join(tags)}; a runbook's name selects it too, "
            "as `paracle-nb list` shows it")


@dataclasses.dataclass
class SweepRun:
    """One runbook of a sweep: where it stands, and what it found."""

    runbook: str
    notebook: pathlib.Path
    parameters: dict[str, Any]
    state: str = QUEUED
    result: runner.RunResult | None = None
    duration_s: float = 0.0
    plots: list[report.PlotFile] = dataclasses.field(default_factory=list)

    @property
    def slug(self) -> str:
        """The runbook's sub-folder in the incident folder."""
        return self.runbook.replace("/", "-")

    @property
    def tags(self) -> tuple[str, ...]:
        return runbook_tags(self.runbook)

    @property
    def critical(self) -> bool:
        """True when the runbook itself found a critical problem."""
        if self.result is None:
            return False
        # A run that stopped early is critical too, but it is not the target's.
        stopped = self.result.failure.cause if self.result.failure else None
        return any(f.severity is Severity.CRITICAL and f.cause != stopped
                   for f in self.result.verdict.findings)


@dataclasses.dataclass
class SweepResult:
    """A finished (or interrupted) sweep and its incident folder."""

    sweep_id: str
    folder: pathlib.Path
    target: dict[str, str]
    runs: list[SweepRun]
    only: list[str]
    kernels: int
    started: dt.datetime
    duration_s: float = 0.0
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """4 critical found, 3 a runbook failed, 1 a problem, 0 none.

        The codes extend those of ``paracle-nb run`` (see
        docs/findings-schema.md); the most urgent one wins.
        """
        from paracle_nb.cli import EXIT_CRITICAL, EXIT_FAILED, EXIT_OK, EXIT_PROBLEM

        results = [r.result for r in self.runs if r.result is not None]
        if any(r.critical for r in self.runs):
            return EXIT_CRITICAL
        # A runbook without a result never finished either.
        if any(r.failed for r in results) or len(results) < len(self.runs):
            return EXIT_FAILED
        if any(r.verdict.problem for r in results):
            return EXIT_PROBLEM
        return EXIT_OK


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep; the report of what finished was still written."""

    def __init__(self, result: SweepResult) -> None:
        super().__init__(str(result.folder))
        self.result = result


def default_kernels(runbooks: int) -> int:
    """Return how many kernels to run: one per core plus one, at most one each.

    Runbooks spend much of their time waiting on the target, so one kernel
    more than there are cores keeps the cores busy.
    """
    return max(1, min(runbooks, (os.cpu_count() or 1) + 1))


def sweep(parameters_file: str | os.PathLike[str] | None = None,
          only: Sequence[str] = (), *,
          artifacts: str | os.PathLike[str] = "artifacts",
          kernels: int | None = None, cell_timeout: float = 300.0,
          deadline: float = runner.DEFAULT_DEADLINE,
          on_change: Callable[[SweepRun], None] | None = None) -> SweepResult:
    """Run the selected runbooks against one target into one incident folder.

    ``on_change`` is called (from worker threads) whenever a runbook is
    queued, starts or is done; :class:`paracle_nb.progress.Progress` shows it.
    ``cell_timeout`` and ``deadline`` bound each runbook as they bound
    ``paracle-nb run``.
    """
    runner.check_deadline(deadline)
    names = select_runbooks(only)
    values = runner._parameter_values(parameters_file, {})
    target_values, runs = _plan_runs(names, values)
    target = Target.from_parameters(target_values)
    target.check()
    kernel_env, clean_values = runner._passwords_to_environment(target_values)
    effective = yaml.safe_dump(clean_values, sort_keys=True)

    root = artifact.prepare(artifacts)
    sweep_id = runner.new_run_id("sweep")
    staging = artifact.staging_folder(root, sweep_id)
    final = root / sweep_id
    size = kernels or default_kernels(len(runs))
    result = SweepResult(sweep_id, final, target.describe(), runs, list(only),
                         size, dt.datetime.now(dt.timezone.utc))
    log.info("sweep %s: %d runbooks on %d kernels", sweep_id, len(runs), size)
    for item in runs:
        _changed(item, QUEUED, on_change)

    started = time.monotonic()
    pool = _KernelPool(size, kernel_env)
    secrets = Scrubber()
    try:
        # Kernels warm meanwhile: one look at the cluster's Secrets serves
        # every runbook's scrubbing.
        secrets = _sweep_scrubber(target, runs)
        shared = _Incident(staging, final, target, effective, secrets,
                           cell_timeout, deadline, on_change)
        pool.run(runs, shared.execute, on_change)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        pool.close()
    result.duration_s = round(time.monotonic() - started, 2)

    report.write_report(staging, result, Scrubber(secrets.known))
    (staging / artifact.OWNER_FILE).unlink(missing_ok=True)
    staging.rename(final)
    log.info("incident folder written to %s", final)
    if result.interrupted:
        raise SweepInterrupted(result)
    return result


def _plan_runs(names: list[str], values: dict[str, Any]
               ) -> tuple[dict[str, Any], list[SweepRun]]:
    """Return the target values and each runbook's own parameters.

    A runbook gets the parameters it declares; a name no selected runbook
    declares is refused, and so is ``apply``: a sweep only reads.
    """
    import papermill

    if "apply" in values:
        raise ParameterError("a sweep is read-only: remove `apply` from the "
                             "parameters and apply a plan with `paracle-nb run`")
    target_values = {k: v for k, v in values.items() if k in TARGET_KEYS}
    rest = {k: v for k, v in values.items()
            if k not in TARGET_KEYS and k not in runner.TARGET_PARAMETERS}
    runs: list[SweepRun] = []
    used: set[str] = set()
    for name in names:
        notebook = runner.find_runbook(name)
        declared = papermill.inspect_notebook(str(notebook))
        own = {k: v for k, v in rest.items() if k in declared}
        used.update(own)
        _, params = runner.split_parameters(notebook, {**target_values, **own})
        runs.append(SweepRun(name, notebook, params))
    unused = sorted(set(rest) - used)
    if unused:
        raise ParameterError(f"parameter {', '.join(map(repr, unused))} is "
                             "declared by none of the selected runbooks")
    return target_values, runs


def _sweep_scrubber(target: Target, runs: list[SweepRun]) -> Scrubber:
    """Return a scrubber for every secret any of the runs could show."""
    parameters: dict[str, Any] = {}
    secret_names: set[str] = set()
    for item in runs:
        parameters.update(item.parameters)
        secret_names.update(runner.secret_parameters(item.notebook))
    return runner.run_scrubber(target, parameters, sorted(secret_names))


class _KernelPool:
    """Worker threads, each with its own warm kernel, taking runbooks in turn.

    Kernels start warming as soon as the pool exists, so whatever the
    sweep prepares meanwhile costs no time.
    """

    def __init__(self, size: int, environ: dict[str, str]) -> None:
        self.jobs: queue.Queue[SweepRun | None] = queue.Queue()
        self.execute: Callable[[WarmKernel, SweepRun], None] | None = None
        self.kernels = [WarmKernel(f"kernel-{i + 1}", environ=environ)
                        for i in range(size)]
        self.workers = [threading.Thread(target=self._work, args=(kernel,),
                                         name=f"sweep-{kernel.name}", daemon=True)
                        for kernel in self.kernels]
        for worker in self.workers:
            worker.start()

    def run(self, runs: list[SweepRun],
            execute: Callable[[WarmKernel, SweepRun], None],
            on_change: Callable[[SweepRun], None] | None) -> None:
        """Run every runbook; the escalation after all the others."""
        self.execute = execute
        try:
            for batch in ([r for r in runs if r.runbook != ESCALATION],
                          [r for r in runs if r.runbook == ESCALATION]):
                for item in batch:
                    self.jobs.put(item)
                self.jobs.join()
        except KeyboardInterrupt:
            # Queued runbooks never start; running ones stop at their cell.
            self._drain()
            for item in runs:
                if item.state == QUEUED:
                    _changed(item, SKIPPED, on_change)
            for kernel in self.kernels:
                kernel.interrupt()
            raise

    def close(self) -> None:
        """Stop every worker once it is done, and its kernel with it."""
        for _ in self.workers:
            self.jobs.put(None)
        for worker in self.workers:
            worker.join()

    def _work(self, kernel: WarmKernel) -> None:
        """Warm a kernel, then run runbooks from the queue until told to stop."""
        from jupyter_core.utils import ensure_event_loop

        try:
            kernel.start()
        except (KernelError, RuntimeError, OSError) as exc:
            # Runbooks it takes still run: each start is retried by execute().
            log.warning("kernel %s did not start: %s", kernel.name, exc)
            kernel.shutdown()
        try:
            while (item := self.jobs.get()) is not None:
                try:
                    assert self.execute is not None
                    self.execute(kernel, item)
                except Exception:  # one runbook's artifact must not end the sweep
                    log.exception("%s: its artifact could not be written",
                                  item.runbook)
                finally:
                    self.jobs.task_done()
            self.jobs.task_done()
        finally:
            kernel.shutdown()
            ensure_event_loop().close()

    def _drain(self) -> None:
        """Take every job still queued, so no worker starts it."""
        while True:
            try:
                self.jobs.get_nowait()
            except queue.Empty:
                return
            self.jobs.task_done()


@dataclasses.dataclass
class _Incident:
    """What the runbooks of one sweep share: folder, target, limits."""

    staging: pathlib.Path
    final: pathlib.Path
    target: Target
    effective: str  # parameters.yaml, credentials moved out
    secrets: Scrubber
    cell_timeout: float
    deadline: float
    on_change: Callable[[SweepRun], None] | None

    def execute(self, kernel: WarmKernel, item: SweepRun) -> None:
        """Run one runbook into its sub-folder and record its verdict."""
        folder = self.staging / item.slug
        folder.mkdir()
        parameters = folder / "parameters.yaml"
        parameters.write_text(self.effective)
        _changed(item, RUNNING, self.on_change)

        started = time.monotonic()
        environ = {ARTIFACT_DIR_ENV: str(folder.resolve())}
        values = {"parameters_file": str(parameters.resolve()), **item.parameters}
        if item.runbook == ESCALATION:
            # The bundle gathers the verdicts this sweep has written so far.
            # Known shortcoming: its notebook records this hidden staging
            # folder as `artifacts_dir`, not the folder's final name.
            values["artifacts_dir"] = str(self.staging.resolve())
        scrubber = Scrubber(self.secrets.known)
        # papermill's unscrubbed notebook stays private; the artifact gets a copy.
        with tempfile.TemporaryDirectory(prefix="paracle-run-") as private:
            raw = pathlib.Path(private) / f"{item.notebook.stem}.ipynb"
            failure = _execute_on(kernel, item, raw, values, environ,
                                  self.cell_timeout, self.deadline)
            item.duration_s = round(time.monotonic() - started, 2)

            if failure:  # an exception's message may quote a secret
                failure = dataclasses.replace(
                    failure, summary=scrubber.text(failure.summary))
            run_id = f"{self.final.name}/{item.slug}"
            verdict = artifact.finish(raw, folder / raw.name, item.runbook, run_id,
                                      self.target, failure, item.duration_s,
                                      self.final / item.slug, scrubber)
        item.plots = report.save_plots(folder / raw.name, folder, self.staging)
        notebook = self.final / item.slug / raw.name
        item.result = runner.RunResult(
            run_id, notebook.parent, notebook, notebook.with_suffix(".html"),
            verdict, failure.summary if failure else None, failure)
        _changed(item, DONE, self.on_change)


def _execute_on(kernel: WarmKernel, item: SweepRun, raw: pathlib.Path,
                values: dict[str, Any], environ: dict[str, str],
                cell_timeout: float, deadline: float) -> RunFailure | None:
    """Run one runbook on a warm kernel; restart the kernel if it failed."""
    try:
        if kernel.manager is None:
            kernel.start()
        failure = kernel.execute(item.notebook, raw, values, cell_timeout,
                                 environ, deadline)
    except (KernelError, RuntimeError, OSError) as exc:
        failure = RunFailure("run-failed", f"{kernel.name}: {exc}")
    if failure:
        _replace_kernel(kernel)
    return failure


def _replace_kernel(kernel: WarmKernel) -> None:
    """Restart a kernel after a failed run; leave it stopped if that fails."""
    try:
        kernel.restart()
    except (KernelError, RuntimeError, OSError) as exc:
        log.warning("kernel %s did not restart: %s", kernel.name, exc)
        kernel.shutdown()


def _changed(item: SweepRun, state: str,
             on_change: Callable[[SweepRun], None] | None) -> None:
    item.state = state
    log.info("%s: %s", item.runbook, state)
    if on_change is not None:
        on_change(item)
