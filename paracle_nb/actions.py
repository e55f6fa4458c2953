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
        _shown(self)
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        table = (self.changes.to_html(index=False, max_rows=20)
                 if not self.changes.empty else "<p>Nothing to change.</p>")
        how = ("applied by hand" if self.executor is None or self.empty
               else f"apply with <code>-p apply {self.id}</code> or "
                    f"<code>.apply()</code>")
        return (f"<div><p><b>Plan <code>{self.id}</code> (not applied)</b>: "
                f"{html.escape(self.title)} <i>({how})</i></p>"
                f"{table}<ul>{notes}</ul>{self._command_html()}</div>")

    def _command_html(self) -> str:
        """The command block; none for an applicable plan with nothing to do."""
        if self.empty and self.executor is not None:
            return ""
        return f"<pre>{html.escape(self.scoped_command())}</pre>"

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


def _shown(plan: Plan) -> None:
    """Tell the open runbook this plan was shown: only shown plans apply."""
    from paracle_nb import runbook

    if runbook._current is not None:
        runbook._current.shown[plan.title] = plan


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
_REDIS = re.compile(r"^\s*(CONFIG|SCAN|UNLINK|DEL|CLIENT|FLUSHDB)\b", re.MULTILINE)


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
    from paracle_nb.actions_kubernetes import raise_memory_limit

    return raise_memory_limit(target, deployment, container, new_limit)


def plan_set_env(target: Target, deployment: str, container: str,
                 changes: dict[str, str | None]) -> Plan:
    """Plan setting (or, with None, removing) env vars of a container.

    Values from Secrets are shown as their reference, never their value.
    """
    from paracle_nb.actions_kubernetes import set_env

    return set_env(target, deployment, container, dict(changes))


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

    notes = [f"The largest request that places all {evidence.get('pending_pods')} "
             "pending pod(s) on the room free today; a rolling update follows.",
             "Check real usage first (kubectl top pod): a request below it "
             "invites CPU throttling or eviction.",
             "The other fix is more room: add nodes to the node group."]
    if new > 0:
        from paracle_nb.actions_kubernetes import set_resource_request

        plan = set_resource_request(target, deployment, container, resource, after)
        plan.notes = notes
        return plan
    # Nothing fits: the only fix is more room, which a runbook cannot patch.
    changes = _frame([{"object": f"deployment/{deployment}",
                       "field": f"containers[{container}].resources.requests."
                                f"{resource}",
                       "before": before or "(none)", "after": after}],
                     ["object", "field", "before", "after"])
    return Plan(f"lower {resource} request of {deployment}/{container}", changes,
                "# add nodes", notes)


def plan_remove_node_selector(target: Target, deployment: str,
                              evidence: dict[str, Any]) -> Plan:
    """Plan removing the node selector entries that no node satisfies."""
    from paracle_nb.actions_kubernetes import patch_node_selector

    selector = _pod_template(target, deployment).get("nodeSelector") or {}
    keys = [k for k in evidence.get("selector", {}) if k in selector]
    plan = patch_node_selector(target, deployment, dict.fromkeys(keys))
    plan.notes = ["Or, if the pods really need such nodes, label the right "
                  "nodes: kubectl label node <node> <key>=<value>.",
                  "Required node affinity is not patched here: edit it by hand."]
    return plan


def plan_add_toleration(target: Target, deployment: str,
                        evidence: dict[str, Any]) -> Plan:
    """Plan adding a toleration for the taint that keeps the pods off every node."""
    from paracle_nb.actions_kubernetes import add_toleration

    toleration = {"key": evidence["taint_key"], "operator": "Equal",
                  "value": evidence["taint_value"], "effect": evidence["taint_effect"]}
    if not evidence["taint_value"]:
        toleration = {"key": evidence["taint_key"], "operator": "Exists",
                      "effect": evidence["taint_effect"]}
    plan = add_toleration(target, deployment, toleration)
    value = f"={evidence['taint_value']}" if evidence["taint_value"] else ""
    taint = f"{evidence['taint_key']}{value}:{evidence['taint_effect']}"
    plan.notes.append(f"Or remove the taint: kubectl taint nodes "
                      f"{' '.join(evidence.get('nodes', []))} {taint}-")
    return plan


def json_text(value: Any) -> str:
    """Return a value as compact JSON (for a plan's table)."""
    import json

    return json.dumps(value, separators=(",", ":"))


def plan_pdb_budget(target: Target, evidence: dict[str, Any]) -> Plan:
    """Plan loosening a PDB that allows no disruption, never deleting it.

    Made from the finding's evidence; applying reads the PDB again first.
    """
    from paracle_nb import kube_patch
    from paracle_nb.actions_kubernetes import edits_plan

    pdb, expected = evidence["pdb"], int(evidence.get("expected_pods") or 0)
    min_available = evidence.get("min_available")
    if isinstance(min_available, int) and expected > 1:
        after: dict[str, Any] = {"minAvailable": expected - 1}
        patch: dict[str, Any] = {"spec": {"minAvailable": expected - 1}}
    else:
        after = {"minAvailable": kube_patch.REMOVED, "maxUnavailable": 1}
        patch = {"spec": {"minAvailable": None, "maxUnavailable": 1}}

    def read(obj: dict[str, Any]) -> dict[str, Any]:
        spec = obj.get("spec") or {}
        return {k: spec.get(k, kube_patch.ABSENT)
                for k in ("minAvailable", "maxUnavailable")}

    def replan() -> Plan:
        live = read(kube_patch.read_object(target, "poddisruptionbudget", pdb))
        return plan_pdb_budget(target, {
            **evidence, "min_available": _present(live["minAvailable"]),
            "max_unavailable": _present(live["maxUnavailable"])})

    before = {"minAvailable": _shown_value(min_available),
              "maxUnavailable": _shown_value(evidence.get("max_unavailable"))}
    edit = kube_patch.Edit("poddisruptionbudget", pdb, read, before, after,
                           lambda _: patch, kube_patch.MERGE)
    notes = ["Never delete the PDB: it keeps a drain from taking every API pod "
             "at once.",
             "Or scale the deployment up by one first: the same budget then "
             "allows one eviction.",
             "Set the budget back after the drain if it was meant to be strict."]
    return edits_plan(target, f"let PDB {pdb} allow one disruption", [edit],
                      _kubectl_patch("pdb", pdb, target.namespace, patch), notes,
                      kind="kubernetes.pdb", replan=replan)


def _shown_value(value: Any) -> Any:
    """Return an evidence value as a plan shows it: absent is ``(none)``."""
    from paracle_nb.kube_patch import ABSENT

    return ABSENT if value is None else value


def _present(shown: Any) -> Any:
    from paracle_nb.kube_patch import ABSENT

    return None if shown == ABSENT else shown


def plan_service_selector(target: Target, service: str,
                          evidence: dict[str, Any]) -> Plan:
    """Plan setting a service's selector to the labels its pods really have."""
    from paracle_nb import kube_patch
    from paracle_nb.actions_kubernetes import edits_plan

    mismatched = evidence.get("mismatched") or {}
    fixed: dict[str, str | None] = {}
    for key, seen in mismatched.items():
        have = [v for v in seen["pods_have"] if v != "(absent)"]
        fixed[key] = have[0] if len(have) == 1 and len(seen["pods_have"]) == 1 \
            else None
    patch = {"spec": {"selector": fixed}}

    def read(obj: dict[str, Any]) -> dict[str, Any]:
        selector = (obj.get("spec") or {}).get("selector") or {}
        return {f"selector.{k}": selector.get(k, kube_patch.ABSENT)
                for k in mismatched}

    def replan() -> Plan:
        live = read(kube_patch.read_object(target, "service", service))
        return plan_service_selector(target, service, {**evidence, "mismatched": {
            k: {**seen, "wanted": live[f"selector.{k}"]}
            for k, seen in mismatched.items()}})

    edit = kube_patch.Edit(
        "service", service, read,
        {f"selector.{k}": seen["wanted"] for k, seen in mismatched.items()},
        {f"selector.{k}": v or kube_patch.REMOVED for k, v in fixed.items()},
        lambda _: patch, kube_patch.MERGE)
    notes = ["Check that the new selector picks only the API pods: kubectl get "
             f"pods -n {target.namespace} -l <selector>.",
             "Endpoints follow within seconds; no pod restarts."]
    return edits_plan(target, f"fix the selector of service {service}", [edit],
                      _kubectl_patch("service", service, target.namespace, patch),
                      notes, kind="kubernetes.service_selector", replan=replan)


def plan_ingress_backend(target: Target, evidence: dict[str, Any],
                         service: str) -> Plan:
    """Plan pointing an ingress route at a service and port that exist."""
    from paracle_nb import kube_patch
    from paracle_nb.actions_kubernetes import edits_plan

    ingress, field = evidence["ingress"], evidence["backend_field"]
    ports = evidence.get("service_ports") or []
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    ops: list[dict[str, Any]] = []
    if evidence["missing"] == "service":
        before[f"{field}/service/name"] = evidence["backend_service"]
        after[f"{field}/service/name"] = service
        ops.append({"op": "replace", "path": f"{field}/service/name",
                    "value": service})
    elif len(ports) == 1:
        number = int(ports[0].split()[0])
        before[f"{field}/service/port"] = evidence["backend_port"]
        after[f"{field}/service/port"] = number
        ops.append({"op": "replace", "path": f"{field}/service/port",
                    "value": {"number": number}})

    def read(obj: dict[str, Any]) -> dict[str, Any]:
        backend = _pointed(obj, field).get("service") or {}
        port = backend.get("port") or {}
        return {f"{field}/service/name": backend.get("name", kube_patch.ABSENT),
                f"{field}/service/port": port.get("number") or port.get("name")
                or kube_patch.ABSENT}

    def replan() -> Plan:
        live = read(kube_patch.read_object(target, "ingress", ingress))
        return plan_ingress_backend(target, {
            **evidence, "backend_service": live[f"{field}/service/name"],
            "backend_port": live[f"{field}/service/port"]}, service)

    edit = kube_patch.Edit("ingress", ingress, read, before, after,
                           lambda _: ops, kube_patch.JSON_PATCH)
    notes = [f"Route {evidence['host']}{evidence['path']}; the controller "
             "reloads within seconds.",
             "Check the service first: kubectl get svc -n "
             f"{target.namespace} {evidence['backend_service']}."]
    return edits_plan(target, f"fix the backend of ingress {ingress}", [edit],
                      _kubectl_patch("ingress", ingress, target.namespace, ops,
                                     "json")
                      if ops else "# choose the backend port by hand", notes,
                      kind="kubernetes.ingress_backend", replan=replan)


def _pointed(obj: dict[str, Any], pointer: str) -> dict[str, Any]:
    """Return the mapping a JSON pointer names in ``obj`` (empty if none)."""
    node: Any = obj
    for token in pointer.strip("/").split("/"):
        if isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        elif isinstance(node, dict):
            node = node.get(token, {})
        else:
            return {}
    return node if isinstance(node, dict) else {}


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
