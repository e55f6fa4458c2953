"""A sweep's report: one page, one JSON file and one archive for the ticket.

- ``index.html``: the summary table first (runbook, verdict, severity, the
  line of evidence that matters, duration), then each runbook's plots as
  thumbnails linking to its page. Inline style, images as files beside it:
  it reads offline.
- ``findings.json``: every verdict, machine-readable; its schema is
  documented in docs/findings-schema.md and versioned by ``schema``.
- ``incident.zip``: the whole folder, text files scrubbed of the target's
  secrets and of anything that looks like one, with a manifest.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import html
import io
import json
import logging
import pathlib
import re
import zipfile
from typing import TYPE_CHECKING, Any

from paracle_nb.artifact import OWNER_FILE, atomic_write
from paracle_nb.findings import Severity
from paracle_nb.redact import Scrubber

if TYPE_CHECKING:
    from paracle_nb.sweep import SweepResult, SweepRun

log = logging.getLogger(__name__)

SCHEMA = "paracle-nb.findings/1"
INDEX, FINDINGS, ARCHIVE, MANIFEST = (
    "index.html", "findings.json", "incident.zip", "MANIFEST.json")
TEXT_SUFFIXES = (".ipynb", ".html", ".json", ".yaml", ".yml", ".txt", ".log",
                 ".md", ".csv")
EVIDENCE_WIDTH = 160
COLOURS = {"ok": "#2e7d32", "info": "#1565c0", "warning": "#ef6c00",
           "critical": "#c62828", "failed": "#6a1b9a"}

# What the sweep's exit code says (docs/findings-schema.md).
EXIT_MEANINGS = {0: "no problem found", 1: "a problem found",
                 3: "a runbook could not finish", 4: "a critical problem found"}

_ALT = re.compile(r'\balt="([^"]*)"')
# An image inline in HTML or in a notebook's JSON: pixels, not text, and
# the slowest thing for the secret patterns to read.
_INLINE_IMAGE = re.compile(
    r'(?:data:image/[\w.+-]+;base64,|"image/[\w.+-]+": ")[A-Za-z0-9+/=]+')


@dataclasses.dataclass
class PlotFile:
    """A plot a runbook drew, saved as a PNG beside its notebook."""

    path: str  # relative to the incident folder
    alt: str


def save_plots(notebook: pathlib.Path, folder: pathlib.Path,
               incident: pathlib.Path) -> list[PlotFile]:
    """Write every PNG the executed notebook shows to ``folder/plots/``."""
    import nbformat

    if not notebook.exists():
        return []
    nb = nbformat.read(notebook, as_version=4)
    plots: list[PlotFile] = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" not in data:
                continue
            number = len(plots) + 1
            path = folder / "plots" / f"plot-{number}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(base64.b64decode(data["image/png"]))
            alt = _ALT.search(data.get("text/html", ""))
            text = html.unescape(alt.group(1)) if alt else f"plot {number}"
            plots.append(PlotFile(path.relative_to(incident).as_posix(), text))
    return plots


def write_report(folder: pathlib.Path, result: SweepResult,
                 scrubber: Scrubber) -> None:
    """Write findings.json, index.html, then incident.zip of the whole folder.

    ``scrubber`` knows the target's secrets; the archive's text goes through it.
    """
    document = findings_document(result)
    atomic_write(folder / FINDINGS, json.dumps(document, indent=2, default=str))
    atomic_write(folder / INDEX, index_html(result, document))
    write_archive(folder, result.sweep_id, scrubber)
    log.info("report written: %s, %s, %s", INDEX, FINDINGS, ARCHIVE)


def findings_document(result: SweepResult) -> dict[str, Any]:
    """Return findings.json's content (schema in docs/findings-schema.md)."""
    entries = [_entry(item) for item in result.runs]
    counts = dict.fromkeys([s.value for s in Severity], 0) | {"failed": 0,
                                                             "skipped": 0}
    for entry in entries:
        if entry["state"] != "done":
            counts["skipped"] += 1
            continue
        counts[entry["severity"]] += 1
        counts["failed"] += entry["failed"] is not None
    worst = max((Severity(e["severity"]) for e in entries if e["severity"]),
                key=lambda s: s.rank, default=Severity.OK)
    return {
        "schema": SCHEMA,
        "sweep_id": result.sweep_id,
        "started": result.started.isoformat(timespec="seconds"),
        "duration_s": result.duration_s,
        "target": result.target,
        "only": result.only,
        "kernels": result.kernels,
        "interrupted": result.interrupted,
        "exit_code": result.exit_code,
        "severity": worst.value,
        "counts": counts,
        "runbooks": entries,
    }


def _entry(item: SweepRun) -> dict[str, Any]:
    """One runbook's line in findings.json."""
    entry: dict[str, Any] = {
        "runbook": item.runbook,
        "tags": list(item.tags),
        "state": item.state,
        "severity": None,
        "problem": None,
        "critical": item.critical,
        "cause": None,
        "headline": None,
        "evidence": None,
        "failed": None,
        "duration_s": item.duration_s,
        "files": {},
        "plots": [dataclasses.asdict(p) for p in item.plots],
        "findings": [],
    }
    if item.result is None:
        return entry
    verdict = item.result.verdict
    folder = f"{item.slug}/"
    entry.update(
        severity=verdict.severity.value,
        problem=verdict.problem,
        cause=verdict.cause,
        headline=verdict.headline(),
        evidence=evidence_line(item),
        failed=item.result.failed,
        files={"notebook": folder + item.result.notebook.name,
               "html": folder + item.result.html.name,
               "verdict": folder + "verdict.json"},
        findings=[f.to_dict() for f in verdict.ordered()],
    )
    return entry


def evidence_line(item: SweepRun) -> str:
    """Return the one line of evidence that matters: the top finding's."""
    if item.result is None:
        return "not run"
    if item.result.failed:
        text = f"stopped: {item.result.failed}"
    else:
        top = item.result.verdict.ordered()
        text = top[0].summary if top else "no findings recorded"
    text = " ".join(text.split())
    if len(text) > EVIDENCE_WIDTH:
        text = text[:EVIDENCE_WIDTH - 1] + "…"
    return text


def index_html(result: SweepResult, document: dict[str, Any]) -> str:
    """Return the incident page: the summary table, then the plots."""
    target = result.target
    where = " / ".join(html.escape(target.get(k, "-"))
                       for k in ("environment", "namespace"))
    rows = sorted(zip(result.runs, document["runbooks"], strict=True),
                  key=lambda pair: _urgency(pair[1]))
    started = result.started.astimezone(dt.timezone.utc)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Incident sweep {html.escape(result.sweep_id)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Incident sweep: {where}</h1>",
        f"<p class='meta'>{started:%Y-%m-%d %H:%M:%S} UTC, "
        f"{len(result.runs)} runbooks in {result.duration_s:.1f} s on "
        f"{result.kernels} kernels. Exit code {document['exit_code']}: "
        f"{EXIT_MEANINGS.get(document['exit_code'], 'see findings.json')}"
        f"{' (interrupted)' if result.interrupted else ''}. "
        f"<a href='{FINDINGS}'>{FINDINGS}</a></p>",
        _summary_table(rows),
        "<h2>Plots</h2>",
        *(_plots_section(item) for item, _ in rows if item.plots),
        "</body></html>",
    ]
    return "\n".join(parts)


def _urgency(entry: dict[str, Any]) -> tuple[int, str]:
    """Sort key: critical first, then warnings, failures with criticals."""
    rank = Severity(entry["severity"]).rank if entry["severity"] else -1
    return (-rank, entry["runbook"])


def _summary_table(rows: list[tuple[SweepRun, dict[str, Any]]]) -> str:
    lines = ["<table id='summary'><thead><tr><th>runbook</th><th>verdict</th>"
             "<th>severity</th><th>evidence</th><th>duration</th></tr></thead>"
             "<tbody>"]
    for item, entry in rows:
        name = html.escape(item.runbook)
        link = (f"<a href='{html.escape(entry['files']['html'])}'>{name}</a>"
                if entry["files"] else name)
        severity = entry["severity"] or item.state
        label = "failed" if entry["failed"] else severity
        verdict = entry["cause"] or ("no problem found" if entry["severity"]
                                     else item.state)
        lines.append(
            f"<tr class='{html.escape(label)}'><td>{link}</td>"
            f"<td><code>{html.escape(verdict)}</code></td>"
            f"<td><span class='badge' style='background:"
            f"{COLOURS.get(label, '#757575')}'>{html.escape(label)}</span></td>"
            f"<td>{html.escape(entry['evidence'] or '-')}</td>"
            f"<td class='num'>{item.duration_s:.1f} s</td></tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _plots_section(item: SweepRun) -> str:
    assert item.result is not None
    page = html.escape(f"{item.slug}/{item.result.html.name}")
    thumbs = "".join(
        f"<a href='{page}'><img src='{html.escape(p.path)}' "
        f"alt='{html.escape(item.runbook)}: {html.escape(p.alt)}' "
        f"title='{html.escape(p.alt)}' loading='eager'></a>"
        for p in item.plots)
    return (f"<section><h3><a href='{page}'>{html.escape(item.runbook)}</a></h3>"
            f"<div class='thumbs'>{thumbs}</div></section>")


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#212121}
h1{font-size:1.4em;margin-bottom:.2em} .meta{color:#616161;margin-top:0}
table{border-collapse:collapse;width:100%} th,td{padding:4px 8px;
border-bottom:1px solid #e0e0e0;text-align:left;vertical-align:top}
th{background:#f5f5f5} td.num{text-align:right;white-space:nowrap}
.badge{color:#fff;border-radius:3px;padding:1px 6px;font-size:.85em}
.thumbs img{width:440px;border:1px solid #e0e0e0;margin:4px}
h3{margin-bottom:.2em}
"""


def scrub_text(scrubber: Scrubber, text: str) -> str:
    """Return text scrubbed of secrets, its inline images passed through as is."""
    parts, done = [], 0
    for image in _INLINE_IMAGE.finditer(text):
        parts += [scrubber.text(text[done:image.start()]), image.group(0)]
        done = image.end()
    parts.append(scrubber.text(text[done:]))
    return "".join(parts)


def write_archive(folder: pathlib.Path, name: str, scrubber: Scrubber
                  ) -> pathlib.Path:
    """Zip the folder under ``name/``, text scrubbed, with a manifest."""
    buffer = io.BytesIO()
    listed = []
    # Most bytes are base64 images that barely compress: the fast level will do.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED,
                         compresslevel=1) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            if relative in (ARCHIVE, OWNER_FILE) or path.name.startswith("."):
                continue
            data = path.read_bytes()
            if path.suffix in TEXT_SUFFIXES:
                data = scrub_text(scrubber, data.decode("utf-8", "replace")).encode()
            archive.writestr(f"{name}/{relative}", data)
            listed.append({"name": relative, "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()})
        manifest = {"sweep_id": name, "files": listed,
                    "redactions": scrubber.count}
        archive.writestr(f"{name}/{MANIFEST}", json.dumps(manifest, indent=2))

    path = folder / ARCHIVE
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_bytes(buffer.getvalue())
    partial.replace(path)
    return path
