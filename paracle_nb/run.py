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
import secrets
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import yaml

from paracle_nb import artifact
from paracle_nb.errors import ParameterError, UnknownRunbook
from paracle_nb.findings import Verdict
from paracle_nb.target import (
    TARGET_KEYS,
    Target,
    environment_file,
    load_parameters,
)
from paracle_nb.units import parse_duration

log = logging.getLogger(__name__)

# Parameters every runbook takes to find its target.
TARGET_PARAMETERS = ("environment", "parameters_file")
DURATION_SUFFIXES = ("_older_than", "window", "since")


@dataclasses.dataclass
class RunResult:
    """Where a run's artifact went, and what it found."""

    run_id: str
    folder: pathlib.Path
    notebook: pathlib.Path
    html: pathlib.Path
    verdict: Verdict
    failed: str | None = None


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
    raise UnknownRunbook(f"unknown runbook {name!r}; known runbooks: {listing}")


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
    return value


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
        cell_timeout: float = 300.0) -> RunResult:
    """Execute one runbook with papermill and write its artifact folder.

    Without a parameters file, the target is ``parameters/<environment>.yaml``
    (``environment`` from ``overrides``, else ``sandbox``).
    """
    notebook = find_runbook(name)
    runbook = runbook_name(notebook)
    split_parameters(notebook, overrides or {})  # name bad overrides first
    values = _parameter_values(parameters_file, overrides or {})
    target_values, params = split_parameters(notebook, values)
    target = Target.from_parameters(target_values)  # fails early on bad input
    target.check()

    root = artifact.prepare(artifacts)
    run_id = new_run_id(runbook)
    staging = artifact.staging_folder(root, run_id)
    effective = staging / "parameters.yaml"
    effective.write_text(yaml.safe_dump(_without_passwords(target_values),
                                        sort_keys=True))
    log.info("running %s as %s", runbook, run_id)

    output = staging / f"{notebook.stem}.ipynb"
    started = time.monotonic()
    interrupted = False
    # Files a runbook writes (a diagnostic bundle) land in its artifact.
    with _environment(PARACLE_NB_ARTIFACT_DIR=str(staging.resolve())):
        try:
            failed = _execute(notebook, output,
                              {"parameters_file": str(effective.resolve()),
                               **params}, cell_timeout)
        except KeyboardInterrupt:
            failed, interrupted = "interrupted by the operator", True

    final = root / run_id
    verdict = artifact.finish(output, runbook, run_id, target, failed,
                              time.monotonic() - started, final)
    staging.rename(final)
    log.info("artifact written to %s", final)
    result = RunResult(run_id, final, final / output.name,
                       final / output.with_suffix(".html").name, verdict, failed)
    if interrupted:
        raise RunInterrupted(result)
    return result


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


def _without_passwords(values: dict[str, Any]) -> dict[str, Any]:
    """Return target values with any password in a URL moved out of it."""
    from paracle_nb.target import _split_password

    clean = dict(values)
    for key, env in (("postgres_dsn", "PARACLE_POSTGRES_PASSWORD"),
                     ("redis_url", "PARACLE_REDIS_PASSWORD")):
        url, password = _split_password(clean.get(key))
        if password:
            # The kernel inherits the environment; the artifact never sees it.
            os.environ[env] = password
            clean[key] = url
    return clean


def _execute(notebook: pathlib.Path, output: pathlib.Path,
             parameters: dict[str, Any], cell_timeout: float) -> str | None:
    """Run the notebook; return why it failed, or None."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        with tempfile.TemporaryDirectory(prefix="paracle-kernel-") as sockets:
            papermill.execute_notebook(
                str(notebook), str(output), parameters=parameters,
                kernel_name="python3", progress_bar=False, log_output=False,
                execution_timeout=max(1, math.ceil(cell_timeout)),
                cwd=os.getcwd(),
                config=_ipc_config(sockets),
            )
    except PapermillExecutionError as exc:
        return f"cell {exc.exec_count}: {exc.ename}: {_first_line(exc.evalue)}"
    except Exception as exc:  # a dead kernel or a timeout ends the run
        return f"{type(exc).__name__}: {_first_line(str(exc))}"
    return None


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
