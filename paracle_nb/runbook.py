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
    Forbidden,
    ParacleError,
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
    """One run of a runbook against a target: steps, timings, failures."""

    def __init__(self, name: str, target: Target) -> None:
        global _current
        self.name = name
        self.target = target
        _current = self
        self.failures: list[Unavailable] = []
        self.timings: dict[str, float] = {}
        log.info("runbook %s started against %s", name, target.environment)

    def step(self, name: str, func: Callable[..., T], *args: Any, **kw: Any
             ) -> T | Unavailable:
        """Run one diagnosis step; a failure is recorded, not raised.

        A step whose input is :class:`Unavailable` is skipped and passes
        that input on, so the first failure is reported once.
        """
        for value in (*args, *kw.values()):
            if isinstance(value, Unavailable):
                return value
        started = time.monotonic()
        try:
            return func(*args, **kw)
        except Exception as exc:  # a step must never end the run
            log.debug("step %s failed:\n%s", name, traceback.format_exc())
            failed = Unavailable(name, exc)
            self.failures.append(failed)
            return failed
        finally:
            self.timings[name] = round(time.monotonic() - started, 3)

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
        return verdict


def _failure_finding(failed: Unavailable) -> Finding:
    error = failed.error
    if isinstance(error, Forbidden):
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
    return Finding(
        cause,
        Severity.WARNING,
        f"Step '{failed.step}' could not run: {failed.reason}",
        {"step": failed.step, "error": failed.reason},
        step=failed.step,
    )


def show(sentence: str, evidence: Any = None, max_rows: int = 12) -> None:
    """Display one sentence that says what a step means, then its evidence."""
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
    """Return a DataFrame as HTML that fits a screen, saying what is hidden."""
    shown = _humanize(frame.head(max_rows)).drop(columns=["log"], errors="ignore")
    html_table = shown.to_html(index=False, na_rep="-", escape=True)
    hidden = len(frame) - len(shown)
    if hidden > 0:
        html_table += f"<p><i>… {hidden} more row(s) not shown.</i></p>"
    return html_table


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
        return "-" if value is None else str(value)
    if key.endswith(("bytes", "memory", "memory_peak", "memory_dataset", "maxmemory")):
        return f"{format_bytes(value)} ({int(value):,} B)"
    if key.endswith(("ratio", "share")):
        return f"{value:.1%}"
    if key.endswith("_s"):
        return format_duration(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}"
