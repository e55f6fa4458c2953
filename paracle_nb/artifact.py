"""A run's artifact folder: assembled aside, verdict first, renamed whole.

``artifacts/.<run-id>.partial/`` holds a run while it executes (with the
PID that owns it); the finished folder is renamed to ``<run-id>/``. Partial
folders whose owner is gone are removed by the next run.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import os
import pathlib
import re
import shutil
from typing import Any

from paracle_nb.errors import ParameterError
from paracle_nb.findings import Finding, Severity, Verdict, verdict_from_notebook
from paracle_nb.redact import Scrubber, scrub_notebook
from paracle_nb.target import Target

log = logging.getLogger(__name__)

OWNER_FILE = ".owner-pid"


def prepare(artifacts: str | os.PathLike[str]) -> pathlib.Path:
    """Return the artifacts folder, created; clear what dead runs left."""
    root = pathlib.Path(artifacts)
    if root.exists() and not root.is_dir():
        raise ParameterError(f"artifacts path {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(f"cannot create artifacts folder {root}: "
                             f"{exc.strerror}") from None
    discard_abandoned(root)
    return root


def staging_folder(root: pathlib.Path, run_id: str) -> pathlib.Path:
    """Create the folder a run writes into until it is complete."""
    staging = root / f".{run_id}.partial"
    staging.mkdir()
    (staging / OWNER_FILE).write_text(str(os.getpid()))
    return staging


def discard_abandoned(root: pathlib.Path) -> list[pathlib.Path]:
    """Remove partial folders whose owning process no longer runs."""
    removed = []
    for leftover in root.glob(".*.partial"):
        try:
            owner = int((leftover / OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = 0
        if owner and _alive(owner):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass(frozen=True)
class RunFailure:
    """Why a run stopped before its end, and the cell it stopped in."""

    cause: str  # deadline-exceeded, kernel-died, cell-timeout, cell-error, ...
    summary: str  # one line, naming the cell
    cell: int | None = None  # position in the executed notebook, from 1
    section: str | None = None  # the heading that cell is under: its step

    def finding(self) -> Finding:
        return Finding(
            self.cause, Severity.CRITICAL,
            f"The runbook stopped before its end: {self.summary}",
            {"cell": self.cell, "section": self.section, "error": self.summary},
            step=self.section)


def finish(raw: pathlib.Path, output: pathlib.Path, runbook: str, run_id: str,
           target: Target, failure: RunFailure | None, duration: float,
           final: pathlib.Path, scrubber: Scrubber) -> Verdict:
    """Write the artifact from the executed notebook at ``raw``, scrubbed.

    The verdict goes into the notebook (as a summary under the title and in
    its metadata), then the notebook, its HTML, ``verdict.json`` and the
    effective parameters are written, each whole, with every secret
    ``scrubber`` knows or recognises replaced by its marker.
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = _read_executed(raw, runbook)
    verdict = verdict_from_notebook(nb) or Verdict(runbook)
    if failure:
        verdict.findings.append(failure.finding())
    verdict = _scrubbed_verdict(verdict, scrubber)

    scrub_notebook(nb, scrubber)
    _point_at_final(nb, output.parent, final)
    _insert_summary(nb, verdict, target)
    nb.metadata["paracle"] = scrubber.strings({
        "runbook": runbook,
        "run_id": run_id,
        "target": target.describe(),
        "duration_s": round(duration, 2),
        "verdict": verdict.to_dict(),
    })
    (output.parent / OWNER_FILE).unlink(missing_ok=True)
    atomic_write(output, nbformat.writes(nb))

    exporter = HTMLExporter()
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    atomic_write(output.with_suffix(".html"), offline_html(body))
    atomic_write(output.parent / "verdict.json",
                 json.dumps(verdict.to_dict(), indent=2, default=str))
    parameters = output.parent / "parameters.yaml"
    if parameters.exists():
        atomic_write(parameters, scrubber.text(parameters.read_text()))
    log.info("%d secret(s) scrubbed from the artifact of %s", scrubber.count, run_id)
    return verdict


def _scrubbed_verdict(verdict: Verdict, scrubber: Scrubber) -> Verdict:
    """Return the verdict with its summaries, evidence and steps scrubbed.

    Causes and severities, which tools match on, are the runbook's own words
    and stay as they are.
    """
    return Verdict(verdict.runbook, [
        Finding(f.cause, f.severity, scrubber.text(f.summary),
                scrubber.strings(dict(f.evidence)),
                scrubber.text(f.step) if f.step else f.step)
        for f in verdict.findings])


def _read_executed(raw: pathlib.Path, runbook: str) -> Any:
    """Return the executed notebook, or a stand-in saying why there is none."""
    import nbformat

    try:
        return nbformat.read(raw, as_version=4)
    except FileNotFoundError:
        reason = "The kernel never started."
    except Exception as exc:  # cut short when the runner was killed
        reason = f"The executed notebook could not be read ({type(exc).__name__})."
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        f"# {runbook}\n\n{reason}")])


def _point_at_final(nb: Any, staging: pathlib.Path, final: pathlib.Path) -> None:
    """Make the recorded parameters name the folder as it will be found."""
    old, new = str(staging.resolve()), str(final.resolve())
    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source = cell.source.replace(old, new)
    recorded = nb.metadata.get("papermill", {}).get("parameters", {})
    for key, value in recorded.items():
        if isinstance(value, str):
            recorded[key] = value.replace(old, new)


def _insert_summary(nb: Any, verdict: Verdict, target: Target) -> None:
    """Put the verdict right under the title, so a reader sees it first."""
    import nbformat

    where = ", ".join(f"{k} {v}" for k, v in target.describe().items()
                      if v not in ("-", "(no kubeconfig)"))
    rows = "".join(
        f"<tr><td><b>{f.severity.value}</b></td><td><code>{html.escape(f.cause)}"
        f"</code></td><td style='text-align:left'>{html.escape(f.summary)}</td></tr>"
        for f in verdict.ordered())
    text = (f"## Verdict: {html.escape(verdict.headline())}\n\n"
            f"<table><tr><th>severity</th><th>cause</th><th>summary</th></tr>"
            f"{rows}</table>\n\n*Target*: {html.escape(where)}. Evidence values "
            "are in the Findings section below.")
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata["tags"] = ["paracle-verdict"]
    position = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(position, cell)


_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL | re.IGNORECASE)


def offline_html(page: str) -> str:
    """Drop the scripts nbconvert's template loads from the network.

    require.js, MathJax and mermaid come from a CDN; a runbook's page needs
    none of them (plots are images, tables plain HTML), and a page attached
    to a ticket must read offline without reaching out.
    """
    return _SCRIPT.sub(lambda m: "" if "://" in m.group(0) else m.group(0), page)


def atomic_write(path: pathlib.Path, text: str) -> None:
    """Write a file whole or not at all."""
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text)
    partial.replace(path)
