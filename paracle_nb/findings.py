"""A runbook's verdict: what was found, how bad, and the evidence.

The verdict is recorded in the executed notebook as a display output of
type :data:`VERDICT_MIME`, so the runner, the tests and any ticket
integration read it from there instead of scraping cell text.
"""

from __future__ import annotations

import dataclasses
import enum
import html
import json
from typing import Any

VERDICT_MIME = "application/vnd.paracle.verdict+json"


class Severity(str, enum.Enum):
    """How urgent a finding is, lowest first."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


@dataclasses.dataclass
class Finding:
    """One cause found (or ruled out), with the values that prove it."""

    cause: str
    severity: Severity
    summary: str
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)
    step: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["severity"] = self.severity.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            cause=data["cause"],
            severity=Severity(data["severity"]),
            summary=data["summary"],
            evidence=dict(data.get("evidence") or {}),
            step=data.get("step"),
        )


@dataclasses.dataclass
class Verdict:
    """All findings of one runbook run, most severe first."""

    runbook: str
    findings: list[Finding] = dataclasses.field(default_factory=list)

    @property
    def severity(self) -> Severity:
        return max((f.severity for f in self.findings), key=lambda s: s.rank,
                   default=Severity.OK)

    @property
    def problem(self) -> bool:
        """True when any finding is a warning or worse."""
        return self.severity.rank >= Severity.WARNING.rank

    @property
    def causes(self) -> list[str]:
        """Causes of the warning-or-worse findings, most severe first."""
        return [f.cause for f in self.ordered() if f.severity.rank >= 2]

    @property
    def cause(self) -> str | None:
        return self.causes[0] if self.causes else None

    def ordered(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: -f.severity.rank)

    def finding(self, cause: str) -> Finding | None:
        """Return the finding for a cause, if there is one."""
        return next((f for f in self.ordered() if f.cause == cause), None)

    def headline(self) -> str:
        """Return the one line that goes in a ticket or a batch log."""
        if not self.problem:
            return f"{self.runbook}: no problem found"
        top = self.ordered()[0]
        level = top.severity.value.upper()
        return f"{self.runbook}: {level} {top.cause}: {top.summary}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "runbook": self.runbook,
            "severity": self.severity.value,
            "problem": self.problem,
            "causes": self.causes,
            "findings": [f.to_dict() for f in self.ordered()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(
            runbook=data["runbook"],
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        return {
            VERDICT_MIME: self.to_dict(),
            "text/html": self._html(),
            "text/plain": self._text(),
        }

    def _text(self) -> str:
        lines = [self.headline()]
        for f in self.ordered():
            lines.append(f"  [{f.severity.value}] {f.cause}: {f.summary}")
        return "\n".join(lines)

    def _html(self) -> str:
        colour = {"ok": "#2e7d32", "info": "#1565c0", "warning": "#ef6c00",
                  "critical": "#c62828"}
        rows = []
        for f in self.ordered():
            evidence = ", ".join(
                f"{html.escape(str(k))}={html.escape(_short(v))}"
                for k, v in f.evidence.items()
            )
            rows.append(
                f"<tr><td style='color:{colour[f.severity.value]};"
                f"font-weight:bold'>{f.severity.value}</td>"
                f"<td><code>{html.escape(f.cause)}</code></td>"
                f"<td style='text-align:left'>{html.escape(f.summary)}</td>"
                f"<td style='text-align:left'><small>{evidence}</small></td></tr>"
            )
        if not rows:
            rows.append("<tr><td colspan=4>no findings</td></tr>")
        head = html.escape(self.headline())
        return (
            f"<div><p><b>Verdict</b>: {head}</p><table><tr><th>severity</th>"
            f"<th>cause</th><th>summary</th><th>evidence</th></tr>"
            f"{''.join(rows)}</table></div>"
        )


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def verdict_from_notebook(nb: Any) -> Verdict | None:
    """Return the verdict recorded in an executed notebook, if any."""
    found = None
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if VERDICT_MIME in data:
                raw = data[VERDICT_MIME]
                found = Verdict.from_dict(json.loads(raw) if isinstance(raw, str)
                                          else raw)
    return found
