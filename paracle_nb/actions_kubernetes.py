"""Kubernetes remediation that can be applied: the guide's fixes, as patches.

Each function reads the named object of the target's namespace, plans the
change (before and after, per field) and returns a :class:`Plan` whose
``apply()`` patches that object only, re-checks it first, and verifies the
result: every planned field, and the deployment's rollout within
``rollout_timeout``. Planning never writes. A Secret's value appears only as
its fingerprint, in the plan, the audit trail and the findings alike.

>>> plan = set_image(target, "paracle-api", "api",  # doctest: +SKIP
...                  "registry.example.invalid/paracle-api:v1.0.4")
>>> plan.apply()  # asks for the plan id
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shlex
from collections.abc import Callable
from typing import Any

from paracle_nb import kube_patch
from paracle_nb.actions import Plan, _frame, _kubectl_patch, json_text
from paracle_nb.errors import ParameterError
from paracle_nb.kube_patch import (
    ABSENT,
    APPLY_TIME,
    MERGE,
    REMOVED,
    Edit,
    container_of,
    read_object,
    template_patch,
)
from paracle_nb.secrets import SECRET_ENV_NAME, Secret, fingerprint
from paracle_nb.target import Target
from paracle_nb.units import parse_duration

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
ROLLOUT_TIMEOUT = "5min"
COLUMNS = ["object", "field", "before", "after"]

Obj = dict[str, Any]


def edits_plan(target: Target, title: str, edits: list[Edit], command: str,
               notes: list[str], *, kind: str, replan: Callable[[], Plan],
               rollout: str | None = None,
               rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Return the applicable plan of ``edits`` (see :mod:`paracle_nb.kube_patch`).

    ``rollout`` names the deployment whose rollout the verification waits
    for, at most ``rollout_timeout``.
    """
    timeout = parse_duration(rollout_timeout)
    rows = [row for edit in edits for row in edit.rows()]

    def execute(plan: Plan) -> dict[str, Any]:
        return kube_patch.execute(target, edits)

    def verify(plan: Plan, applied: dict[str, Any]) -> Any:
        return kube_patch.verify(target, edits, applied, rollout=rollout,
                                 rollout_timeout=timeout)

    return Plan(title, _frame(rows, COLUMNS), command, notes, kind=kind,
                target=target, executor=execute, verifier=verify, replan=replan,
                key_columns=COLUMNS, needs=kube_patch.needs(edits))


def _ns(target: Target) -> str:
    return target.namespace


# -- resources, image, env ----------------------------------------------------

def raise_memory_limit(target: Target, deployment: str, container: str,
                       new_limit: str = "", *,
                       rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan a container's new memory limit (default: double today's)."""
    from paracle_nb.units import parse_quantity

    field = f"containers[{container}].resources.limits.memory"

    def read(obj: Obj) -> dict[str, Any]:
        limits = (container_of(obj, container).get("resources") or {}).get(
            "limits") or {}
        return {field: limits.get("memory", ABSENT)}

    live = read_object(target, "deployment", deployment)
    before = read(live)
    if not new_limit:
        doubled = 2 * (parse_quantity(before[field]) or 256 * 2**20)
        new_limit = f"{int(doubled // 2**20)}Mi"
    patch = template_patch({"containers": [
        {"name": container, "resources": {"limits": {"memory": new_limit}}}]})
    edit = Edit("deployment", deployment, read, before, {field: new_limit},
                lambda _: patch)
    command = shlex.join(["kubectl", "set", "resources", f"deployment/{deployment}",
                          "-c", container, f"--limits=memory={new_limit}",
                          "-n", _ns(target)])
    notes = ["Starts a rolling update of every pod of the deployment.",
             "Check node allocatable memory first: pods may go Pending."]
    return edits_plan(target, f"raise memory limit of {deployment}/{container}",
                      [edit], command, notes, kind="kubernetes.memory_limit",
                      replan=lambda: raise_memory_limit(
                          target, deployment, container, new_limit,
                          rollout_timeout=rollout_timeout),
                      rollout=deployment, rollout_timeout=rollout_timeout)


def set_resource_request(target: Target, deployment: str, container: str,
                         resource: str, value: str, *,
                         rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan a container's new request of ``cpu`` or ``memory``."""
    field = f"containers[{container}].resources.requests.{resource}"

    def read(obj: Obj) -> dict[str, Any]:
        requests = (container_of(obj, container).get("resources") or {}).get(
            "requests") or {}
        return {field: requests.get(resource, ABSENT)}

    live = read_object(target, "deployment", deployment)
    patch = template_patch({"containers": [
        {"name": container, "resources": {"requests": {resource: value}}}]})
    edit = Edit("deployment", deployment, read, read(live), {field: value},
                lambda _: patch)
    command = shlex.join(["kubectl", "set", "resources", f"deployment/{deployment}",
                          "-c", container, f"--requests={resource}={value}",
                          "-n", _ns(target)])
    return edits_plan(target, f"set {resource} request of {deployment}/{container}",
                      [edit], command, ["Starts a rolling update of the "
                                        "deployment's pods."],
                      kind="kubernetes.resource_request",
                      replan=lambda: set_resource_request(
                          target, deployment, container, resource, value,
                          rollout_timeout=rollout_timeout),
                      rollout=deployment, rollout_timeout=rollout_timeout)


def set_image(target: Target, deployment: str, container: str, image: str, *,
              rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan running ``image`` in a deployment's container."""
    if not image or image.endswith(":<patched-tag>"):
        raise ParameterError(f"set_image needs a full image reference, got "
                             f"{image!r}")
    field = f"containers[{container}].image"

    def read(obj: Obj) -> dict[str, Any]:
        return {field: container_of(obj, container).get("image", ABSENT)}

    live = read_object(target, "deployment", deployment)
    patch = template_patch({"containers": [{"name": container, "image": image}]})
    edit = Edit("deployment", deployment, read, read(live), {field: image},
                lambda _: patch)
    command = shlex.join(["kubectl", "set", "image", f"deployment/{deployment}",
                          f"{container}={image}", "-n", _ns(target)])
    notes = ["Starts a rolling update; roll back with: kubectl rollout undo "
             f"deployment/{deployment} -n {_ns(target)}"]
    return edits_plan(target, f"set image of {deployment}/{container}", [edit],
                      command, notes, kind="kubernetes.image",
                      replan=lambda: set_image(target, deployment, container, image,
                                               rollout_timeout=rollout_timeout),
                      rollout=deployment, rollout_timeout=rollout_timeout)


def env_shown(name: str, entry: Obj | None) -> str:
    """Return an env entry as a plan shows it: references, never secret values."""
    if entry is None:
        return "(unset)"
    if "value" in entry:
        value = str(entry["value"])
        return f"sha256:{fingerprint(value)}" if SECRET_ENV_NAME.search(name) \
            else value
    ref = entry.get("valueFrom") or {}
    for kind, key in (("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")):
        if kind in ref:
            return f"(from {key} {ref[kind].get('name')}/{ref[kind].get('key')})"
    return "(from a reference)"


EnvValue = str | dict[str, Any] | None


def set_env(target: Target, deployment: str, container: str,
            changes: dict[str, EnvValue], *, title: str = "",
            kind: str = "kubernetes.env", command: str = "",
            rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan setting (or, with None, removing) env vars of a container.

    A value is a literal, or a ``valueFrom`` mapping (a Secret or ConfigMap
    key). A literal for a variable named like a credential is shown as its
    fingerprint; such values belong in a Secret, and the plan says so.
    """
    if not changes:
        raise ParameterError("set_env needs at least one variable to change")

    def field(name: str) -> str:
        return f"containers[{container}].env[{name}]"

    def read(obj: Obj) -> dict[str, Any]:
        env = {e["name"]: e for e in container_of(obj, container).get("env") or []}
        return {field(n): env_shown(n, env.get(n)) for n in changes}

    live = read_object(target, "deployment", deployment)
    entries = [_env_entry(n, v) for n, v in changes.items()]
    after = {field(e["name"]): REMOVED if "$patch" in e else env_shown(e["name"], e)
             for e in entries}
    patch = template_patch({"containers": [{"name": container, "env": entries}]})
    edit = Edit("deployment", deployment, read, read(live), after, lambda _: patch)

    notes = ["Starts a rolling update of the deployment's pods."]
    if any(SECRET_ENV_NAME.search(n) for n, v in changes.items()
           if isinstance(v, str)):
        notes.append("A credential set as a literal is readable by anyone who "
                     "can read the deployment: keep it in a Secret instead.")
    return edits_plan(target, title or f"set env on {deployment}/{container}",
                      [edit], command or _set_env_command(target, deployment,
                                                          container, changes),
                      notes, kind=kind,
                      replan=lambda: set_env(target, deployment, container, changes,
                                             title=title, kind=kind,
                                             command=command,
                                             rollout_timeout=rollout_timeout),
                      rollout=deployment, rollout_timeout=rollout_timeout)


def _env_entry(name: str, value: EnvValue) -> Obj:
    if value is None:
        return {"name": name, "$patch": "delete"}
    if isinstance(value, dict):
        return {"name": name, "valueFrom": value}
    return {"name": name, "value": str(value)}


def _set_env_command(target: Target, deployment: str, container: str,
                     changes: dict[str, EnvValue]) -> str:
    """Return ``kubectl set env``; a credential's literal is left out."""
    args = []
    for name, value in changes.items():
        if value is None:
            args.append(f"{name}-")
        elif isinstance(value, dict):
            args.append(f"{name}={env_shown(name, {'valueFrom': value})}")
        else:
            shown = "<value>" if SECRET_ENV_NAME.search(name) else value
            args.append(f"{name}={shown}")
    return shlex.join(["kubectl", "set", "env", f"deployment/{deployment}",
                       "-c", container, *args, "-n", _ns(target)])


# -- restart, scale -----------------------------------------------------------

def restart_edit(deployment: str, live: Obj | None = None, *,
                 before: str = ABSENT) -> Edit:
    """Return the edit of ``kubectl rollout restart``: a pod-template annotation.

    ``before`` is shown when the deployment was not read (``live``).
    """
    field = f"template.annotations[{RESTARTED_AT}]"

    def read(obj: Obj) -> dict[str, Any]:
        annotations = obj["spec"]["template"].get("metadata", {}).get(
            "annotations") or {}
        return {field: annotations.get(RESTARTED_AT, ABSENT)}

    def patch(_: Obj) -> Obj:
        # Finer than kubectl's seconds: two restarts in one second still differ.
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
        return template_patch(annotations={RESTARTED_AT: now})

    shown = read(live) if live is not None else {field: before}
    return Edit("deployment", deployment, read, shown, {field: APPLY_TIME}, patch)


def rollout_restart(target: Target, deployment: str, *,
                    rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan ``kubectl rollout restart``: a new pod-template annotation."""
    live = read_object(target, "deployment", deployment)
    command = shlex.join(["kubectl", "rollout", "restart", f"deployment/{deployment}",
                          "-n", _ns(target)])
    notes = ["Replaces every pod, a few at a time, as the rolling-update "
             "strategy allows; the pods read Secrets and ConfigMaps anew."]
    return edits_plan(target, f"restart the pods of {deployment}",
                      [restart_edit(deployment, live)], command, notes,
                      kind="kubernetes.restart",
                      replan=lambda: rollout_restart(
                          target, deployment, rollout_timeout=rollout_timeout),
                      rollout=deployment, rollout_timeout=rollout_timeout)


def scale_replicas(target: Target, deployment: str, replicas: int, *,
                   rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan setting a deployment's replicas through its scale subresource."""
    if isinstance(replicas, bool) or int(replicas) < 0:
        raise ParameterError(f"replicas must be 0 or more, got {replicas!r}")

    def read(obj: Obj) -> dict[str, Any]:
        return {"replicas": int((obj.get("spec") or {}).get("replicas", 0))}

    live = read_object(target, "deployment/scale", deployment)
    edit = Edit("deployment/scale", deployment, read, read(live),
                {"replicas": int(replicas)},
                lambda _: {"spec": {"replicas": int(replicas)}}, MERGE)
    command = shlex.join(["kubectl", "scale", f"deployment/{deployment}",
                          f"--replicas={int(replicas)}", "-n", _ns(target)])
    notes = ["Each replica opens its own database pool: check that replicas x "
             "(DB_POOL_SIZE + DB_MAX_OVERFLOW) stays under max_connections.",
             "New pods need room on the nodes; check allocatable first.",
             "A HorizontalPodAutoscaler, if any, may scale it back."]
    before = edit.before["replicas"]
    return edits_plan(target, f"scale {deployment} from {before} to "
                              f"{int(replicas)} replicas",
                      [edit], command, notes, kind="kubernetes.scale",
                      replan=lambda: scale_replicas(
                          target, deployment, replicas,
                          rollout_timeout=rollout_timeout),
                      rollout=deployment, rollout_timeout=rollout_timeout)


# -- Secret key, then restart -------------------------------------------------

def new_secret_value(value_file: str = "", value_env: str = "") -> Secret:
    """Return the new value from a file or an environment variable, never shown."""
    if bool(value_file) == bool(value_env):
        raise ParameterError("give the new value in exactly one of a file "
                             "(value_file) or an environment variable (value_env)")
    if value_file:
        secret = Secret.from_file(value_file)
        secret.reveal()  # a missing file is a parameter error now, not at apply
        return secret
    if not os.environ.get(value_env, "").strip():
        raise ParameterError(f"environment variable {value_env} is not set or empty")
    return Secret(os.environ[value_env].strip())


def secret_key_shown(secret: Obj, key: str) -> str:
    """Return a Secret key's value as a plan shows it: its fingerprint."""
    data = secret.get("data") or {}
    if key not in data:
        return ABSENT
    decoded = base64.b64decode(data[key]).decode(errors="replace").strip()
    return f"sha256:{fingerprint(decoded)}"


def secret_key_edit(secret: str, key: str, before: str, value: Secret) -> Edit:
    """Return the edit putting ``value`` in one key of a Secret (merge patch)."""
    field = f"data.{key}"

    def patch(_: Obj) -> Obj:
        encoded = base64.b64encode(value.reveal().encode()).decode()
        return {"data": {key: encoded}}

    return Edit("secret", secret, lambda obj: {field: secret_key_shown(obj, key)},
                {field: before}, {field: f"sha256:{value.fingerprint}"}, patch,
                MERGE)


def update_secret_key(target: Target, secret: str, key: str, deployment: str, *,
                      value_file: str = "", value_env: str = "",
                      rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan putting a new value in one key of a Secret, then restarting the pods.

    The new value comes from ``value_file`` or the environment variable
    named by ``value_env``; the plan shows its fingerprint only.
    """
    value = new_secret_value(value_file, value_env)
    live = read_object(target, "secret", secret)
    secret_edit = secret_key_edit(secret, key, secret_key_shown(live, key), value)
    edits = [secret_edit]
    if secret_edit.rows():  # the same value again needs no restart either
        edits.append(restart_edit(deployment,
                                  read_object(target, "deployment", deployment)))

    ns = shlex.quote(_ns(target))
    source = (f"tr -d '\\n' < {shlex.quote(value_file)}" if value_file
              else f"printf %s \"${value_env}\"")
    command = "\n".join([
        "umask 077; patch_file=$(mktemp)",
        f"printf '{{\"data\":{{\"{key}\":\"%s\"}}}}' \"$({source} | base64 -w0)\" "
        "> \"$patch_file\"",
        f"kubectl patch secret {shlex.quote(secret)} -n {ns} --type=merge "
        "--patch-file=\"$patch_file\"",
        "rm -f \"$patch_file\"",
        f"kubectl rollout restart deployment/{shlex.quote(deployment)} -n {ns}"])
    notes = [f"The new value of {key} is shown by its fingerprint only "
             f"(sha256:{value.fingerprint}); compare it with the one you meant.",
             "Env vars from a Secret are read when a container starts: the "
             "restart makes the pods read the new value."]
    return edits_plan(target, f"put a new {key} in secret/{secret}, then restart "
                              f"{deployment}", edits, command, notes,
                      kind="kubernetes.secret_key",
                      replan=lambda: update_secret_key(
                          target, secret, key, deployment, value_file=value_file,
                          value_env=value_env, rollout_timeout=rollout_timeout),
                      rollout=deployment if len(edits) > 1 else None,
                      rollout_timeout=rollout_timeout)


# -- scheduling ---------------------------------------------------------------

def patch_node_selector(target: Target, deployment: str,
                        changes: dict[str, str | None], *,
                        rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan setting (or, with None, removing) node selector entries."""

    def read(obj: Obj) -> dict[str, Any]:
        selector = obj["spec"]["template"]["spec"].get("nodeSelector") or {}
        return {f"nodeSelector.{k}": selector.get(k, ABSENT) for k in changes}

    live = read_object(target, "deployment", deployment)
    after = {f"nodeSelector.{k}": REMOVED if v is None else v
             for k, v in changes.items()}
    body = template_patch({"nodeSelector": dict(changes)})
    edit = Edit("deployment", deployment, read, read(live), after, lambda _: body)
    notes = ["Or, if the pods really need such nodes, label the right nodes: "
             "kubectl label node <node> <key>=<value>.",
             "Required node affinity is not patched here: edit it by hand."]
    command = (_kubectl_patch("deployment", deployment, _ns(target), body,
                              "strategic") if edit.rows()
               else "# nothing in nodeSelector to change")
    return edits_plan(target, f"patch node selector of {deployment}", [edit],
                      command, notes, kind="kubernetes.node_selector",
                      replan=lambda: patch_node_selector(
                          target, deployment, changes,
                          rollout_timeout=rollout_timeout),
                      rollout=deployment, rollout_timeout=rollout_timeout)


def add_toleration(target: Target, deployment: str, toleration: dict[str, Any], *,
                   rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan adding one toleration to a deployment's pod template."""
    shown = json_text(toleration)
    field = f"tolerations[{toleration.get('key')}:{toleration.get('effect')}]"

    def read(obj: Obj) -> dict[str, Any]:
        tolerations = obj["spec"]["template"]["spec"].get("tolerations") or []
        same = [t for t in tolerations if t.get("key") == toleration.get("key")
                and t.get("effect") == toleration.get("effect")]
        return {field: json_text(same[0]) if same else ABSENT}

    def patch(obj: Obj) -> Obj:
        # Tolerations are replaced as a whole list: keep the ones there now.
        kept = obj["spec"]["template"]["spec"].get("tolerations") or []
        return template_patch({"tolerations": [*kept, toleration]})

    live = read_object(target, "deployment", deployment)
    edit = Edit("deployment", deployment, read, read(live), {field: shown}, patch)
    command = _kubectl_patch("deployment", deployment, _ns(target),
                             patch(live), "strategic")
    notes = ["A taint is usually there on purpose: tolerate it only if the API "
             "belongs on those nodes."]
    return edits_plan(target, f"tolerate {field[12:-1]} in {deployment}", [edit],
                      command, notes, kind="kubernetes.toleration",
                      replan=lambda: add_toleration(
                          target, deployment, toleration,
                          rollout_timeout=rollout_timeout),
                      rollout=deployment, rollout_timeout=rollout_timeout)


def add_image_pull_secret(target: Target, service_account: str, secret: str,
                          deployment: str, *,
                          rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan naming a pull secret on a service account, then restarting the pods.

    The Secret itself (registry credentials) is created by hand: its
    password never passes through a runbook.
    """

    def names(obj: Obj) -> list[str]:
        return [ref.get("name", "") for ref in obj.get("imagePullSecrets") or []]

    def read(obj: Obj) -> dict[str, Any]:
        return {"imagePullSecrets": ", ".join(names(obj)) or ABSENT}

    def patch(obj: Obj) -> Obj:
        # A merge patch replaces the list: keep every pull secret named now.
        kept = [n for n in names(obj) if n != secret]
        return {"imagePullSecrets": [{"name": n} for n in [*kept, secret]]}

    live = read_object(target, "serviceaccount", service_account)
    after = ", ".join(dict.fromkeys([*names(live), secret]))
    edits = [Edit("serviceaccount", service_account, read, read(live),
                  {"imagePullSecrets": after}, patch, MERGE)]
    if edits[0].rows():
        edits.append(restart_edit(deployment,
                                  read_object(target, "deployment", deployment)))
    ns = _ns(target)
    command = "\n".join([
        _kubectl_patch("serviceaccount", service_account, ns, patch(live)),
        shlex.join(["kubectl", "rollout", "restart", f"deployment/{deployment}",
                    "-n", ns])])
    notes = [f"Pods get service account {service_account}'s pull secrets when "
             "created: the restart re-creates them.",
             f"Create secret {secret} first (kubectl create secret "
             "docker-registry), typing the password at a prompt."]
    return edits_plan(target, f"pull secret {secret} on serviceaccount/"
                              f"{service_account}", edits, command, notes,
                      kind="kubernetes.image_pull_secret",
                      replan=lambda: add_image_pull_secret(
                          target, service_account, secret, deployment,
                          rollout_timeout=rollout_timeout),
                      rollout=deployment if len(edits) > 1 else None,
                      rollout_timeout=rollout_timeout)


# -- LLM providers: deployment env --------------------------------------------

# Known shortcoming: "before" is the container's own env; a value the API
# takes from its ConfigMap (envFrom) shows as unset, and the env var set
# here overrides it.
def switch_llm_provider(target: Target, deployment: str, container: str,
                        provider: str, *,
                        rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan switching the API's default LLM provider (DEFAULT_LLM_PROVIDER)."""
    return set_env(target, deployment, container,
                   {"DEFAULT_LLM_PROVIDER": _provider(provider)},
                   title=f"switch the default LLM provider of {deployment} to "
                         f"{provider}", kind="llm.default_provider",
                   rollout_timeout=rollout_timeout)


def set_fallback_providers(target: Target, deployment: str, container: str,
                           providers: list[str] | str, *,
                           rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan the providers the API falls back to, in order (FALLBACK_PROVIDERS)."""
    items = providers.split(",") if isinstance(providers, str) else providers
    chosen = ",".join(_provider(p) for p in items if p.strip())
    return set_env(target, deployment, container, {"FALLBACK_PROVIDERS": chosen},
                   title=f"set the fallback LLM providers of {deployment}",
                   kind="llm.fallback_providers", rollout_timeout=rollout_timeout)


def set_llm_rate_limit(target: Target, deployment: str, container: str,
                       rate_limit: str | int, *,
                       rollout_timeout: str = ROLLOUT_TIMEOUT) -> Plan:
    """Plan the API's own limit of LLM requests per minute (LLM_RATE_LIMIT)."""
    if not str(rate_limit).isdigit() or int(rate_limit) <= 0:
        raise ParameterError(f"the LLM rate limit must be a whole number above "
                             f"0, got {rate_limit!r}")
    return set_env(target, deployment, container,
                   {"LLM_RATE_LIMIT": str(int(rate_limit))},
                   title=f"limit {deployment} to {int(rate_limit)} LLM requests "
                         "per minute", kind="llm.rate_limit",
                   rollout_timeout=rollout_timeout)


def _provider(name: str) -> str:
    name = name.strip().lower()
    if not name.replace("-", "").isalnum():
        raise ParameterError(f"{name!r} is not an LLM provider name")
    return name
