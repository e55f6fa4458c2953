"""Running a runbook with papermill into an artifact folder.

``artifacts/<run-id>/`` receives the executed ``.ipynb``, its HTML
rendering (plots embedded), ``verdict.json`` and the effective
``parameters.yaml``. The folder is assembled under a temporary name and
renamed when complete, so a reader never sees a half-written artifact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import difflib
import json
import logging
import math
import os
import pathlib
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import yaml

from paracle_nb import artifact
from paracle_nb.artifact import RunFailure
from paracle_nb.deadline import KernelDeadline, running_cell
from paracle_nb.errors import ParameterError, UnknownRunbook
from paracle_nb.findings import Verdict
from paracle_nb.redact import Scrubber, cluster_secret_values, target_scrubber
from paracle_nb.secrets import with_url_password
from paracle_nb.target import (
    TARGET_KEYS,
    Target,
    environment_file,
    load_parameters,
)
from paracle_nb.units import format_duration, parse_duration

log = logging.getLogger(__name__)

# Parameters every runbook takes to find its target.
TARGET_PARAMETERS = ("environment", "parameters_file")
DURATION_SUFFIXES = ("_older_than", "window", "since")
# Notebook parameters whose value is a credential, by the end of their name.
SECRET_PARAMETER = re.compile(r"(password|passwd|token|api_?key|credentials?)$",
                              re.IGNORECASE)
DEFAULT_DEADLINE = 15 * 60.0
# What `apply` may name: the ids of plans an earlier run showed, and the
# second confirmation an irreversible plan asks for.
PLAN_ID = re.compile(r"[0-9a-f]{10}")
SECOND_CONFIRMATION = re.compile(r"FLUSHDB db\d+")
# Run in the kernel before any cell: its log records are scrubbed too.
KERNEL_SETUP = ("--IPKernelApp.exec_lines="
                "__import__('paracle_nb.kernel_setup').kernel_setup.setup()")


@dataclasses.dataclass
class RunResult:
    """Where a run's artifact went, and what it found."""

    run_id: str
    folder: pathlib.Path
    notebook: pathlib.Path
    html: pathlib.Path
    verdict: Verdict
    failed: str | None = None
    failure: RunFailure | None = None


def notebooks_dir() -> pathlib.Path:
    """Return the folder of runbooks: $PARACLE_NB_NOTEBOOKS or the checkout's."""
    configured = os.environ.get("PARACLE_NB_NOTEBOOKS")
    if configured:
        return pathlib.Path(configured)
    here = pathlib.Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "paracle_nb").is_dir():
            return folder / "notebooks"
    return pathlib.Path(__file__).resolve().parent.parent / "notebooks"


def runbooks() -> dict[str, pathlib.Path]:
    """Return every runbook by name (its path under notebooks/, no suffix)."""
    root = notebooks_dir()
    found = {}
    for path in sorted(root.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        found[path.relative_to(root).with_suffix("").as_posix()] = path
    return found


def find_runbook(name: str) -> pathlib.Path:
    """Return a runbook's notebook by full name or unambiguous last part."""
    known = runbooks()
    cleaned = name.removesuffix(".ipynb").strip("/")
    if cleaned in known:
        return known[cleaned]
    matches = [p for n, p in known.items() if n.rsplit("/", 1)[-1] == cleaned]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(known) or "(none found)"
    close = difflib.get_close_matches(cleaned, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownRunbook(
        f"unknown runbook {name!r}{hint}; known runbooks: {listing}")


def runbook_name(path: pathlib.Path) -> str:
    return path.relative_to(notebooks_dir()).with_suffix("").as_posix()


def runbook_title(path: pathlib.Path) -> str:
    """Return the title from the notebook's first heading."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            first = "".join(cell["source"]).strip().splitlines()[0]
            return first.lstrip("# ").strip()
    return path.stem


def split_parameters(notebook: pathlib.Path, values: dict[str, Any]
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (target values, notebook parameters), refusing unknown names."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    target, params = {}, {}
    for key, value in values.items():
        if key in TARGET_KEYS:
            target[key] = value
        elif key in declared and key not in TARGET_PARAMETERS:
            params[key] = _checked(key, value, declared[key])
        elif key == "parameters_file":
            raise ParameterError("give the parameters file with --parameters FILE, "
                                 "not as a parameter")
        else:
            names = sorted(set(declared) - set(TARGET_PARAMETERS) | set(TARGET_KEYS))
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ParameterError(
                f"unknown parameter {key!r} for {notebook.stem}{hint}; "
                f"known: {', '.join(names)}")
    return target, params


def _checked(key: str, value: Any, declared: Any) -> Any:
    """Return a parameter value of the type its default has, or refuse it."""
    default = _literal(declared["default"])
    expected = type(default)
    if isinstance(value, str) and expected is not str:
        value = _from_text(key, value, expected)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if default is not None and not isinstance(value, expected) or (
            expected is int and isinstance(value, bool)):
        raise ParameterError(
            f"parameter {key!r} expects {_TYPE_NAMES.get(expected, expected.__name__)}"
            f" (default {default!r}), got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ParameterError(f"parameter {key!r} must not be negative, got {value}")
    if key.endswith(DURATION_SUFFIXES) and isinstance(value, str) and value.strip():
        # A bare number is ambiguous at 3 a.m.: seconds or minutes?
        if value.strip().replace(".", "", 1).isdigit():
            raise ParameterError(
                f"parameter {key!r} needs a unit, e.g. '{value}min' or '{value}s'")
        parse_duration(value)
    if key == "apply":
        _check_apply(value)
    return value


def _check_apply(value: Any) -> None:
    """Refuse ``apply`` items that are neither plan ids nor second confirmations.

    Caught here, a typo is one line before the run, not a plan reported
    as changed after it.
    """
    from paracle_nb.remediate import parse_apply

    wrong = sorted(item for item in parse_apply(value)
                   if not PLAN_ID.fullmatch(item)
                   and not SECOND_CONFIRMATION.fullmatch(item))
    if wrong:
        raise ParameterError(
            f"parameter 'apply' takes plan ids (10 lowercase hex digits, as a "
            f"run shows them) and 'FLUSHDB db<N>'; got {', '.join(map(repr, wrong))}")


_TYPE_NAMES = {int: "a whole number", float: "a number", str: "a string",
               bool: "true or false", list: "a list", dict: "a mapping"}


def _literal(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _from_text(key: str, text: str, expected: type) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if expected is bool and not isinstance(value, bool):
        raise ParameterError(f"parameter {key!r} expects true or false, got {text!r}")
    return value


def new_run_id(runbook: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{runbook.replace('/', '-')}-{secrets.token_hex(2)}"


def run(name: str, parameters_file: str | os.PathLike[str] | None = None,
        overrides: dict[str, Any] | None = None, *,
        artifacts: str | os.PathLike[str] = "artifacts",
        cell_timeout: float = 300.0,
        deadline: float = DEFAULT_DEADLINE) -> RunResult:
    """Execute one runbook with papermill and write its artifact folder.

    Without a parameters file, the target is ``parameters/<environment>.yaml``
    (``environment`` from ``overrides``, else ``sandbox``). ``deadline``
    bounds the whole run in seconds: past it the kernel is interrupted (and
    killed if it does not stop), and the artifact says in which cell.
    """
    notebook = find_runbook(name)
    runbook = runbook_name(notebook)
    check_deadline(deadline)
    if not cell_timeout > 0:
        raise ParameterError(f"the cell timeout must be above 0 seconds, "
                             f"got {cell_timeout:g}")
    split_parameters(notebook, overrides or {})  # name bad overrides first
    values = _parameter_values(parameters_file, overrides or {})
    target_values, params = split_parameters(notebook, values)
    target = Target.from_parameters(target_values)  # fails early on bad input
    target.check()
    kernel_env, target_values = _passwords_to_environment(target_values)

    root = artifact.prepare(artifacts)
    run_id = new_run_id(runbook)
    staging = artifact.staging_folder(root, run_id)
    effective = staging / "parameters.yaml"
    effective.write_text(yaml.safe_dump(target_values, sort_keys=True))
    log.info("running %s as %s", runbook, run_id)

    started = time.monotonic()
    interrupted = False
    # papermill writes the unscrubbed notebook as it goes: it stays in a
    # private folder, and only its scrubbed copy reaches the artifact.
    # Known shortcoming: a runner killed with SIGKILL leaves that folder
    # (readable by its user only) in the temporary directory.
    with tempfile.TemporaryDirectory(prefix="paracle-run-") as private:
        raw = pathlib.Path(private) / f"{notebook.stem}.ipynb"
        # Files a runbook writes (a diagnostic bundle) land in its artifact.
        # A batch run never waits for input: plans apply only by `apply`.
        with _environment(PARACLE_NB_ARTIFACT_DIR=str(staging.resolve()),
                          PARACLE_NB_BATCH="1", **kernel_env):
            try:
                failure = _execute(notebook, raw,
                                   {"parameters_file": str(effective.resolve()),
                                    **params}, private, cell_timeout, deadline)
            except KeyboardInterrupt as exc:
                # Known shortcoming: on SIGTERM (unlike Ctrl-C at a terminal)
                # the kernel is not interrupted first; stopped mid-cell, it
                # prints a traceback of its closed socket on stderr.
                failure = _failure(raw, "interrupted",
                                   str(exc) or "Interrupted by the operator")
                interrupted = True

        scrubber = run_scrubber(target, params, secret_parameters(notebook))
        if failure:  # an exception's message may quote a secret
            failure = dataclasses.replace(failure,
                                          summary=scrubber.text(failure.summary))
        final = root / run_id
        verdict = artifact.finish(
            raw, staging / raw.name, runbook, run_id, target, failure,
            time.monotonic() - started, final, scrubber)
    staging.rename(final)
    log.info("artifact written to %s", final)
    notebook_path = final / raw.name
    result = RunResult(run_id, final, notebook_path, notebook_path.with_suffix(".html"),
                       verdict, failure.summary if failure else None, failure)
    if interrupted:
        raise RunInterrupted(result)
    return result


def check_deadline(seconds: float) -> None:
    """Refuse a deadline that would stop a run before it starts."""
    if not seconds > 0 or math.isinf(seconds):
        raise ParameterError(f"the deadline must be a positive duration, "
                             f"got {seconds!r} seconds")


def parse_deadline(text: str) -> float:
    """Return a deadline given as a duration (``15min``, ``90s``) in seconds."""
    if text.strip().replace(".", "", 1).isdigit():
        raise ParameterError(f"--deadline needs a unit, e.g. '{text}min' or '{text}s'")
    seconds = parse_duration(text)
    check_deadline(seconds)
    return seconds


def secret_parameters(notebook: pathlib.Path) -> list[str]:
    """Return the notebook parameters that hold a secret.

    By name (``*_password``, ``*_token``, ``*_api_key``) or because the
    parameters cell marks them ``(secret)`` in their comment.
    """
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    return [name for name, spec in declared.items()
            if SECRET_PARAMETER.search(name) or "(secret)" in (spec.get("help") or "")]


def run_scrubber(target: Target, params: dict[str, Any],
                 secret_names: list[str]) -> Scrubber:
    """Return the scrubber for a run's artifact: every secret it could show."""
    scrubber = target_scrubber(target)
    for name in secret_names:
        if params.get(name):
            scrubber.add(*with_url_password(str(params[name])))
    scrubber.add(*cluster_secret_values(target))
    return scrubber


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the partial artifact was still written."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(str(result.folder))
        self.result = result


def _parameter_values(parameters_file: str | os.PathLike[str] | None,
                      overrides: dict[str, Any]) -> dict[str, Any]:
    if parameters_file:
        values = load_parameters(parameters_file)
    else:
        environment = str(overrides.get("environment") or "sandbox")
        values = load_parameters(environment_file(environment))
        values.setdefault("environment", environment)
    values.update({k: v for k, v in overrides.items() if k != "environment"})
    return values


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the kernel about to start; restore them."""
    # Known shortcoming: they are set on this whole process, so runs in two
    # threads of one process would see each other's; use processes.
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _passwords_to_environment(values: dict[str, Any]
                              ) -> tuple[dict[str, str], dict[str, Any]]:
    """Move passwords out of the URLs: (kernel environment, clean values).

    The kernel reads them from its environment; the artifact never sees them.
    """
    from paracle_nb.target import _split_password

    clean, environment = dict(values), {}
    for key, env in (("postgres_dsn", "PARACLE_POSTGRES_PASSWORD"),
                     ("redis_url", "PARACLE_REDIS_PASSWORD")):
        url, password = _split_password(clean.get(key))
        if password:
            environment[env] = password
            clean[key] = url
    return environment, clean


def _execute(notebook: pathlib.Path, output: pathlib.Path,
             parameters: dict[str, Any], private: str, cell_timeout: float,
             deadline: float) -> RunFailure | None:
    """Run the notebook into ``output``; return why it stopped early, or None."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    watch = KernelDeadline(deadline)
    try:
        with watch:
            papermill.execute_notebook(
                str(notebook), str(output), parameters=parameters,
                kernel_name="python3", progress_bar=False, log_output=False,
                execution_timeout=max(1, math.ceil(cell_timeout)),
                cwd=os.getcwd(), config=_ipc_config(private),
                kernel_manager_class=watch.manager_class(),
                extra_arguments=[KERNEL_SETUP],
            )
    except PapermillExecutionError as exc:
        if watch.reached:
            return _failure(output, "deadline-exceeded",
                            f"The deadline ({format_duration(deadline)}) passed and "
                            "the kernel was interrupted")
        return _failure(output, "cell-error",
                        f"{exc.ename}: {_first_line(exc.evalue)}")
    except DeadKernelError:
        if watch.reached:
            return _failure(output, "deadline-exceeded",
                            f"The deadline ({format_duration(deadline)}) passed; "
                            "the kernel ignored the interrupt and was killed")
        return _failure(output, "kernel-died",
                        "The kernel died (killed, out of memory or crashed)")
    except CellTimeoutError:
        return _failure(output, "cell-timeout",
                        f"A cell ran longer than {format_duration(cell_timeout)}")
    except Exception as exc:  # the kernel did not start, or the engine broke
        return _failure(output, "run-failed",
                        f"{type(exc).__name__}: {_first_line(str(exc))}")
    return None


def _failure(output: pathlib.Path, cause: str, what: str) -> RunFailure:
    """Return a failure naming the cell the run was in when it stopped."""
    where = running_cell(output)
    if where is None:
        return RunFailure(cause, what)
    index, section = where
    under = f", under \"{section}\"" if section else ""
    return RunFailure(cause, f"{what} in cell {index + 1}{under}", index + 1,
                      section)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _ipc_config(folder: str) -> Any:
    """Kernel config: talk over Unix sockets in a private folder, not TCP."""
    from traitlets.config import Config

    if os.name != "posix":
        return Config()
    return Config({"KernelManager": {"transport": "ipc",
                                     "ip": os.path.join(folder, "kernel")}})
