"""Why is a service not reachable: selector, endpoints, ingress, load balancer, DNS?"""

from __future__ import annotations

from typing import Any

from paracle_nb.findings import Finding, Severity
from paracle_nb.runbook import available
from paracle_nb.units import format_duration

LB_PATIENCE_S = 300.0  # a cloud load balancer usually has an address by then


def diagnose_selection(service: str, selector: Any, selection: Any,
                       mismatch: Any = None, endpoints: Any = None,
                       pod_labels: Any = None) -> list[Finding]:
    """Return findings on the pods behind a service and its ready endpoints.

    ``mismatch`` is :func:`paracle_nb.kube_network.selector_mismatch` of the
    API's pods, ``pod_labels`` their :func:`~paracle_nb.kube_network.label_values`.
    """
    if not available(selection):
        return []
    selected = selection[selection["selected"]]

    if available(selector) and selector and selected.empty:
        evidence: dict[str, Any] = {
            "service": service, "selector": dict(selector), "matching_pods": 0,
            "pods_in_namespace": len(selection)}
        if available(mismatch) and mismatch:
            evidence["mismatched"] = dict(mismatch)
        if available(pod_labels) and pod_labels:
            evidence["pod_labels"] = dict(pod_labels)
        wanted = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        have = "; ".join(f"{k}: {', '.join(v['pods_have'])}"
                         for k, v in (mismatch or {}).items())
        summary = (f"Service {service} selects no pod: its selector {wanted} "
                   "matches none" + (f" (the API pods have {have})." if have
                                     else "."))
        return [Finding("selector-mismatch", Severity.CRITICAL, summary, evidence,
                        step="Check the service selector")]

    ready_addresses, not_ready = _endpoint_counts(endpoints)
    ready_pods = int(selected["ready"].sum())
    no_endpoints = ready_addresses == 0 if ready_addresses is not None \
        else ready_pods == 0
    if not no_endpoints or (selector and selected.empty):
        return []
    statuses = {str(r.pod): str(r.status) for r in selected.itertuples()}
    evidence = {"service": service, "matching_pods": len(selected),
                "ready_pods": ready_pods, "ready_addresses": ready_addresses,
                "not_ready_addresses": not_ready, "pod_status": statuses}
    summary = (f"Service {service} has no ready endpoint: {len(selected)} pod(s) "
               f"match its selector, {ready_pods} Ready"
               + (f", {not_ready} address(es) not ready." if not_ready else "."))
    return [Finding("no-ready-endpoints", Severity.CRITICAL, summary, evidence,
                    step="Check endpoints")]


def _endpoint_counts(endpoints: Any) -> tuple[int | None, int | None]:
    if not available(endpoints):
        return None, None
    ready = int(endpoints["ready"].sum()) if not endpoints.empty else 0
    return ready, len(endpoints) - ready


def diagnose_ingress(backends: Any) -> list[Finding]:
    """Return a finding per ingress route whose backend service or port is missing."""
    if not available(backends) or backends.empty:
        return []
    findings = []
    for row in backends.itertuples():
        if row.service_exists and row.port_exists:
            continue
        missing = "service" if not row.service_exists else "port"
        evidence = {"ingress": row.ingress, "host": row.host, "path": row.path,
                    "backend_service": row.service, "backend_port": row.port,
                    "service_exists": bool(row.service_exists),
                    "port_exists": bool(row.port_exists),
                    "service_ports": list(row.service_ports), "missing": missing,
                    "backend_field": row.backend_field}
        what = (f"service {row.service}, which does not exist"
                if missing == "service" else
                f"port {row.port} of service {row.service}, which exposes only "
                f"{', '.join(row.service_ports) or 'no port'}")
        findings.append(Finding(
            "ingress-backend-missing", Severity.CRITICAL,
            f"Ingress {row.ingress} sends {row.host}{row.path} to {what}.",
            evidence, step="Check ingress"))
    return findings


def diagnose_load_balancers(balancers: Any) -> list[Finding]:
    """Return findings for LoadBalancer services still without an address."""
    if not available(balancers) or balancers.empty:
        return []
    findings = []
    for row in balancers[balancers["pending"]].itertuples():
        age = float(row.age_s) if row.age_s == row.age_s else 0.0
        evidence = {"service": row.service, "type": "LoadBalancer",
                    "external": row.external, "age_s": round(age),
                    "last_event": row.last_event, "failures": int(row.failures)}
        if age < LB_PATIENCE_S and not row.failures:
            findings.append(Finding(
                "load-balancer-provisioning", Severity.INFO,
                f"Load balancer of {row.service} is being provisioned "
                f"({format_duration(age)} so far).", evidence,
                step="Check load balancer"))
            continue
        said = f" Last event: {row.last_event}" if row.last_event else ""
        findings.append(Finding(
            "load-balancer-pending", Severity.CRITICAL,
            f"Service {row.service} (type LoadBalancer) has had no external "
            f"address for {format_duration(age)}; {int(row.failures)} failed "
            f"sync(s).{said}", evidence, step="Check load balancer"))
    return findings


def diagnose_dns(dns: Any) -> list[Finding]:
    """Return a finding when no cluster DNS (CoreDNS) pod is Running and Ready."""
    if not available(dns):
        return []
    ready = [r for r in dns.itertuples() if r.status == "Running"
             and r.ready.split("/")[0] == r.ready.split("/")[1]]
    if ready:
        return []
    status = {str(r.pod): str(r.status) for r in dns.itertuples()}
    evidence = {"namespace": "kube-system", "selector": "k8s-app=kube-dns",
                "pods": len(dns), "ready_pods": 0, "pod_status": status,
                "restarts": {str(r.pod): int(r.restarts) for r in dns.itertuples()}}
    statuses = ", ".join(f"{p} {s}" for p, s in status.items())
    summary = ("No CoreDNS pod is Ready: service names do not resolve inside the "
               "cluster" + (f" ({statuses})." if statuses else " (no pod at all)."))
    return [Finding("dns-unavailable", Severity.CRITICAL, summary, evidence,
                    step="Check CoreDNS")]


# -- one sentence per step -----------------------------------------------------------

def describe_services(services: Any, name: str) -> str:
    """Return one sentence on the services and the one under investigation."""
    if not available(services):
        return "Services unavailable."
    mine = services[services["service"] == name]
    if mine.empty:
        return f"{len(services)} service(s); none is called {name}."
    row = mine.iloc[0]
    return (f"{len(services)} service(s); {name} is {row['type']} on "
            f"{row['ports']}, external {row['external']}, selector {row['selector']}.")


def describe_endpoints(endpoints: Any, name: str) -> str:
    """Return one sentence on a service's endpoints."""
    if not available(endpoints):
        return "Endpoints unavailable."
    ready = int(endpoints["ready"].sum()) if not endpoints.empty else 0
    return (f"Endpoints of {name}: {ready} ready, {len(endpoints) - ready} not "
            "ready.")


def describe_selection(selection: Any, selector: Any) -> str:
    """Return one sentence on which pods the service's selector picks."""
    if not available(selection) or not available(selector):
        return "Selector check unavailable."
    chosen = selection[selection["selected"]]
    wanted = ",".join(f"{k}={v}" for k, v in sorted((selector or {}).items()))
    return (f"Selector {wanted or '(none)'} picks {len(chosen)} of "
            f"{len(selection)} pod(s) in the namespace, {int(chosen['ready'].sum())} "
            "of them Ready.")


def describe_backends(backends: Any) -> str:
    """Return one sentence on the ingress routes and their backends."""
    if not available(backends):
        return "Ingress unavailable."
    broken = backends[~(backends["service_exists"] & backends["port_exists"])]
    if broken.empty:
        return f"{len(backends)} route(s); every backend service and port exists."
    return (f"{len(backends)} route(s); {len(broken)} point at a missing service "
            "or port.")


def describe_load_balancers(balancers: Any) -> str:
    """Return one sentence on the LoadBalancer services."""
    if not available(balancers):
        return "Load balancers unavailable."
    if balancers.empty:
        return "No service of type LoadBalancer in the namespace."
    pending = list(balancers[balancers["pending"]]["service"])
    return (f"{len(balancers)} LoadBalancer service(s); "
            + (f"pending: {', '.join(pending)}." if pending
               else "all have an address."))


def describe_dns(dns: Any) -> str:
    """Return one sentence on the CoreDNS pods."""
    if not available(dns):
        return "CoreDNS pods unavailable."
    if dns.empty:
        return "No CoreDNS pod (k8s-app=kube-dns) in kube-system."
    running = int((dns["status"] == "Running").sum())
    return (f"{len(dns)} CoreDNS pod(s), {running} Running; restarts "
            f"{int(dns['restarts'].sum())}.")
