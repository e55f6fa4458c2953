"""Applying a plan: confirmed, once, on the plan that was shown, audited.

A :class:`~paracle_nb.actions.Plan` only describes a change. Applying it
goes through :func:`apply_plan`, which

1. re-reads the target (``replan``) and refuses a plan that has changed
   since it was shown: the fresh plan is shown instead;
2. asks for confirmation: typed in an interactive kernel, or given up
   front in a batch run as the plan's id in the ``apply`` parameter
   (a batch run never waits for input);
3. applies it at most once per kernel;
4. verifies the effect and records it as a finding;
5. appends who, when, target, plan, outcome and after-state to the audit
   trail (JSON lines) and shows the record in the notebook.

A refusal (403, missing privilege) or a failure is an outcome with a
finding, never a traceback.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import html
import json
import logging
import os
import pathlib
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from paracle_nb.errors import ParacleError, PermissionDenied
from paracle_nb.findings import Finding, Severity

if TYPE_CHECKING:
    from paracle_nb.actions import Plan

log = logging.getLogger(__name__)

AUDIT_ENV = "PARACLE_NB_AUDIT"
# The plans a run showed, with their ids, as recorded in the notebook.
PLANS_MIME = "application/vnd.paracle.plans+json"
BATCH_ENV = "PARACLE_NB_BATCH"

# Plan ids applied in this kernel: re-running a cell never applies twice.
_applied: dict[str, Applied] = {}


@dataclasses.dataclass
class Applied:
    """What happened when a plan was (or was not) applied."""

    plan_id: str
    title: str
    outcome: str  # applied, failed, forbidden, refused, changed, not-confirmed, ...
    finding: Finding
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    fresh: Plan | None = None

    @property
    def applied(self) -> bool:
        return self.outcome == "applied"

    def _repr_html_(self) -> str:
        colour = {"applied": "#2e7d32", "failed": "#c62828",
                  "forbidden": "#c62828"}.get(self.outcome, "#ef6c00")
        after = self.record.get("after")
        after_html = (f"<pre>{html.escape(json.dumps(after, indent=1, default=str))}"
                      "</pre>" if after else "")
        shown = self.fresh._repr_html_() if self.fresh is not None else ""
        return (f"<div style='border-left:4px solid {colour};padding:4px 8px'>"
                f"<b>{html.escape(self.outcome)}</b>: plan "
                f"<code>{html.escape(self.plan_id)}</code> "
                f"({html.escape(self.title)})<br>{html.escape(self.finding.summary)}"
                f"{after_html}{shown}</div>")

    def __repr__(self) -> str:
        return f"Applied({self.plan_id}, {self.outcome}: {self.finding.summary})"


def batch_mode() -> bool:
    """True in a papermill run (or any kernel that cannot ask for input)."""
    if os.environ.get(BATCH_ENV):
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return True
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return True
    # The front end says per request whether it can answer input() prompts;
    # JupyterLab can, papermill and nbclient cannot.
    return not getattr(kernel, "_allow_stdin", False)


def apply_plan(plan: Plan, *, confirm: str | None = None,
               authorized: Iterable[str] = ()) -> Applied:
    """Apply ``plan`` if it is still the plan shown and it is confirmed.

    ``confirm`` is the plan id typed (or passed by a script); in a batch
    run, ``authorized`` holds the ids (and second confirmations) the run
    was started with. Without either, an interactive kernel asks. Every
    attempt is audited, whatever its outcome.
    """
    return _audited(plan, _attempt(plan, confirm, set(authorized)))


def _attempt(plan: Plan, confirm: str | None, authorized: set[str]) -> Applied:
    plan_id = plan.id
    if plan_id in _applied:
        earlier = _applied[plan_id]
        return _outcome(plan, "already-applied", Severity.INFO,
                        f"Plan {plan_id} was already applied in this session; "
                        "not applied again.", earlier.record.get("after"))
    refusal = _refusal(plan)
    if refusal is not None:
        return refusal

    try:
        fresh = plan.replan() if plan.replan is not None else plan
    except ParacleError as exc:  # the target went away since the plan was made
        return _outcome(plan, "failed", Severity.CRITICAL,
                        f"Plan {plan_id} not applied: could not read the target "
                        f"again to check the plan still holds: {exc}", None)
    if fresh.id != plan_id:
        result = _outcome(plan, "changed", Severity.WARNING,
                          f"The target changed since plan {plan_id} was shown; "
                          f"not applied. The plan now is {fresh.id}: review it.",
                          None)
        result.fresh = fresh
        return result

    if not _confirmed(plan, confirm, authorized):
        return _outcome(plan, "not-confirmed", Severity.INFO,
                        _how_to_confirm(plan), None)
    if plan.second_confirmation and not _second_confirmed(plan, authorized):
        return _outcome(plan, "not-confirmed", Severity.INFO,
                        f"Plan {plan_id} needs a second confirmation: "
                        f"{plan.second_confirmation!r}. Not applied.", None)
    return _execute(plan)


def _refusal(plan: Plan) -> Applied | None:
    if plan.executor is None:
        return _outcome(plan, "manual", Severity.INFO,
                        f"Plan {plan.id} is applied by hand: review it and run "
                        "its command.", None)
    if plan.empty:
        return _outcome(plan, "nothing-to-do", Severity.INFO,
                        f"Plan {plan.id} changes nothing.", None)
    return None


def _confirmed(plan: Plan, confirm: str | None, authorized: set[str]) -> bool:
    if confirm is not None:
        return confirm.strip() == plan.id
    if plan.id in authorized:
        return True
    if batch_mode():
        return False
    answer = input(f"Apply plan {plan.id} ({plan.title}) to "
                   f"{_where(plan)}? Type the plan id to confirm: ")
    return answer.strip() == plan.id


def _second_confirmed(plan: Plan, authorized: set[str]) -> bool:
    phrase = plan.second_confirmation or ""
    if phrase in authorized:
        return True
    if batch_mode():
        return False
    answer = input(f"This is irreversible. Type {phrase!r} to go on: ")
    return answer.strip() == phrase


def _how_to_confirm(plan: Plan) -> str:
    if batch_mode():
        return (f"Plan {plan.id} not applied: a batch run applies a plan only "
                f"when started with it, e.g. -p apply {plan.id}.")
    return f"Plan {plan.id} not applied: not confirmed."


def _execute(plan: Plan) -> Applied:
    """Run the plan's executor and verifier; failures become outcomes."""
    assert plan.executor is not None
    try:
        applied = plan.executor(plan)
    except PermissionDenied as exc:
        return _outcome(plan, "forbidden", Severity.CRITICAL,
                        f"Plan {plan.id} was refused: {exc}. {plan.needs}".strip(),
                        None)
    except ParacleError as exc:
        return _outcome(plan, "failed", Severity.CRITICAL,
                        f"Plan {plan.id} failed: {exc}", None)
    except Exception as exc:  # an action must never end the run
        log.debug("plan %s failed", plan.id, exc_info=True)
        return _outcome(plan, "failed", Severity.CRITICAL,
                        f"Plan {plan.id} failed: {type(exc).__name__}: "
                        f"{_first_line(exc)}", None)
    try:
        finding = plan.verifier(plan, applied) if plan.verifier else Finding(
            "remediation-applied", Severity.INFO,
            f"Applied plan {plan.id}: {plan.title}.", dict(applied))
    except Exception as exc:  # the change happened; say the check did not
        finding = Finding("remediation-unverified", Severity.WARNING,
                          f"Applied plan {plan.id} but could not verify it: "
                          f"{type(exc).__name__}: {_first_line(exc)}")
    finding.evidence.setdefault("plan_id", plan.id)
    result = Applied(plan.id, plan.title, "applied", finding,
                     {"applied": applied, "after": finding.evidence.get("after")})
    _applied[plan.id] = result
    return result


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _outcome(plan: Plan, outcome: str, severity: Severity, summary: str,
             after: Any) -> Applied:
    cause = {"applied": "remediation-applied", "forbidden": "remediation-forbidden",
             "failed": "remediation-failed", "changed": "remediation-plan-changed"
             }.get(outcome, "remediation-not-applied")
    finding = Finding(cause, severity, summary,
                      {"plan_id": plan.id, "plan": plan.title, "outcome": outcome},
                      step=f"apply {plan.title}")
    return Applied(plan.id, plan.title, outcome, finding, {"after": after})


def _where(plan: Plan) -> str:
    if plan.target is None:
        return "the target"
    described = plan.target.describe()
    return f"{described['environment']} ({plan.kind.split('.', 1)[0]})"


def _audited(plan: Plan, result: Applied) -> Applied:
    """Append the audit record of an apply attempt; keep it on the result."""
    record = {
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "who": operator(),
        "host": socket.gethostname(),
        "runbook": _runbook_name(),
        "target": plan.target.describe() if plan.target is not None else None,
        "plan_id": plan.id,
        "kind": plan.kind,
        "title": plan.title,
        "planned": plan.rows(),
        "applied": result.record.get("applied"),
        "outcome": result.outcome,
        "finding": result.finding.to_dict(),
        "after": result.record.get("after"),
    }
    result.record = record
    for path in audit_paths():
        _append(path, record)
    return result


def audit_unknown(plan_id: str, summary: str) -> None:
    """Audit an ``apply`` id that matched no plan this run showed."""
    record = {
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "who": operator(), "host": socket.gethostname(),
        "runbook": _runbook_name(), "target": _current_target(),
        "plan_id": plan_id, "kind": None, "title": None, "planned": None,
        "applied": None, "outcome": "unknown-plan", "finding": summary,
        "after": None,
    }
    for path in audit_paths():
        _append(path, record)


def _current_target() -> dict[str, str] | None:
    from paracle_nb.runbook import current_target

    target = current_target()
    return target.describe() if target is not None else None


def operator() -> str:
    """Return who is applying: $PARACLE_NB_OPERATOR, else the login name."""
    named = os.environ.get("PARACLE_NB_OPERATOR")
    if named:
        return named
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _runbook_name() -> str | None:
    from paracle_nb import runbook

    return runbook._current.name if runbook._current is not None else None


def audit_paths() -> list[pathlib.Path]:
    """Where audit records go: the trail, and the run's own artifact.

    The trail is ``$PARACLE_NB_AUDIT``, else ``audit.jsonl`` beside the
    runs in the artifacts folder.
    """
    paths = []
    run_folder = os.environ.get("PARACLE_NB_ARTIFACT_DIR")
    configured = os.environ.get(AUDIT_ENV)
    if configured:
        paths.append(pathlib.Path(configured))
    elif run_folder:
        paths.append(pathlib.Path(run_folder).parent / "audit.jsonl")
    else:
        paths.append(pathlib.Path("artifacts") / "audit.jsonl")
    if run_folder:
        paths.append(pathlib.Path(run_folder) / "audit.jsonl")
    return paths


def _append(path: pathlib.Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a single write, so concurrent runs never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=str, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_audit(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Return the records of an audit trail, oldest first."""
    text = pathlib.Path(path).read_text() if pathlib.Path(path).exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def parse_apply(value: Any) -> set[str]:
    """Return the plan ids (and second confirmations) of an ``apply`` parameter.

    Accepts a comma-separated string or a list; empty means apply nothing.
    """
    if value in (None, "", False):
        return set()
    items = value if isinstance(value, (list, tuple, set)) else str(value).split(",")
    return {str(item).strip() for item in items if str(item).strip()}


def plans_from_notebook(nb: Any) -> list[dict[str, Any]]:
    """Return the plans an executed notebook recorded (id, title, outcome)."""
    found: list[dict[str, Any]] = []
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get(PLANS_MIME)
            if data:
                found = list((json.loads(data) if isinstance(data, str)
                              else data)["plans"])
    return found


def forget_applied() -> None:
    """Forget which plans this kernel applied (for tests)."""
    _applied.clear()


Executor = Callable[["Plan"], dict[str, Any]]
Verifier = Callable[["Plan", dict[str, Any]], Finding]
