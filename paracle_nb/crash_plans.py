"""Remediation for crashing API pods: the guide's fix for each of its causes.

Plans only, like every plan of :mod:`paracle_nb.actions`: each shows what
would change and the command, and changes nothing. Secret values never
appear; a Secret's value is named by its key and its fingerprint.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from paracle_nb import kube, kube_config
from paracle_nb.actions import Plan, Plans, _frame, plan_memory_limit
from paracle_nb.actions_kubernetes import (
    edits_plan,
    new_secret_value,
    restart_edit,
    secret_key_edit,
    secret_key_shown,
)
from paracle_nb.kube_patch import read_object
from paracle_nb.target import Target


def plan_crash_fixes(target: Target, verdict: Any, deployment: str, container: str,
                     new_memory_limit: str = "", new_database_url_file: str = ""
                     ) -> Plans:
    """Return the guide's fix for each crash cause in the verdict."""
    plans = Plans()
    oom = verdict.finding("oom-killed")
    if oom is not None:
        plans.append(plan_memory_limit(target, deployment, oom.evidence["container"],
                                       new_memory_limit))
    database = verdict.finding("database-connection-failure")
    if database is not None:
        plans.append(plan_database_url(target, database.evidence, deployment,
                                       new_database_url_file))
    env = verdict.finding("missing-env-var")
    if env is not None:
        plans.append(plan_missing_env(target, deployment, env.evidence["container"],
                                      env.evidence["missing"]))
    pull = verdict.finding("image-pull-error")
    if pull is not None:
        plans.append(plan_image_pull_secret(target, pull.evidence, deployment))
    return plans


def plan_database_url(target: Target, evidence: dict[str, Any], deployment: str,
                      new_url_file: str = "") -> Plan:
    """Plan correcting DATABASE_URL in its Secret, then restarting the pods.

    Shows the Secret's name and key and the value's fingerprint before and
    after (after only when ``new_url_file`` holds the corrected URL). With
    that file the plan can be applied: applying reads the Secret again
    and patches the one key only if it still has the fingerprint shown.
    """
    variable = evidence.get("attempt_variable") or "DATABASE_URL"
    secret = evidence.get("attempt_secret") or "paracle-secrets"
    key = evidence.get("attempt_key") or variable
    before = evidence.get("attempt_secret_fingerprint")
    shown_before = f"sha256:{before}" if before else "?"

    ns = shlex.quote(target.namespace)
    command = (
        f"read -rs NEW_{variable}   # paste the corrected URL; not echoed\n"
        f"kubectl patch secret {shlex.quote(secret)} -n {ns} --type merge \\\n"
        f"  -p \"{{\\\"stringData\\\": {{\\\"{key}\\\": \\\"$NEW_{variable}\\\"}}}}\"\n"
        f"kubectl rollout restart deployment/{shlex.quote(deployment)} -n {ns}")
    notes = ["Env vars from a Secret are read when a container starts: the pods "
             "must restart to get the new value.",
             "Keep the URL in the Secret; `kubectl set env ... DATABASE_URL=...` "
             "would write the password into the deployment.",
             f"Check the role first: {evidence.get('attempt_refusal') or 'see above'}"]
    if evidence.get("attempt_source") and not evidence.get("attempt_secret"):
        notes.append(f"The pods get {variable} from {evidence['attempt_source']}, "
                     f"not a Secret: move it into secret {secret} first.")
    title = f"correct {key} in secret {secret}"
    if not new_url_file:
        changes = _frame([
            {"object": f"secret/{secret}", "field": f"data.{key}",
             "before": shown_before, "after": "(the corrected URL)"},
            {"object": f"deployment/{deployment}", "field": "pods",
             "before": "started with the old value", "after": "restarted"},
        ], ["object", "field", "before", "after"])
        return Plan(title, changes, command, notes)

    edits = [secret_key_edit(secret, key, shown_before,
                             new_secret_value(value_file=new_url_file)),
             restart_edit(deployment, before="(started with the old value)")]

    def replan() -> Plan:
        live = read_object(target, "secret", secret)
        fresh = secret_key_shown(live, key).removeprefix("sha256:")
        return plan_database_url(target, {**evidence,
                                          "attempt_secret_fingerprint": fresh},
                                 deployment, new_url_file)

    return edits_plan(target, title, edits, command, notes,
                      kind="kubernetes.database_url", replan=replan,
                      rollout=deployment)


# Known shortcoming: this plan is applied by hand even when every missing
# variable is found in a referenced Secret or ConfigMap; set_env in
# actions_kubernetes takes valueFrom entries and could apply that case.
def plan_missing_env(target: Target, deployment: str, container: str,
                     missing: list[str]) -> Plan:
    """Plan adding missing env vars, from a Secret key of that name if any.

    Only key names are read; a name no referenced Secret or ConfigMap
    holds gets a placeholder value.
    """
    spec = kube_config.container_spec(kube.get_deployment(target, deployment),
                                      container)
    sources: dict[tuple[str, str], list[str]] = {}
    for kind, name in _referenced_objects(spec):
        keys = kube_config.key_names(target, kind, name) or []
        for variable in missing:
            if variable in keys and not any(variable in v for v in sources.values()):
                sources.setdefault((kind, name), []).append(variable)
    found = {v for names in sources.values() for v in names}

    rows = [{"object": f"deployment/{deployment}", "variable": variable,
             "before": "(unset)",
             "after": next((f"(from {k} {n}/{variable})"
                            for (k, n), vs in sources.items() if variable in vs),
                           "<value>")} for variable in missing]
    base = ["kubectl", "set", "env", f"deployment/{deployment}", "-c", container]
    lines = [shlex.join([*base, f"--from={kind}/{name}", f"--keys={','.join(vs)}",
                         "-n", target.namespace])
             for (kind, name), vs in sources.items()]
    placeholders = [v for v in missing if v not in found]
    if placeholders:
        lines.append(shlex.join([*base, *(f"{v}=<value>" for v in placeholders),
                                 "-n", target.namespace]))
    notes = ["Starts a rolling update of the deployment's pods.",
             "Secret values belong in a Secret: create the key there, then "
             "import it with --from=secret/<name>, never as a literal."]
    return Plan(f"add {', '.join(missing)} to {deployment}/{container}",
                _frame(rows, ["object", "variable", "before", "after"]),
                "\n".join(lines), notes)


def _referenced_objects(spec: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for entry in spec.get("env") or []:
        ref = entry.get("valueFrom") or {}
        for field, kind in (("secretKeyRef", "secret"),
                            ("configMapKeyRef", "configmap")):
            if field in ref and (kind, ref[field]["name"]) not in found:
                found.append((kind, ref[field]["name"]))
    for source in spec.get("envFrom") or []:
        kind = "secret" if "secretRef" in source else "configmap"
        name = (source.get("secretRef") or source.get("configMapRef") or {})["name"]
        if (kind, name) not in found:
            found.append((kind, name))
    # Secrets first: a missing variable is most often a credential.
    return sorted(found, key=lambda ref: ref[0] != "secret")


def plan_image_pull_secret(target: Target, evidence: dict[str, Any],
                           deployment: str) -> Plan:
    """Plan a docker-registry Secret and the service account that uses it."""
    account = evidence.get("service_account") or "default"
    referenced = list(evidence.get("image_pull_secrets") or [])
    missing = list(evidence.get("missing_pull_secrets") or [])
    secret = (missing or referenced or ["regcred"])[0]
    registry = evidence.get("registry") or "<registry>"
    after_refs = referenced if secret in referenced else [*referenced, secret]
    ns = target.namespace

    rows = [{"object": f"secret/{secret}", "field": "type",
             "before": "(missing)" if secret in missing or not referenced
             else "kubernetes.io/dockerconfigjson (credentials refused)",
             "after": f"kubernetes.io/dockerconfigjson for {registry}"}]
    if secret not in referenced:
        rows.append({"object": f"serviceaccount/{account}",
                     "field": "imagePullSecrets", "before": ", ".join(referenced)
                     or "(none)", "after": ", ".join(after_refs)})
    create = shlex.join(["kubectl", "create", "secret", "docker-registry", secret,
                         "-n", ns, f"--docker-server={registry}",
                         "--docker-username=<username>",
                         "--docker-password=<password>"])
    if secret not in missing and secret in referenced:
        create += " \\\n  --dry-run=client -o yaml | kubectl apply -f -"
    lines = [create]
    if secret not in referenced:
        patch = json.dumps({"imagePullSecrets": [{"name": n} for n in after_refs]})
        lines.append(shlex.join(["kubectl", "patch", "serviceaccount", account,
                                 "-n", ns, "-p", patch]))
    lines.append(shlex.join(["kubectl", "rollout", "restart",
                             f"deployment/{deployment}", "-n", ns]))
    notes = [f"Pods get service account {account}'s pull secrets when created: "
             "the restart re-creates them.",
             f"Service account {account} already names {secret}: creating the "
             "Secret is enough." if secret in referenced else
             f"The patch lists every pull secret {account} keeps.",
             "Type the password at a prompt or read it from a file; keep it out "
             "of shell history."]
    return Plan(f"image pull secret {secret} for {registry}",
                _frame(rows, ["object", "field", "before", "after"]),
                "\n".join(lines), notes)
