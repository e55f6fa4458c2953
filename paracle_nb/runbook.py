"""The thread through a runbook's cells: steps that never crash the run.

A runbook opens a :class:`Runbook`, runs each diagnosis step through
:meth:`Runbook.step`, and ends with :meth:`Runbook.conclude`. A step that
fails (target unreachable, forbidden, timed out) returns an
:class:`Unavailable` that later steps and the diagnosis accept, and the
failure becomes a finding, so the notebook always runs to its verdict.
"""

from __future__ import annotations

import html
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from paracle_nb.errors import (
    AuthenticationFailed,
    ConnectionRefused,
    ParacleError,
    PermissionDenied,
    TargetTimeout,
    TargetUnreachable,
)
from paracle_nb.findings import Finding, Severity, Verdict
from paracle_nb.target import Target

log = logging.getLogger(__name__)

T = TypeVar("T")


class Unavailable:
    """What a failed step returns instead of its result; falsy."""

    def __init__(self, step: str, error: BaseException) -> None:
        self.step = step
        self.error = error

    @property
    def reason(self) -> str:
        if isinstance(self.error, ParacleError):
            return str(self.error)
        return f"{type(self.error).__name__}: {self.error}"

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"step {self.step!r} unavailable: {self.reason}"

    def _repr_html_(self) -> str:
        return (
            "<div style='border-left:4px solid #ef6c00;padding:4px 8px'>"
            f"<b>{html.escape(self.step)}</b> could not run: "
            f"{html.escape(self.reason)}</div>"
        )


def available(value: Any) -> bool:
    """True when a step produced a result (not :class:`Unavailable`)."""
    return not isinstance(value, Unavailable) and value is not None


_current: Runbook | None = None


def current_target() -> Target | None:
    """Return the target of the runbook open in this kernel, if any."""
    return _current.target if _current is not None else None


class Runbook:
    """One run of a runbook against a target: steps, timings, failures.

    In JupyterLab a cell may run again, or out of order: the latest run of
    each step is what counts. A re-run step replaces its earlier failure
    and closes the connection its earlier run opened, and
    :meth:`open` lets the cell that creates the runbook run again without
    forgetting the steps already run.
    """

    def __init__(self, name: str, target: Target) -> None:
        global _current
        self.name = name
        self.target = target
        _current = self
        self.failures: list[Unavailable] = []
        self.timings: dict[str, float] = {}
        self.verdict: Verdict | None = None
        self.remediations: list[Any] = []
        # Plans displayed in the notebook, by title; the latest display wins.
        self.shown: dict[str, Any] = {}
        # Connections and clients steps opened, by step, closed on re-run.
        self._opened: dict[str, Any] = {}
        log.info("runbook %s started against %s", name, target.environment)

    @classmethod
    def open(cls, name: str, target: Target) -> Runbook:
        """Return this kernel's runbook ``name`` on ``target``, or a new one.

        Running the notebook's first cell again keeps the steps already run
        (their results are still in the kernel). A runbook on another target
        starts afresh, and the earlier one's connections are closed so no
        step can read the old target by mistake.
        """
        previous = _current
        if previous is not None and previous.name == name \
                and previous.target.describe() == target.describe():
            return previous
        if previous is not None:
            previous.close()
        return cls(name, target)

    def close(self) -> None:
        """Close every connection and client the steps opened."""
        for name in list(self._opened):
            self._close_opened(name)

    def step(self, name: str, func: Callable[..., T], *args: Any, **kw: Any
             ) -> T | Unavailable:
        """Run one diagnosis step; a failure is recorded, not raised.

        A step whose input is :class:`Unavailable` is skipped and passes
        that input on, so the first failure is reported once. Running a
        step again forgets its earlier outcome first.
        """
        inputs = (*args, *kw.values())
        self._forget(name, inputs)
        for value in inputs:
            if isinstance(value, Unavailable):
                return value
        started = time.monotonic()
        try:
            result = func(*args, **kw)
        except Exception as exc:  # a step must never end the run
            log.debug("step %s failed:\n%s", name, traceback.format_exc())
            failed = Unavailable(name, exc)
            self.failures.append(failed)
            return failed
        finally:
            self.timings[name] = round(time.monotonic() - started, 3)

        if callable(getattr(result, "close", None)) and not _among(result, inputs):
            self._opened[name] = result
        return result

    def _forget(self, name: str, inputs: tuple[Any, ...]) -> None:
        """Drop a step's earlier failure; close what its earlier run opened."""
        self.failures = [f for f in self.failures if f.step != name]
        if name in self._opened and not _among(self._opened[name], inputs):
            self._close_opened(name)

    def _close_opened(self, name: str) -> None:
        opened = self._opened.pop(name)
        try:
            opened.close()
        except Exception as exc:  # closing a dead connection may fail too
            log.debug("closing what step %s opened failed: %s", name, exc)

    def conclude(self, findings: list[Finding]) -> Verdict:
        """Return the verdict: the diagnosis plus every step that failed."""
        verdict = Verdict(self.name, list(findings))
        for failed in self.failures:
            verdict.findings.append(_failure_finding(failed))
        if not verdict.findings:
            verdict.findings.append(
                Finding("no-problem", Severity.OK, "Nothing abnormal found.")
            )
        log.info("%s", verdict.headline())
        self.verdict = verdict
        return verdict

    def record(self, result: Any) -> None:
        """Add an apply outcome (:class:`paracle_nb.remediate.Applied`) to the
        verdict, once per plan and outcome."""
        if any(r.plan_id == result.plan_id and r.outcome == result.outcome
               for r in self.remediations):
            return
        self.remediations.append(result)
        if result.outcome != "not-confirmed":
            self._add_finding(result.finding)

    def _add_finding(self, finding: Finding) -> None:
        """Add a finding after the verdict; it replaces "nothing found"."""
        if self.verdict is None:
            return
        self.verdict.findings = [f for f in self.verdict.findings
                                 if f.cause != "no-problem"] + [finding]

    def remediate(self, apply: Any = "", plans: Any = None) -> Any:
        """Apply the plans a batch run was started with; show the others.

        ``apply`` is the runbook's parameter: plan ids shown by an earlier
        run (comma-separated or a list). A plan applies only when it was
        shown in this notebook (``plans``, by default every plan displayed
        so far) and its id, re-read from the target now, is among them.
        Nothing is applied otherwise, and nothing ever waits for input
        here. Returns the outcomes and the verdict with them, for display.
        """
        from paracle_nb import remediate

        plans = list(self.shown.values()) if plans is None else list(plans)
        wanted = remediate.parse_apply(apply)
        outcomes = []
        for plan in plans:
            if plan.id in wanted:
                result = remediate.apply_plan(plan, authorized=wanted)
                self.record(result)
                outcomes.append(result)
        unknown = wanted - {p.id for p in plans} - {
            p.second_confirmation for p in plans if p.second_confirmation}
        noted = {f.evidence.get("plan_id") for f in
                 (self.verdict.findings if self.verdict is not None else [])}
        for plan_id in sorted(unknown - noted):
            finding = Finding("remediation-plan-changed", Severity.WARNING,
                              f"Plan {plan_id} was asked for but is not among "
                              "the plans of this run: the target changed since "
                              "it was shown, or it belongs to another runbook. "
                              "Nothing applied for it.",
                              {"plan_id": plan_id})
            remediate.audit_unknown(plan_id, finding.summary)
            self._add_finding(finding)
        return Remediation(plans, outcomes, self.verdict,
                           bool(wanted))


class Remediation:
    """The outcome of a runbook's remediation cell, shown in the notebook."""

    def __init__(self, plans: list[Any], outcomes: list[Any],
                 verdict: Verdict | None, requested: bool) -> None:
        self.plans = plans
        self.outcomes = outcomes
        self.verdict = verdict
        self.requested = requested

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        parts = [o._repr_html_() for o in self.outcomes]
        by_id = {o.plan_id for o in self.outcomes}
        rest = [p for p in self.plans if p.id not in by_id
                and p.executor is not None and not p.empty]
        if rest:
            ids = ", ".join(f"<code>{p.id}</code>" for p in rest)
            parts.append(f"<p>Not applied: {ids}. To apply, start the run with "
                         "<code>-p apply ID</code>, or call <code>.apply()</code> "
                         "on the plan in JupyterLab.</p>")
        if not self.plans:
            parts.append("<p>No plan to apply.</p>")
        from paracle_nb.remediate import PLANS_MIME

        bundle = {"text/html": "".join(parts),
                  "text/plain": "\n".join(repr(o) for o in self.outcomes)
                  or "nothing applied",
                  PLANS_MIME: {"plans": [_plan_summary(p, self.outcomes)
                                         for p in self.plans]}}
        if self.verdict is not None and self.requested:
            bundle.update(self.verdict._repr_mimebundle_())
            bundle["text/html"] = "".join(parts) + self.verdict._html()
        return bundle


def _among(value: Any, inputs: tuple[Any, ...]) -> bool:
    """True if ``value`` is one of ``inputs`` (by identity, not equality)."""
    return any(value is item for item in inputs)


def _plan_summary(plan: Any, outcomes: list[Any]) -> dict[str, Any]:
    """One plan as the artifact records it: id, what, whether it applies."""
    outcome = next((o.outcome for o in outcomes if o.plan_id == plan.id), None)
    return {"id": plan.id, "title": plan.title, "kind": plan.kind,
            "changes": len(plan.changes),
            "applicable": plan.executor is not None and not plan.empty,
            "outcome": outcome or "not applied"}


def _failure_finding(failed: Unavailable) -> Finding:
    error = failed.error
    if isinstance(error, PermissionDenied):
        cause = "forbidden"
    elif isinstance(error, AuthenticationFailed):
        cause = "authentication-failed"
    elif isinstance(error, ConnectionRefused):
        cause = "connection-refused"
    elif isinstance(error, TargetTimeout):
        cause = "target-timeout"
    elif isinstance(error, TargetUnreachable):
        cause = "target-unreachable"
    else:
        cause = "step-failed"
    needs = _ROLE_HINTS.get(getattr(error, "target", None) or "", "") \
        if cause == "forbidden" else ""
    return Finding(
        cause,
        Severity.WARNING,
        f"Step '{failed.step}' could not run: {failed.reason}{needs}",
        {"step": failed.step, "error": failed.reason},
        step=failed.step,
    )


# Where a refused diagnosis step finds the access it needs.
_ROLE_HINTS = {
    "kubernetes": ". The read-only runbook role grants it: "
                  "deploy/kubernetes/rbac-runbook-readonly.yaml.",
    "postgres": ". The runbook role (pg_monitor) grants it: "
                "deploy/postgres/roles.sql.",
    "redis": ". The runbook's Redis user needs read commands (+info +client|list "
             "+scan +memory|usage +config|get).",
}


#: Longest text shown in one table cell; the rest is cut, marked with "…".
MAX_CELL_CHARS = 120


def show(sentence: str, evidence: Any = None, max_rows: int = 12) -> None:
    """Display one sentence that says what a step means, then its evidence.

    Tables longer than ``max_rows`` and texts longer than
    :data:`MAX_CELL_CHARS` are cut, saying how much is hidden, so every
    step fits on a screen.
    """
    from IPython.display import HTML, Markdown, display

    display(Markdown(sentence))
    if evidence is None or isinstance(evidence, Unavailable):
        if isinstance(evidence, Unavailable):
            display(evidence)
        return
    if isinstance(evidence, dict):
        display(HTML(_dict_table(evidence)))
    elif hasattr(evidence, "to_html"):
        display(HTML(compact_table(evidence, max_rows)))
    else:
        display(evidence)


def compact_table(frame: Any, max_rows: int = 12) -> str:
    """Return a DataFrame as HTML that fits a screen, saying what is hidden.

    >>> import pandas as pd
    >>> "3 more rows not shown" in compact_table(pd.DataFrame({"n": range(5)}), 2)
    True
    """
    shown = _humanize(frame.head(max_rows)).drop(columns=["log"], errors="ignore")
    for column in shown.columns:
        shown[column] = [_clip(v) for v in shown[column]]
    html_table = shown.to_html(index=False, na_rep="-", escape=True)
    hidden = len(frame) - len(shown)
    if hidden > 0:
        rows = "row" if hidden == 1 else "rows"
        html_table += (f"<p><i>First {len(shown)} of {len(frame)} rows; "
                       f"{hidden} more {rows} not shown.</i></p>")
    return html_table


def _clip(value: Any, limit: int = MAX_CELL_CHARS) -> Any:
    """Return a long text (or a list or mapping, as text) cut to ``limit``."""
    if isinstance(value, (list, tuple, set, dict)):
        value = _listing(value)
    if isinstance(value, str):
        return clip_text(value, limit)
    return value


def clip_text(text: str, limit: int = MAX_CELL_CHARS) -> str:
    """Return ``text`` cut to ``limit`` characters, ending in "…" when cut.

    >>> clip_text("connection refused", 10)
    'connectio…'
    """
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _listing(value: list[Any] | tuple[Any, ...] | set[Any] | dict[Any, Any]
             ) -> str:
    """Return a collection as short text: ``a, b, c`` or ``k=v, ...``."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_listing(v) if isinstance(v, (list, dict)) else v}"
                         for k, v in value.items())
    items = sorted(value, key=str) if isinstance(value, set) else value
    return ", ".join(map(str, items))


def _humanize(frame: Any) -> Any:
    from paracle_nb.units import format_bytes, format_duration

    frame = frame.copy()
    for column in frame.columns:
        name = str(column)
        if name.endswith(("bytes", "memory_limit", "memory_request")):
            frame[column] = [format_bytes(v) if v == v and v is not None else None
                             for v in frame[column]]
        elif name.endswith("_s"):
            frame[column] = [format_duration(v) if v == v and v is not None
                             else None for v in frame[column]]
    return frame


def _dict_table(values: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
        f"<td style='text-align:left'>{html.escape(_human_value(str(k), v))}</td></tr>"
        for k, v in values.items()
    )
    return f"<table>{rows}</table>"


def _human_value(key: str, value: Any) -> str:
    """Return a value as an engineer reads it: MiB, %, 2m05s."""
    from paracle_nb.units import format_bytes, format_duration

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(_clip(
            value if isinstance(value, (list, tuple, set, dict)) else str(value)))
    if key.endswith(("bytes", "memory", "memory_peak", "memory_dataset", "maxmemory")):
        return f"{format_bytes(value)} ({int(value):,} B)"
    if key.endswith(("ratio", "share")):
        return f"{value:.1%}"
    if key.endswith("_s"):
        return format_duration(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}"
