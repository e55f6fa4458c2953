"""The escalation bundle: what the guide says to gather, in one archive.

Logs (current and previous), pod manifests, events, the workloads and
their configuration, and the verdicts of runbooks already run, scrubbed of
secrets, in a zip with a manifest of every file and its checksum.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import pathlib
import zipfile
from typing import TYPE_CHECKING, Any

import yaml

from paracle_nb import kube
from paracle_nb.errors import KubernetesError
from paracle_nb.findings import Finding, Severity
from paracle_nb.redact import cluster_secret_values, target_scrubber
from paracle_nb.target import Target

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ARTIFACT_DIR_ENV = "PARACLE_NB_ARTIFACT_DIR"


class Bundle:
    """Files gathered for escalation, scrubbed as they are added."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.files: dict[str, bytes] = {}
        # Every credential the run could meet, the cluster's Secrets included.
        self.scrubber = target_scrubber(target)
        self.scrubber.add(*cluster_secret_values(target))

    # Known shortcoming: a file added again (a cell run twice in JupyterLab)
    # replaces its earlier copy, but its redactions count twice in
    # ``scrubber.count``, so the bundle's "secrets scrubbed" number grows.
    def add_text(self, name: str, text: str) -> None:
        self.files[name] = self.scrubber.text(text).encode()

    def add_objects(self, name: str, objects: list[dict[str, Any]]) -> None:
        cleaned = self.scrubber.obj(objects)
        self.files[name] = yaml.safe_dump_all(cleaned, sort_keys=False).encode()

    def summary(self) -> pd.DataFrame:
        import pandas as pd

        rows = [{"file": n, "bytes": len(b)} for n, b in sorted(self.files.items())]
        return pd.DataFrame(rows, columns=["file", "bytes"])


def gather_logs(bundle: Bundle, pods: list[dict[str, Any]], tail_lines: int = 500
                ) -> int:
    """Add every container's log, and its previous log if it restarted."""
    added = 0
    for pod in pods:
        name = pod["metadata"]["name"]
        for status in pod.get("status", {}).get("containerStatuses") or []:
            container = status["name"]
            text = kube.pod_logs(bundle.target, name, container, tail_lines)
            bundle.add_text(f"logs/{name}_{container}.log", text)
            added += 1
            if status.get("restartCount", 0) > 0:
                try:
                    previous = kube.previous_logs(bundle.target, name, container,
                                                  tail_lines)
                except KubernetesError:
                    continue
                bundle.add_text(f"logs/{name}_{container}.previous.log", previous)
                added += 1
    return added


def gather_cluster_state(bundle: Bundle) -> dict[str, int]:
    """Add pods, events, workloads, services and config maps as YAML."""
    counts = {}
    for resource in ("pods", "events", "deployments", "replicasets",
                     "statefulsets", "services", "endpoints", "configmaps"):
        objects = kube.list_namespaced(bundle.target, resource)
        bundle.add_objects(f"cluster/{resource}.yaml", objects)
        counts[resource] = len(objects)
    return counts


def prior_verdicts(artifacts: str | os.PathLike[str], since_s: float,
                   now: dt.datetime | None = None) -> pd.DataFrame:
    """Return the verdicts of runbook runs written under ``artifacts`` lately."""
    import pandas as pd

    now = now or dt.datetime.now(dt.timezone.utc)
    rows = []
    for path in sorted(pathlib.Path(artifacts).glob("*/verdict.json")):
        written = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
        if (now - written).total_seconds() > since_s:
            continue
        try:
            verdict = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        top = (verdict.get("findings") or [{}])[0]
        rows.append({"run": path.parent.name, "runbook": verdict.get("runbook"),
                     "severity": verdict.get("severity"),
                     "cause": top.get("cause"), "summary": top.get("summary"),
                     "written": written.isoformat(timespec="seconds")})
    columns = ["run", "runbook", "severity", "cause", "summary", "written"]
    return pd.DataFrame(rows, columns=columns)


def bundle_folder(explicit: str = "") -> pathlib.Path:
    """Return where the archive goes: the run's artifact folder by default."""
    if explicit:
        return pathlib.Path(explicit)
    if os.environ.get(ARTIFACT_DIR_ENV):
        return pathlib.Path(os.environ[ARTIFACT_DIR_ENV])
    return pathlib.Path("artifacts") / "bundles"


def write_bundle(bundle: Bundle, folder: str | os.PathLike[str],
                 verdicts: Any = None) -> pathlib.Path:
    """Write the zip (atomically) with a manifest; return its path."""
    if verdicts is not None and hasattr(verdicts, "to_dict"):
        bundle.add_text("verdicts.json", json.dumps(
            verdicts.to_dict(orient="records"), indent=2))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    manifest = {
        "created": stamp,
        "target": bundle.target.describe(),
        "redactions": bundle.scrubber.count,
        "files": [{"name": n, "bytes": len(b),
                   "sha256": hashlib.sha256(b).hexdigest()}
                  for n, b in sorted(bundle.files.items())],
    }

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("MANIFEST.json", json.dumps(manifest, indent=2))
        for name, data in sorted(bundle.files.items()):
            archive.writestr(name, data)

    out = pathlib.Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"diagnostic-bundle-{bundle.target.namespace}-{stamp}.zip"
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_bytes(buffer.getvalue())
    partial.replace(path)
    log.info("diagnostic bundle written to %s", path)
    return path


def incident_summary(target: Target, verdicts: Any, bundle_path: Any) -> str:
    """Return the text to paste into the incident ticket and channel."""
    lines = [f"Paracle incident: {target.environment} / {target.namespace}"]
    if hasattr(verdicts, "itertuples") and not verdicts.empty:
        problems = verdicts[verdicts["severity"].isin(["warning", "critical"])]
        for row in problems.itertuples():
            lines.append(f"- [{row.severity}] {row.runbook}: {row.cause}: "
                         f"{row.summary}")
        if problems.empty:
            lines.append("- runbooks run so far found no problem")
    else:
        lines.append("- no runbook verdicts found yet")
    lines.append(f"Diagnostic bundle: {bundle_path}")
    return "\n".join(lines)


def bundle_findings(path: Any, bundle: Bundle, verdicts: Any) -> list[Finding]:
    """Return the escalation's findings: the bundle, and what is still open."""
    from paracle_nb.runbook import available

    findings = []
    if available(path):
        findings.append(Finding(
            "diagnostic-bundle", Severity.INFO,
            f"Bundle {path.name} written: {len(bundle.files)} files, "
            f"{bundle.scrubber.count} secret(s) scrubbed.",
            {"bundle": path.name, "files": len(bundle.files),
             "bytes": path.stat().st_size, "redactions": bundle.scrubber.count},
            step="Write the bundle"))
    if hasattr(verdicts, "empty") and not verdicts.empty:
        open_problems = verdicts[verdicts["severity"].isin(["warning", "critical"])]
        for row in open_problems.itertuples():
            findings.append(Finding(
                "open-problem", Severity.INFO,
                f"{row.runbook} found {row.cause}: {row.summary}",
                {"runbook": row.runbook, "cause": row.cause, "run": row.run},
                step="Verdicts of the runbooks already run"))
    return findings
