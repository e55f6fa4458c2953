"""Remediation for 500 errors and LLM provider errors.

For a 500: a patched image, an image rebuilt with the missing dependency
(the guide's docker commands, shown only), or the ConfigMap key fixed and
the pods restarted. For LLM errors: ``LLM_RATE_LIMIT``, a healthy
``DEFAULT_LLM_PROVIDER`` and ``FALLBACK_PROVIDERS``, and a new API key put
in the Secret from a file or an environment variable, or from a prompt,
never from the command line.

Plans whose change is a patch (image, env, ConfigMap key, Secret key) can
be applied (:mod:`paracle_nb.actions_kubernetes`); a plan that still holds
a placeholder, or a rebuild, is applied by hand.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from paracle_nb import kube
from paracle_nb.actions import Plan, Plans, _frame, plan_set_env
from paracle_nb.actions_kubernetes import (
    edits_plan,
    restart_edit,
    set_image,
    update_secret_key,
)
from paracle_nb.kube_patch import ABSENT, MERGE, Edit, read_object
from paracle_nb.target import Target

PLACEHOLDER = "<a valid value>"
_TAG = re.compile(r"^(?P<repo>.+?):(?P<prefix>v?)(?P<version>\d+(?:\.\d+)*)$")


# -- 500 Internal Server Errors -------------------------------------------------

def plan_error_fixes(target: Target, verdict: Any, *, deployment: str,
                     container: str, patched_image: str = "",
                     config_value: str = "") -> Plans:
    """Return the guide's fix for each 500-error cause in the verdict."""
    plans = Plans()
    finding = verdict.finding("missing-dependency")
    if finding is not None:
        plans.append(plan_rebuild_image(target, deployment, container,
                                        finding.evidence.get("module"),
                                        patched_image))
    finding = verdict.finding("configuration-error")
    if finding is not None:
        plans.append(plan_fix_setting(target, finding.evidence, deployment,
                                      container, config_value))
    if verdict.finding("unhandled-exception") is not None:
        plans.append(plan_set_image(target, deployment, container, patched_image))
    return plans


def current_image(target: Target, deployment: str, container: str) -> str:
    """Return the image a deployment's container runs."""
    spec = kube.get_deployment(target, deployment)
    containers = spec["spec"]["template"]["spec"]["containers"]
    main = next((c for c in containers if c["name"] == container), containers[0])
    return str(main.get("image", ""))


def next_patch_image(image: str) -> str:
    """Return the image with its version's last number raised by one.

    >>> next_patch_image("registry.example.invalid/paracle-api:v1.0.3")
    'registry.example.invalid/paracle-api:v1.0.4'
    """
    match = _TAG.match(image)
    if not match:
        return f"{image.split(':')[0]}:<patched-tag>"
    numbers = match["version"].split(".")
    numbers[-1] = str(int(numbers[-1]) + 1)
    return f"{match['repo']}:{match['prefix']}{'.'.join(numbers)}"


def plan_set_image(target: Target, deployment: str, container: str,
                   image: str = "") -> Plan:
    """Plan deploying a patched image (default: the next patch version)."""
    before = current_image(target, deployment, container)
    after = image or next_patch_image(before)
    notes = ["Only once the patched image fixes the traceback's innermost frame "
             "(or handles the error there); check it on staging first.",
             "Starts a rolling update; roll back with: kubectl rollout undo "
             f"deployment/{deployment} -n {target.namespace}"]
    if not after.endswith(":<patched-tag>"):
        plan = set_image(target, deployment, container, after)
        plan.notes = notes
        return plan
    changes = _frame([{"object": f"deployment/{deployment}",
                       "field": f"containers[{container}].image",
                       "before": before, "after": after}],
                     ["object", "field", "before", "after"])
    command = _set_image_command(target, deployment, container, after)
    return Plan(f"deploy a patched image to {deployment}/{container}", changes,
                command, notes)


def plan_rebuild_image(target: Target, deployment: str, container: str,
                       module: str | None, image: str = "") -> Plan:
    """Plan the guide's rebuild with the missing dependency, then the rollout.

    The docker commands are shown for the build machine; nothing is built.
    """
    before = current_image(target, deployment, container)
    after = image or next_patch_image(before)
    package = module.split(".")[0] if module else "<the missing package>"
    changes = _frame([{"object": "image", "field": "requirements",
                       "before": f"{package} missing", "after": f"{package} added"},
                      {"object": f"deployment/{deployment}",
                       "field": f"containers[{container}].image",
                       "before": before, "after": after}],
                     ["object", "field", "before", "after"])
    command = "\n".join([
        f"# Add {package} to the API's requirements, then on the build machine:",
        shlex.join(["docker", "build", "--tag", after, "."]),
        shlex.join(["docker", "push", after]),
        _set_image_command(target, deployment, container, after)])
    notes = [f"The import of {package} fails in the running image: the fix is "
             "in the image, not the cluster.",
             "Check the import in the new image before the rollout: docker run "
             f"--rm {shlex.quote(after)} python -c 'import {package}'"]
    return Plan(f"rebuild the image with {package}", changes, command, notes)


def _set_image_command(target: Target, deployment: str, container: str,
                       image: str) -> str:
    return shlex.join(["kubectl", "set", "image", f"deployment/{deployment}",
                       f"{container}={image}", "-n", target.namespace])


def plan_fix_setting(target: Target, evidence: dict[str, Any], deployment: str,
                     container: str, new_value: str = "") -> Plan:
    """Plan fixing the setting a config error points at, then a restart.

    A ConfigMap key is patched (pods read it only at start, hence the
    restart); a literal env var is set on the deployment.
    """
    key, source = evidence["key"], evidence.get("source", "")
    after = new_value or PLACEHOLDER
    if source.startswith("deployment/"):
        plan = plan_set_env(target, deployment, container, {key: after})
        if not new_value:
            plan.executor = None  # a placeholder is never applied
            plan.notes.append(f"Replace {PLACEHOLDER} with the right value "
                              "before running the command.")
        return plan

    configmap = source.split("/", 1)[1] if source.startswith("configmap/") \
        else "paracle-config"
    patch = json.dumps({"data": {key: after}}, separators=(",", ":"))
    command = "\n".join([
        shlex.join(["kubectl", "patch", "configmap", configmap, "-n",
                    target.namespace, "--type=merge", "-p", patch]),
        shlex.join(["kubectl", "rollout", "restart", f"deployment/{deployment}",
                    "-n", target.namespace])])
    notes = [f"The API failed with: {evidence.get('message', '')}",
             "The restart makes the pods read the fixed ConfigMap; it is a "
             "rolling restart."]
    title = f"fix {key} in configmap/{configmap}, then restart {deployment}"
    if new_value:
        return _configmap_key_plan(target, evidence, configmap, deployment,
                                   new_value, title, command, notes)
    notes.insert(0, f"Replace {PLACEHOLDER} with the right value for {key} "
                    "before running the command.")
    changes = _frame([{"object": f"configmap/{configmap}", "key": key,
                       "before": evidence.get("value", "(missing)"),
                       "after": after}], ["object", "key", "before", "after"])
    return Plan(title, changes, command, notes)


def _configmap_key_plan(target: Target, evidence: dict[str, Any], configmap: str,
                        deployment: str, value: str, title: str, command: str,
                        notes: list[str]) -> Plan:
    """Return the applicable plan: one ConfigMap key set, then a restart."""
    key = evidence["key"]
    field = f"data.{key}"

    def read(obj: dict[str, Any]) -> dict[str, Any]:
        return {field: (obj.get("data") or {}).get(key, ABSENT)}

    def replan() -> Plan:
        live = read(read_object(target, "configmap", configmap))[field]
        return plan_fix_setting(target, {**evidence, "value": live}, deployment,
                                "", value)

    shown = evidence.get("value")
    edits = [Edit("configmap", configmap, read, {field: ABSENT if shown is None
                                                 else shown},
                  {field: value}, lambda _: {"data": {key: value}}, MERGE),
             restart_edit(deployment, before="(started with the old value)")]
    return edits_plan(target, title, edits, command, notes,
                      kind="kubernetes.configmap_key", replan=replan,
                      rollout=deployment)


# -- OpenAI/Anthropic API errors ------------------------------------------------

LLM_CAUSES = ("llm-rate-limited", "llm-invalid-key", "llm-provider-outage")


def plan_llm_fixes(target: Target, verdict: Any, settings: Any, *,
                   deployment: str, container: str, rate_limit: str = "50",
                   secret: str = "paracle-secrets", new_key_file: str = "",
                   new_key_env: str = "") -> Plans:
    """Return the guide's fixes for the LLM causes in the verdict.

    One env plan (a single rolling update) gathers ``LLM_RATE_LIMIT``, the
    switch of ``DEFAULT_LLM_PROVIDER`` to a provider that shows no errors
    and ``FALLBACK_PROVIDERS``; a key plan per provider with an invalid key,
    applicable when ``new_key_file`` or ``new_key_env`` holds the new key.
    """
    plans = Plans()
    findings = [f for f in verdict.ordered() if f.cause in LLM_CAUSES]
    if not findings:
        return plans
    env = llm_env_changes(findings, settings if isinstance(settings, dict)
                          else {}, rate_limit)
    if env:
        plans.append(plan_set_env(target, deployment, container, env))
    for finding in findings:
        if finding.cause == "llm-invalid-key":
            plans.append(plan_update_api_key(
                target, finding.evidence, secret, deployment,
                new_key_file=new_key_file, new_key_env=new_key_env))
    return plans


def llm_env_changes(findings: list[Any], settings: dict[str, Any],
                    rate_limit: str) -> dict[str, str | None]:
    """Return the env changes for the failing providers (see plan_llm_fixes)."""
    failing = {f.evidence["provider"] for f in findings}
    healthy: list[str] = []
    for finding in findings:
        healthy += [p for p in finding.evidence.get("healthy_providers") or []
                    if p not in failing and p not in healthy]
    causes = {f.cause for f in findings}
    default = settings.get("DEFAULT_LLM_PROVIDER")

    changes: dict[str, str | None] = {}
    if "llm-rate-limited" in causes and rate_limit:
        changes["LLM_RATE_LIMIT"] = rate_limit
    if healthy and (default in failing or default is None):
        changes["DEFAULT_LLM_PROVIDER"] = healthy[0]
    if healthy and causes & {"llm-provider-outage", "llm-rate-limited"}:
        known = (settings.get("FALLBACK_PROVIDERS") or "").split(",")
        others = [p.strip() for p in known if p.strip() and p.strip() not in
                  healthy and p.strip() not in failing]
        changes["FALLBACK_PROVIDERS"] = ",".join([*healthy, *others,
                                                  *sorted(failing)])
    return changes


def plan_update_api_key(target: Target, evidence: dict[str, Any], secret: str,
                        deployment: str, *, new_key_file: str = "",
                        new_key_env: str = "") -> Plan:
    """Plan putting a new API key in the Secret, then restarting the API.

    With ``new_key_file`` or ``new_key_env`` (a file, or the name of an
    environment variable, holding the new key) the plan can be applied and
    shows the new key's fingerprint. Without, the key is read at a prompt
    into a patch file only the user can read. Either way it never appears
    on a command line, in the shell history or here.
    """
    key = evidence.get("secret_key") or "<KEY_NAME>"
    if (new_key_file or new_key_env) and evidence.get("secret_key"):
        return update_secret_key(target, secret, key, deployment,
                                 value_file=new_key_file, value_env=new_key_env)
    changes = _frame([{"object": f"secret/{secret}", "key": key,
                       "before": f"sha256:{evidence.get('key_fingerprint')}",
                       "after": "(the new key, read at the prompt)"}],
                     ["object", "key", "before", "after"])
    ns = target.namespace
    command = "\n".join([
        "umask 077; patch_file=$(mktemp)",
        f"read -rsp {shlex.quote(f'New {key}: ')} new_key; echo",
        f"printf '{{\"data\":{{\"{key}\":\"%s\"}}}}' "
        "\"$(printf %s \"$new_key\" | base64 -w0)\" > \"$patch_file\"; unset new_key",
        shlex.join(["kubectl", "patch", "secret", secret, "-n", ns,
                    "--type=merge"]) + ' --patch-file="$patch_file"',
        'rm -f "$patch_file"',
        shlex.join(["kubectl", "rollout", "restart", f"deployment/{deployment}",
                    "-n", ns])])
    notes = [f"The provider refuses the key the Secret holds for "
             f"{evidence.get('provider')} (sha256:{evidence.get('key_fingerprint')}"
             "): it was revoked or mistyped.",
             "Create the new key in the provider's console first; compare its "
             "fingerprint after the patch, never its value.",
             "The restart makes the pods read the new Secret."]
    return Plan(f"put a new {key} in secret/{secret}, then restart {deployment}",
                changes, command, notes)

