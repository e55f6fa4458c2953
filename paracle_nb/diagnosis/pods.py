"""Why are the API pods crashing?"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import available, clip_text
from paracle_nb.units import format_bytes

if TYPE_CHECKING:
    import pandas as pd

OOM_EXIT_CODE = 137


def crashing_containers(containers: pd.DataFrame) -> pd.DataFrame:
    """Return the containers in CrashLoopBackOff or killed since their start."""
    crashing = (containers["reason"] == "CrashLoopBackOff") | (
        (containers["restarts"] > 0) & containers["last_reason"].notna()
        & ~containers["ready"])
    return containers[crashing]


def _oom_finding(oom: pd.DataFrame, metrics: Any) -> Finding:
    container = str(oom["container"].mode().iloc[0])
    limit = oom["memory_limit"].dropna()
    limit_bytes = int(limit.iloc[0]) if not limit.empty else None
    restarts = {str(r.pod): int(r.restarts) for r in oom.itertuples()}

    evidence: dict[str, Any] = {
        "container": container,
        "pods": sorted(restarts),
        "pods_crashing": len(restarts),
        "restarts": restarts,
        "max_restarts": max(restarts.values()),
        "last_reason": "OOMKilled",
        "last_exit_code": OOM_EXIT_CODE,
        "memory_limit_bytes": limit_bytes,
        "memory_limit": format_bytes(limit_bytes),
    }
    usage = _peak_usage(metrics, container, list(restarts))
    if usage is not None:
        evidence["peak_memory_bytes"] = usage
        if limit_bytes:
            evidence["peak_usage_of_limit"] = round(usage / limit_bytes, 3)

    summary = (f"Container '{container}' was OOMKilled (exit 137) in "
               f"{len(restarts)} pod(s), up to {evidence['max_restarts']} restarts, "
               f"against a memory limit of {format_bytes(limit_bytes)}.")
    return Finding("oom-killed", Severity.CRITICAL, summary, evidence,
                   step="Check pod status")


def _crash_finding(crashing: pd.DataFrame) -> Finding:
    restarts = {f"{r.pod}/{r.container}": int(r.restarts)
                for r in crashing.itertuples()}
    reasons = sorted({str(r) for r in crashing["last_reason"].dropna()})
    codes = sorted({int(c) for c in crashing["last_exit_code"].dropna()})
    summary = (f"{len(restarts)} container(s) crash-looping; last termination "
               f"{', '.join(reasons) or 'unknown'} (exit {codes or '?'}).")
    return Finding("crashloop", Severity.CRITICAL, summary,
                   {"restarts": restarts, "last_reasons": reasons,
                    "last_exit_codes": codes}, step="Check pod status")


def _peak_usage(metrics: Any, container: str, pods: list[str]) -> int | None:
    if not available(metrics) or metrics.empty:
        return None
    rows = metrics[(metrics["container"] == container) & metrics["pod"].isin(pods)]
    return int(rows["memory_bytes"].max()) if not rows.empty else None


def describe_pods(pods: Any) -> str:
    """Return one sentence on pod health: how many ready, how many failing."""
    if not available(pods):
        return "Pod status unavailable."
    if pods.empty:
        return "No pods match the selector."
    ready = sum(1 for r in pods["ready"] if r.split("/")[0] == r.split("/")[1])
    bad = pods[~pods["status"].isin(["Running", "Completed", "Succeeded"])]
    statuses = ", ".join(f"{n} {s}" for s, n in bad["status"].value_counts().items())
    tail = f"; {statuses}" if statuses else ""
    return (f"{ready} of {len(pods)} pods fully ready, "
            f"{int(pods['restarts'].sum())} restarts in total{tail}.")


def focus_container(containers: Any) -> str | None:
    """Return the container to look at: the most restarted crashing one."""
    if not available(containers) or containers.empty:
        return None
    crashing = crashing_containers(containers)
    pool = crashing if not crashing.empty else containers
    return str(pool.sort_values("restarts", ascending=False)["container"].iloc[0])


def describe_logs(logs: Any) -> str:
    """Return one sentence on what the crashed containers last wrote."""
    if not available(logs):
        return "Previous logs unavailable."
    if logs.empty:
        return "No crashed container: no previous logs to read."
    last = logs.sort_values("restarts", ascending=False)["last_line"].iloc[0]
    return (f"Previous logs of {len(logs)} crashed container(s); the most "
            f"restarted one ends with: `{clip_text(last, 160)}`")


def describe_events(events: Any) -> str:
    """Return one sentence on the warning events of the pods."""
    if not available(events):
        return "Events unavailable."
    warnings = events[events["type"] == "Warning"]
    if warnings.empty:
        return f"{len(events)} event(s), none a warning."
    reasons = ", ".join(f"{r} x{int(n)}" for r, n in
                        warnings.groupby("reason")["count"].sum().items())
    return f"{len(warnings)} warning event(s): {reasons}."


def first_log(logs: Any) -> str:
    """Return the previous log of the most restarted crashed container."""
    if not available(logs) or logs.empty:
        return ""
    top = logs.sort_values("restarts", ascending=False).iloc[0]
    return f"--- {top['pod']}/{top['container']} (previous) ---\n{top['log']}"


# -- the guide's four causes ---------------------------------------------------

IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                      "ErrImageNeverPull")
_DATABASE_ERROR = re.compile(
    r"OperationalError|connection to server at|could not connect to server|"
    r"password authentication failed|no pg_hba\.conf entry|"
    r"could not translate host name|database \"[^\"]+\" does not exist")
_DATABASE_CONTEXT = re.compile(r"postgres|psycopg|database|:5432|port 5432", re.I)
_MISSING_VARIABLE = (
    re.compile(r"missing required environment variable:?\s+'?([A-Z][A-Z0-9_]*)",
               re.I),
    re.compile(r"environment variable '?([A-Z][A-Z0-9_]*)'? is not set", re.I),
    re.compile(r"KeyError: '([A-Z][A-Z0-9_]*)'"),
)
_REGISTRY_ANSWER = re.compile(
    r"\b(40[13] (?:Unauthorized|Forbidden)|not found|manifest unknown|"
    r"no such host|i/o timeout|pull access denied)", re.I)


def database_error(log: str) -> str | None:
    """Return the last log line saying the database refused or was unreachable."""
    found = None
    for line in log.splitlines():
        if _DATABASE_ERROR.search(line) or (
                "connection refused" in line.lower()
                and _DATABASE_CONTEXT.search(line)):
            found = line.strip()
    return found


def database_reason(line: str) -> str:
    """Return what the server (or the network) said, from a database error line.

    >>> database_reason('psycopg.OperationalError: connection to server at '
    ...                 '"db", port 5432 failed: FATAL:  no such role')
    'no such role'
    """
    if "FATAL:" in line:
        return line[line.index("FATAL:") + len("FATAL:"):].strip()
    if "failed:" in line:
        return line.rsplit("failed:", 1)[1].strip()
    return line.split(": ", 1)[-1].strip()


def missing_variable(log: str) -> str | None:
    """Return the environment variable a crashed app said it was missing."""
    for pattern in _MISSING_VARIABLE:
        names = pattern.findall(log)
        if names:
            return str(names[-1])
    return None


def crash_causes_in_logs(logs: Any) -> pd.DataFrame:
    """Return, per crashed container, the database error or missing variable."""
    import pandas as pd

    columns = ["pod", "container", "restarts", "database_error", "database_reason",
               "missing_variable"]
    if not available(logs) or logs.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for row in logs.itertuples():
        error = database_error(row.log)
        rows.append({"pod": row.pod, "container": row.container,
                     "restarts": row.restarts, "database_error": error,
                     "database_reason": database_reason(error) if error else None,
                     "missing_variable": missing_variable(row.log)})
    return pd.DataFrame(rows, columns=columns)


def missing_env(env: Any, required_env: str) -> pd.DataFrame:
    """Return each required variable name: provided or not, and by what.

    ``required_env`` is a comma-separated list of names. Names only: the
    env table never holds a value.
    """
    import pandas as pd

    columns = ["container", "name", "provided", "source", "problem"]
    required = [n.strip() for n in required_env.split(",") if n.strip()]
    if not available(env):
        return pd.DataFrame(columns=columns)
    container = str(env["container"].iloc[0]) if not env.empty else None
    by_name = {r.name: r for r in env.itertuples()}
    rows = []
    for name in required:
        got = by_name.get(name)
        rows.append({"container": container, "name": name,
                     "provided": got is not None and bool(got.resolved),
                     "source": got.source if got is not None else None,
                     "problem": (got.problem if got is not None
                                 else "not set by env or envFrom")})
    return pd.DataFrame(rows, columns=columns)


def image_status(containers: Any) -> pd.DataFrame:
    """Return each container's image and whether it waits for its pull."""
    if not available(containers) or containers.empty:
        return containers
    table = containers[["pod", "container", "image", "state", "reason",
                        "restarts"]].copy()
    table["pulling_fails"] = table["reason"].isin(IMAGE_PULL_REASONS)
    return table


def diagnose_pods_crashing(containers: Any, metrics: Any = None, logs: Any = None,
                           database: Any = None, env: Any = None,
                           events: Any = None, pull_secrets: Any = None
                           ) -> list[Finding]:
    """Return the guide's causes found: OOM, database, missing env, image pull.

    ``logs`` is the previous-logs table, ``database`` a
    :class:`~paracle_nb.kube_config.DatabaseAttempt`, ``env`` the table of
    :func:`missing_env`. A crash no cause explains stays a plain crashloop.
    """
    if not available(containers):
        return []
    if containers.empty:
        return [no_pods_finding()]
    crashing = crashing_containers(containers)
    causes = crash_causes_in_logs(logs)
    findings: list[Finding] = []

    oom = crashing[(crashing["last_reason"] == "OOMKilled")
                   | (crashing["last_exit_code"] == OOM_EXIT_CODE)]
    if not oom.empty:
        findings.append(_oom_finding(oom, metrics))
    explained = {(r.pod, r.container) for r in oom.itertuples()}

    db_rows = causes[[isinstance(r.database_error, str)
                      and (r.pod, r.container) not in explained
                      for r in causes.itertuples()]]
    finding = _database_finding(db_rows, database)
    if finding is not None:
        findings.append(finding)
        explained |= {(r.pod, r.container) for r in db_rows.itertuples()}

    finding = _env_finding(env, causes, crashing)
    if finding is not None:
        findings.append(finding)
        name = finding.evidence["container"]
        explained |= {(r.pod, r.container) for r in crashing.itertuples()
                      if r.container == name}

    pulls = containers[containers["reason"].isin(IMAGE_PULL_REASONS)]
    if not pulls.empty:
        findings.append(_image_pull_finding(pulls, events, pull_secrets))

    other = crashing[[(r.pod, r.container) not in explained
                      for r in crashing.itertuples()]]
    if not other.empty:
        findings.append(_crash_finding(other))
    return findings


def _database_finding(rows: pd.DataFrame, attempt: Any) -> Finding | None:
    tried = attempt if available(attempt) else None
    if rows.empty and (tried is None or tried.connected):
        return None

    evidence: dict[str, Any] = {}
    if not rows.empty:
        restarts = {str(r.pod): int(r.restarts) for r in rows.itertuples()}
        evidence.update({
            "container": str(rows["container"].mode().iloc[0]),
            "pods": sorted(restarts), "restarts": restarts,
            "log_error": str(rows["database_error"].iloc[-1])[:300],
            "log_reason": str(rows["database_reason"].iloc[-1]),
        })
    if tried is not None:
        evidence.update({"attempt_" + k: v for k, v in tried.evidence().items()})

    if rows.empty and tried is not None:
        if not tried.server_refused:
            summary = (f"The {tried.variable} the pods get ({tried.endpoint}) "
                       f"is not reachable from where this runbook runs: "
                       f"{tried.refusal}. No pod failed on it.")
            return Finding("database-unverified", Severity.INFO, summary,
                           evidence, step="Check database connectivity")
        summary = (f"The server refuses the {tried.variable} the pods get "
                   f"({tried.user}@{tried.endpoint}, {tried.source}): "
                   f"{tried.refusal}. Pods will fail at their next start.")
        return Finding("database-connection-failure", Severity.WARNING, summary,
                       evidence, step="Check database connectivity")

    head = (f"Container '{evidence['container']}' exits at start in "
            f"{len(evidence['pods'])} pod(s), up to "
            f"{max(evidence['restarts'].values())} restarts, unable to connect "
            f"to its database: {evidence['log_reason']}.")
    if tried is None:
        tail = " The runbook could not try the connection itself."
    elif tried.connected:
        tail = (f" Yet the runbook connected with the same {tried.variable}: "
                "suspect the network path from the pods, or an outage since over.")
    else:
        tail = (f" Trying the same {tried.variable} ({tried.user}@"
                f"{tried.endpoint}, {tried.source}) is refused too: "
                f"{tried.refusal}.")
    return Finding("database-connection-failure", Severity.CRITICAL, head + tail,
                   evidence, step="Check database connectivity")


def _env_finding(env: Any, causes: pd.DataFrame, crashing: pd.DataFrame
                 ) -> Finding | None:
    if not available(env) or env.empty:
        return None
    container = str(env["container"].iloc[0])
    missing = sorted(str(n) for n in env.loc[~env["provided"].astype(bool), "name"])
    mine = causes[(causes["container"] == container)
                  & causes["missing_variable"].notna()]
    in_logs = sorted({str(v) for v in mine["missing_variable"]})
    if not missing:
        return None

    crashed = crashing[crashing["container"] == container]
    restarts = {str(r.pod): int(r.restarts) for r in crashed.itertuples()}
    problems = {str(r.name): str(r.problem) for r in env.itertuples()
                if not r.provided}
    evidence = {"container": container, "missing": missing, "problems": problems,
                "named_in_logs": in_logs,
                "log_corroborated": bool(set(in_logs) & set(missing)),
                "pods": sorted(restarts), "restarts": restarts}
    names = ", ".join(missing)
    if crashed.empty:
        summary = (f"Container '{container}' does not get {names}, which the app "
                   "requires; it will fail at its next start.")
        return Finding("missing-env-var", Severity.WARNING, summary, evidence,
                       step="Check environment variables")
    said = (f"; its previous log says so ({', '.join(in_logs)})" if in_logs
            else "")
    summary = (f"Container '{container}' crash-loops in {len(restarts)} pod(s) "
               f"without {names}, which the app requires{said}.")
    return Finding("missing-env-var", Severity.CRITICAL, summary, evidence,
                   step="Check environment variables")


def _image_pull_finding(pulls: pd.DataFrame, events: Any,
                        pull_secrets: Any) -> Finding:
    pods = sorted({str(p) for p in pulls["pod"]})
    image = str(pulls["image"].mode().iloc[0])
    evidence: dict[str, Any] = {
        "container": str(pulls["container"].mode().iloc[0]),
        "image": image,
        "registry": image.split("/", 1)[0] if "/" in image else "docker.io",
        "pods": pods, "pods_waiting": len(pods),
        "waiting_reasons": {str(r.pod): str(r.reason) for r in pulls.itertuples()},
        "restarts": int(pulls["restarts"].sum()),
    }

    message = _pull_error(events, pods)
    if message:
        answer = _REGISTRY_ANSWER.search(message)
        evidence["pull_error"] = message[:400]
        evidence["registry_answer"] = answer.group(1) if answer else None
    if available(pull_secrets) and not pull_secrets.empty:
        mine = pull_secrets[pull_secrets["pod"].isin(pods)]
        evidence["service_account"] = (str(mine["service_account"].iloc[0])
                                       if not mine.empty else None)
        evidence["image_pull_secrets"] = sorted({str(s) for s in mine["secret"]})
        evidence["missing_pull_secrets"] = sorted(
            {str(s) for s in mine.loc[~mine["exists"].astype(bool), "secret"]})
    else:
        evidence["image_pull_secrets"] = []
        evidence["missing_pull_secrets"] = []

    answer_text = evidence.get("registry_answer") or "a failed pull"
    secrets_text = (
        f"; pull secret(s) {', '.join(evidence['missing_pull_secrets'])} "
        "referenced but missing" if evidence["missing_pull_secrets"] else
        "; no image pull secret" if not evidence["image_pull_secrets"] else "")
    summary = (f"{len(pods)} pod(s) cannot pull {image}: the registry answers "
               f"{answer_text}{secrets_text}.")
    return Finding("image-pull-error", Severity.CRITICAL, summary, evidence,
                   step="Check image status")


def _pull_error(events: Any, pods: list[str]) -> str | None:
    if not available(events) or events.empty:
        return None
    failed = events[(events["reason"] == "Failed")
                    & events["message"].str.startswith("Failed to pull image")
                    & events["object"].isin([f"pod/{p}" for p in pods])]
    return str(failed["message"].iloc[0]) if not failed.empty else None


def describe_database(attempt: Any) -> str:
    """Return one sentence on the connection attempt with the pods' URL."""
    if not available(attempt):
        return "Database connection not tried."
    who = f"`{attempt.user}@{attempt.endpoint}` from {attempt.source}"
    if attempt.connected:
        return (f"Connected with the {attempt.variable} the pods get ({who}) "
                f"in {attempt.elapsed_s:.2f}s.")
    return f"Connection with the {attempt.variable} the pods get ({who}) " \
           f"failed ({attempt.failure}): {attempt.refusal}"


def describe_env(required: Any) -> str:
    """Return one sentence on the required variables the container gets."""
    if not available(required) or required.empty:
        return "Environment variables unavailable."
    missing = list(required.loc[~required["provided"].astype(bool), "name"])
    where = f"Container '{required['container'].iloc[0]}'"
    if not missing:
        return f"{where} gets all {len(required)} required variables."
    return f"{where} lacks {len(missing)} required variable(s): {', '.join(missing)}."


def describe_images(images: Any) -> str:
    """Return one sentence on the images and any failing pull."""
    if not available(images) or images.empty:
        return "Image status unavailable."
    failing = images[images["pulling_fails"]]
    if failing.empty:
        return (f"All {len(images)} containers have their image "
                f"({images['image'].nunique()} distinct).")
    reasons = ", ".join(sorted(set(failing["reason"])))
    return (f"{len(failing)} container(s) wait for image "
            f"{failing['image'].iloc[0]} ({reasons}).")


def describe_pull_secrets(pull_secrets: Any) -> str:
    """Return one sentence on the image pull secrets the pods use."""
    if not available(pull_secrets):
        return "Image pull secrets unavailable."
    if pull_secrets.empty:
        return ("No image pull secret: neither the pods nor their service "
                "account name one.")
    names = sorted(set(pull_secrets["secret"]))
    missing = sorted(set(pull_secrets.loc[~pull_secrets["exists"].astype(bool),
                                          "secret"]))
    tail = f"; missing from the namespace: {', '.join(missing)}" if missing else \
        ", each present"
    return f"Image pull secret(s) named: {', '.join(names)}{tail}."


def no_pods_finding() -> Finding:
    """Zero API pods is never healthy: a wrong target, or nothing running."""
    return Finding("no-pods", Severity.WARNING,
                   "No pod matches the API's selector in this namespace: the "
                   "target is wrong, or the deployment has no pod at all.",
                   {}, step="Check pod status")
