"""Remediation, planned first: what exactly would change, before and after.

A plan reads the target and describes the change; it never writes. Each
plan carries the command an engineer would run, scoped to exactly the
objects, sessions or keys it lists.
"""

from __future__ import annotations

import html
import re
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from paracle_nb import kube
from paracle_nb.target import Target
from paracle_nb.units import parse_quantity

if TYPE_CHECKING:
    import pandas as pd

    from paracle_nb.remediate import Applied, Executor, Verifier


class Plan:
    """A described change: the rows it touches, the command, and caveats.

    A plan that can be applied from the runbook also carries an executor
    (what to do), a verifier (how to check it worked) and a replan
    function (re-read the target to see whether the plan still holds).
    Its :attr:`id` is a digest of the target, the kind of action and the
    identifying columns of its rows: the same change gives the same id in
    another run, a different change a different id.
    """

    def __init__(self, title: str, changes: pd.DataFrame, command: str,
                 notes: list[str] | None = None, *, kind: str = "manual",
                 target: Target | None = None,
                 executor: Executor | None = None,
                 verifier: Verifier | None = None,
                 replan: Callable[[], Plan] | None = None,
                 key_columns: list[str] | None = None,
                 needs: str = "", second_confirmation: str | None = None) -> None:
        self.title = title
        self.changes = changes
        self.command = command
        self.notes = notes or []
        self.kind = kind
        self.target = target
        self.executor = executor
        self.verifier = verifier
        self.replan = replan
        self.key_columns = key_columns
        self.needs = needs
        self.second_confirmation = second_confirmation

    @property
    def empty(self) -> bool:
        return self.changes.empty

    @property
    def id(self) -> str:
        """A short digest of what this plan changes and where."""
        import hashlib

        columns = [c for c in (self.key_columns or list(self.changes.columns))
                   if c in self.changes.columns]
        rows = [{c: str(row[c]) for c in columns}
                for row in self.changes.to_dict("records")]
        where = self.target.describe() if self.target is not None else {}
        text = json_text({"kind": self.kind, "title": self.title, "where": where,
                          "rows": rows, "command": self.command})
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def rows(self) -> list[dict[str, Any]]:
        """Return the planned changes as plain records (for the audit trail)."""
        return [{str(k): _plain(v) for k, v in row.items()}
                for row in self.changes.to_dict("records")]

    def apply(self, confirm: str | None = None) -> Applied:
        """Apply the plan after confirmation; see :mod:`paracle_nb.remediate`.

        In JupyterLab it asks for the plan id; in a batch run it applies
        nothing unless the run was started with ``-p apply <id>``
        (:meth:`paracle_nb.runbook.Runbook.remediate`).
        """
        from paracle_nb import remediate

        result = remediate.apply_plan(self, confirm=confirm)
        _record(result)
        return result

    def scoped_command(self, target: Target | None = None) -> str:
        """Return the command, pinned to the target the runbook points at.

        kubectl gets ``--context``; every command gets a first line naming
        the cluster, database or Redis it is for, so a copied command cannot
        land on whatever the shell points at.
        """
        from paracle_nb.runbook import current_target

        target = target or self.target or current_target()
        return scope_command(self.command, target) if target else self.command

    def _repr_html_(self) -> str:
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        table = (self.changes.to_html(index=False, max_rows=20)
                 if not self.changes.empty else "<p>Nothing to change.</p>")
        how = ("applied by hand" if self.executor is None or self.empty
               else f"apply with <code>-p apply {self.id}</code> or "
                    f"<code>.apply()</code>")
        return (f"<div><p><b>Plan <code>{self.id}</code> (not applied)</b>: "
                f"{html.escape(self.title)} <i>({how})</i></p>"
                f"{table}<ul>{notes}</ul>"
                f"<pre>{html.escape(self.scoped_command())}</pre></div>")

    def __repr__(self) -> str:
        return (f"Plan({self.id}, {self.title!r}, {len(self.changes)} change(s), "
                "not applied)")


def _plain(value: Any) -> Any:
    """Return a table cell as a JSON-friendly value."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _record(result: Applied) -> None:
    """Add an apply outcome to the open runbook's verdict, if any."""
    from paracle_nb import runbook

    if runbook._current is not None:
        runbook._current.record(result)


class Plans(list[Plan]):
    """Several plans shown one after the other; says so when there are none."""

    def _repr_html_(self) -> str:
        if not self:
            return "<p>No cause found that a plan would fix.</p>"
        return "".join(plan._repr_html_() for plan in self)


_SQL = re.compile(r"^\s*(SELECT|ALTER|CREATE|DROP|REINDEX|VACUUM|ANALYZE)\b",
                  re.IGNORECASE | re.MULTILINE)
_REDIS = re.compile(r"^\s*(CONFIG|SCAN|UNLINK|DEL|CLIENT)\b", re.MULTILINE)


def scope_command(command: str, target: Target) -> str:
    """Return ``command`` pinned to ``target`` (see Plan.scoped_command)."""
    where = target.describe()
    lines = []
    if "kubectl " in command:
        context = target.context_name()
        if context:
            command = re.sub(r"(^|\| |&& )kubectl ", rf"\1kubectl --context {context} ",
                             command, flags=re.MULTILINE)
        lines.append(f"# Target: cluster {where['cluster']}, context {context}, "
                     f"namespace {target.namespace}")
    if _SQL.search(command):
        lines.append(f"-- Target: postgres {where['postgres']}")
    if _REDIS.search(command):
        lines.append(f"# Target: redis {where['redis']}")
    return "\n".join([*lines, command])


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def plan_memory_limit(target: Target, deployment: str, container: str,
                      new_limit: str = "") -> Plan:
    """Plan raising a container's memory limit (default: double it)."""
    spec = kube.get_deployment(target, deployment)
    containers = spec["spec"]["template"]["spec"]["containers"]
    current = next(c for c in containers if c["name"] == container)
    before = current.get("resources", {}).get("limits", {}).get("memory")
    if not new_limit:
        doubled = 2 * (parse_quantity(before) or 256 * 2**20)
        new_limit = f"{int(doubled // 2**20)}Mi"

    changes = _frame([{
        "object": f"deployment/{deployment}",
        "field": f"containers[{container}].resources.limits.memory",
        "before": before or "(none)",
        "after": new_limit,
    }], ["object", "field", "before", "after"])
    command = shlex.join(["kubectl", "set", "resources", f"deployment/{deployment}",
                          "-c", container, f"--limits=memory={new_limit}",
                          "-n", target.namespace])
    notes = ["Starts a rolling update of every pod of the deployment.",
             "Check node allocatable memory first: pods may go Pending."]
    return Plan(f"raise memory limit of {deployment}/{container}", changes,
                command, notes)


def plan_set_env(target: Target, deployment: str, container: str,
                 changes: dict[str, str | None]) -> Plan:
    """Plan setting (or, with None, removing) env vars of a container.

    Values from Secrets are shown as their reference, never their value.
    """
    spec = kube.get_deployment(target, deployment)
    containers = spec["spec"]["template"]["spec"]["containers"]
    current = next(c for c in containers if c["name"] == container)
    env = {e["name"]: e for e in current.get("env", [])}

    rows = []
    for name, value in changes.items():
        rows.append({"object": f"deployment/{deployment}",
                     "variable": name,
                     "before": _env_shown(env.get(name)),
                     "after": "(removed)" if value is None else value})
    args = [f"{k}-" if v is None else f"{k}={v}" for k, v in changes.items()]
    command = shlex.join(["kubectl", "set", "env", f"deployment/{deployment}",
                          "-c", container, *args, "-n", target.namespace])
    return Plan(f"set env on {deployment}/{container}",
                _frame(rows, ["object", "variable", "before", "after"]), command,
                ["Starts a rolling update of the deployment's pods."])


def _env_shown(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "(unset)"
    if "value" in entry:
        return str(entry["value"])
    ref = entry.get("valueFrom", {})
    for kind, key in (("secretKeyRef", "secret"), ("configMapKeyRef", "configmap")):
        if kind in ref:
            return f"(from {key} {ref[kind].get('name')}/{ref[kind].get('key')})"
    return "(from a reference)"


def _kubectl_patch(kind: str, name: str, namespace: str, patch: Any,
                   patch_type: str = "merge") -> str:
    import json

    return shlex.join(["kubectl", "patch", kind, name, "-n", namespace,
                       f"--type={patch_type}", "-p",
                       json.dumps(patch, separators=(",", ":"))])


def _pod_template(target: Target, deployment: str) -> dict[str, Any]:
    return dict(kube.get_deployment(target, deployment)["spec"]["template"]["spec"])


def plan_reduce_requests(target: Target, deployment: str, container: str,
                         evidence: dict[str, Any]) -> Plan:
    """Plan lowering a container's request so the pending pods fit the nodes.

    ``evidence`` is an ``insufficient-resources`` finding's: the resource and
    the per-pod request that places every pending pod on today's free room.
    """
    resource, fits = evidence["resource"], evidence.get("request_that_fits")
    containers = _pod_template(target, deployment)["containers"]
    current = next(c for c in containers if c["name"] == container)
    before = (current.get("resources") or {}).get("requests", {}).get(resource)
    others = sum(parse_quantity((c.get("resources") or {}).get("requests", {})
                                .get(resource)) or 0.0
                 for c in containers if c["name"] != container)
    step = 0.05 if resource == "cpu" else float(2**20)
    new = int(((fits or 0.0) - others) / step) * step
    after = (f"{round(new * 1000)}m" if resource == "cpu"
             else f"{int(new // 2**20)}Mi") if new > 0 else "(no request fits)"

    changes = _frame([{"object": f"deployment/{deployment}",
                       "field": f"containers[{container}].resources.requests."
                                f"{resource}",
                       "before": before or "(none)", "after": after}],
                     ["object", "field", "before", "after"])
    command = shlex.join(["kubectl", "set", "resources", f"deployment/{deployment}",
                          "-c", container, f"--requests={resource}={after}",
                          "-n", target.namespace]) if new > 0 else "# add nodes"
    notes = [f"The largest request that places all {evidence.get('pending_pods')} "
             "pending pod(s) on the room free today; a rolling update follows.",
             "Check real usage first (kubectl top pod): a request below it "
             "invites CPU throttling or eviction.",
             "The other fix is more room: add nodes to the node group."]
    return Plan(f"lower {resource} request of {deployment}/{container}", changes,
                command, notes)


def plan_remove_node_selector(target: Target, deployment: str,
                              evidence: dict[str, Any]) -> Plan:
    """Plan removing the node selector entries that no node satisfies."""
    selector = _pod_template(target, deployment).get("nodeSelector") or {}
    keys = [k for k in evidence.get("selector", {}) if k in selector]
    rows = [{"object": f"deployment/{deployment}",
             "field": f"nodeSelector.{k}", "before": selector[k],
             "after": "(removed)"} for k in keys]
    patch = {"spec": {"template": {"spec": {"nodeSelector": dict.fromkeys(keys)}}}}
    notes = ["Or, if the pods really need such nodes, label the right nodes: "
             "kubectl label node <node> <key>=<value>.",
             "Required node affinity is not patched here: edit it by hand."]
    return Plan(f"remove unmatched node selector of {deployment}",
                _frame(rows, ["object", "field", "before", "after"]),
                _kubectl_patch("deployment", deployment, target.namespace, patch)
                if keys else "# nothing in nodeSelector to remove", notes)


def plan_add_toleration(target: Target, deployment: str,
                        evidence: dict[str, Any]) -> Plan:
    """Plan adding a toleration for the taint that keeps the pods off every node."""
    tolerations = list(_pod_template(target, deployment).get("tolerations") or [])
    toleration = {"key": evidence["taint_key"], "operator": "Equal",
                  "value": evidence["taint_value"], "effect": evidence["taint_effect"]}
    if not evidence["taint_value"]:
        toleration = {"key": evidence["taint_key"], "operator": "Exists",
                      "effect": evidence["taint_effect"]}
    patch = {"spec": {"template": {"spec": {"tolerations": [*tolerations,
                                                            toleration]}}}}
    changes = _frame([{"object": f"deployment/{deployment}", "field": "tolerations",
                       "before": len(tolerations), "after": len(tolerations) + 1,
                       "added": json_text(toleration)}],
                     ["object", "field", "before", "after", "added"])
    value = f"={evidence['taint_value']}" if evidence["taint_value"] else ""
    taint = f"{evidence['taint_key']}{value}:{evidence['taint_effect']}"
    notes = ["A taint is usually there on purpose: tolerate it only if the API "
             "belongs on those nodes.",
             f"Or remove the taint: kubectl taint nodes "
             f"{' '.join(evidence.get('nodes', []))} {taint}-"]
    return Plan(f"tolerate {taint} in {deployment}", changes,
                _kubectl_patch("deployment", deployment, target.namespace, patch),
                notes)


def json_text(value: Any) -> str:
    """Return a value as compact JSON (for a plan's table)."""
    import json

    return json.dumps(value, separators=(",", ":"))


def plan_pdb_budget(target: Target, evidence: dict[str, Any]) -> Plan:
    """Plan loosening a PDB that allows no disruption, never deleting it."""
    pdb, expected = evidence["pdb"], int(evidence.get("expected_pods") or 0)
    min_available = evidence.get("min_available")
    if isinstance(min_available, int) and expected > 1:
        rows = [{"field": "minAvailable", "before": min_available,
                 "after": expected - 1}]
        patch: dict[str, Any] = {"spec": {"minAvailable": expected - 1}}
    else:
        rows = [{"field": "minAvailable", "before": min_available,
                 "after": "(removed)"},
                {"field": "maxUnavailable",
                 "before": evidence.get("max_unavailable"), "after": 1}]
        patch = {"spec": {"minAvailable": None, "maxUnavailable": 1}}
    notes = ["Never delete the PDB: it keeps a drain from taking every API pod "
             "at once.",
             "Or scale the deployment up by one first: the same budget then "
             "allows one eviction.",
             "Set the budget back after the drain if it was meant to be strict."]
    return Plan(f"let PDB {pdb} allow one disruption",
                _frame([{"object": f"poddisruptionbudget/{pdb}", **r} for r in rows],
                       ["object", "field", "before", "after"]),
                _kubectl_patch("pdb", pdb, target.namespace, patch), notes)


def plan_service_selector(target: Target, service: str,
                          evidence: dict[str, Any]) -> Plan:
    """Plan setting a service's selector to the labels its pods really have."""
    fixed: dict[str, str | None] = {}
    rows = []
    for key, seen in (evidence.get("mismatched") or {}).items():
        have = [v for v in seen["pods_have"] if v != "(absent)"]
        fixed[key] = have[0] if len(have) == 1 and len(seen["pods_have"]) == 1 \
            else None
        rows.append({"object": f"service/{service}", "field": f"selector.{key}",
                     "before": seen["wanted"], "after": fixed[key] or "(removed)"})
    patch = {"spec": {"selector": fixed}}
    notes = ["Check that the new selector picks only the API pods: kubectl get "
             f"pods -n {target.namespace} -l <selector>.",
             "Endpoints follow within seconds; no pod restarts."]
    return Plan(f"fix the selector of service {service}",
                _frame(rows, ["object", "field", "before", "after"]),
                _kubectl_patch("service", service, target.namespace, patch), notes)


def plan_ingress_backend(target: Target, evidence: dict[str, Any],
                         service: str) -> Plan:
    """Plan pointing an ingress route at a service and port that exist."""
    ingress, field = evidence["ingress"], evidence["backend_field"]
    ports = evidence.get("service_ports") or []
    rows: list[dict[str, Any]] = []
    ops: list[dict[str, Any]] = []
    if evidence["missing"] == "service":
        rows.append({"field": f"{field}/service/name",
                     "before": evidence["backend_service"], "after": service})
        ops.append({"op": "replace", "path": f"{field}/service/name",
                    "value": service})
    elif len(ports) == 1:
        number = int(ports[0].split()[0])
        rows.append({"field": f"{field}/service/port",
                     "before": evidence["backend_port"], "after": number})
        ops.append({"op": "replace", "path": f"{field}/service/port",
                    "value": {"number": number}})
    notes = [f"Route {evidence['host']}{evidence['path']}; the controller "
             "reloads within seconds.",
             "Check the service first: kubectl get svc -n "
             f"{target.namespace} {evidence['backend_service']}."]
    return Plan(f"fix the backend of ingress {ingress}",
                _frame([{"object": f"ingress/{ingress}", **r} for r in rows],
                       ["object", "field", "before", "after"]),
                _kubectl_patch("ingress", ingress, target.namespace, ops, "json")
                if ops else "# choose the backend port by hand", notes)


def plan_dns_check(target: Target, service: str, port: int | None = None) -> Plan:
    """Plan the in-cluster check of the guide: resolve and call the service.

    Shown, never run: it starts a short-lived pod in the cluster.
    """
    name = f"{service}.{target.namespace}.svc.cluster.local"
    base = ["kubectl", "run", "dns-check", "-it", "--rm", "--restart=Never",
            "--image=busybox:1.36", "-n", target.namespace, "--"]
    command = "\n".join([shlex.join([*base, "nslookup", name]),
                         shlex.join([*base, "wget", "-qO-", "-T", "5",
                                     f"http://{name}:{port or 80}/health"])])
    changes = _frame([{"object": "pod/dns-check", "image": "busybox:1.36",
                       "lifetime": "deleted when the command ends"}],
                     ["object", "image", "lifetime"])
    notes = ["Not run by the runbook: it creates a pod in the namespace.",
             "NXDOMAIN or a timeout with CoreDNS down: DNS; an answer but no "
             "HTTP reply: the service or its pods."]
    return Plan(f"check {name} from inside the cluster", changes, command, notes)
