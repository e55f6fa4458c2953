"""Read helpers for reaching a service: services, endpoints, ingress, DNS.

The reads go through :func:`paracle_nb.kube._call`; the tables are pure:
which pods a service's selector picks, which of its endpoints are ready,
whether each ingress backend names a service and port that exist, which
load balancers were never given an address.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from paracle_nb import kube
from paracle_nb.errors import KubernetesError
from paracle_nb.target import Target

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DNS_NAMESPACE = "kube-system"
DNS_SELECTOR = "k8s-app=kube-dns"


# -- reads -----------------------------------------------------------------------

def list_services(target: Target) -> list[dict[str, Any]]:
    """Return the services of the target's namespace."""
    ns = target.namespace
    body = kube._call(target, f"list services in {ns}",
                      kube._core(target).list_namespaced_service, ns)
    return list(body.get("items", []))


def get_service(target: Target, name: str) -> dict[str, Any]:
    """Return one service of the target's namespace."""
    return dict(kube._call(target, f"read service {name}",
                           kube._core(target).read_namespaced_service,
                           name, target.namespace))


def get_endpoints(target: Target, name: str) -> dict[str, Any]:
    """Return a service's Endpoints; empty when the API has none for it."""
    try:
        return dict(kube._call(target, f"read endpoints {name}",
                               kube._core(target).read_namespaced_endpoints,
                               name, target.namespace))
    except KubernetesError as exc:
        if exc.status != 404:
            raise
        return {}


def get_ingress(target: Target, name: str) -> dict[str, Any]:
    """Return one ingress of the target's namespace."""
    return dict(kube._call(target, f"read ingress {name}",
                           kube._networking(target).read_namespaced_ingress,
                           name, target.namespace))


def object_events(target: Target, kind: str, name: str) -> pd.DataFrame:
    """Return the events of one object of the namespace, newest first."""
    import pandas as pd

    body = kube._call(
        target, f"list events of {kind.lower()}/{name}",
        kube._core(target).list_namespaced_event, target.namespace,
        field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
    rows = [{
        "last_seen": kube._timestamp(e.get("lastTimestamp") or e.get("eventTime")),
        "first_seen": kube._timestamp(e.get("firstTimestamp") or e.get("eventTime")),
        "type": e.get("type"),
        "reason": e.get("reason"),
        "count": e.get("count") or 1,
        "message": e.get("message", ""),
    } for e in body.get("items", [])]
    columns = ["last_seen", "first_seen", "type", "reason", "count", "message"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("last_seen", ascending=False, ignore_index=True)


def dns_pods(target: Target) -> list[dict[str, Any]]:
    """Return the cluster DNS (CoreDNS) pods of kube-system."""
    return kube.list_pods(target, DNS_SELECTOR, namespace=DNS_NAMESPACE)


def dns_logs(target: Target, pods: list[dict[str, Any]], tail_lines: int = 20
             ) -> str:
    """Return the last lines of each CoreDNS pod's log, one block per pod."""
    blocks = []
    for pod in pods:
        name = pod["metadata"]["name"]
        try:
            text = kube._call(target, f"logs of {DNS_NAMESPACE}/{name}",
                              kube._core(target).read_namespaced_pod_log, name,
                              DNS_NAMESPACE, tail_lines=tail_lines)
        except KubernetesError as exc:
            if exc.status != 400:  # 400: the container has not started yet
                raise
            text = f"(no log: {exc.detail or exc.message})"
        blocks.append(f"--- {name} ---\n{str(text).rstrip()}")
    return "\n".join(blocks)


# -- services and the pods they select ----------------------------------------------

def service_selector(service: dict[str, Any]) -> dict[str, str]:
    """Return a service's pod selector (empty for a service without one)."""
    return dict((service.get("spec") or {}).get("selector") or {})


def main_port(service: Any) -> int | None:
    """Return the first port of a service, or None."""
    ports = ((service or {}).get("spec") or {}).get("ports") or [] \
        if isinstance(service, dict) else []
    return int(ports[0]["port"]) if ports else None


def service_ports(service: dict[str, Any]) -> str:
    """Return a service's ports as ``kubectl get svc`` prints them."""
    parts = []
    for port in (service.get("spec") or {}).get("ports") or []:
        node = f":{port['nodePort']}" if port.get("nodePort") else ""
        parts.append(f"{port.get('port')}{node}/{port.get('protocol', 'TCP')}")
    return ",".join(parts)


def external_address(service: dict[str, Any]) -> str:
    """Return the load balancer's address, ``<pending>`` if it has none yet."""
    spec = service.get("spec") or {}
    ingress = (((service.get("status") or {}).get("loadBalancer") or {})
               .get("ingress") or [])
    if ingress:
        return ",".join(i.get("ip") or i.get("hostname") or "?" for i in ingress)
    if spec.get("type") == "LoadBalancer":
        return "<pending>"
    return ",".join(spec.get("externalIPs") or []) or "<none>"


def service_table(services: list[dict[str, Any]], now: dt.datetime | None = None
                  ) -> pd.DataFrame:
    """Return one row per service, as ``kubectl get svc -o wide`` shows it."""
    import pandas as pd

    now = now or dt.datetime.now(dt.timezone.utc)
    rows = []
    for service in services:
        spec = service.get("spec") or {}
        created = kube._timestamp(service["metadata"].get("creationTimestamp"))
        rows.append({
            "service": service["metadata"]["name"],
            "type": spec.get("type", "ClusterIP"),
            "cluster_ip": spec.get("clusterIP"),
            "external": external_address(service),
            "ports": service_ports(service),
            "selector": label_text(spec.get("selector") or {}),
            "age_s": (now - created).total_seconds() if created else None,
        })
    columns = ["service", "type", "cluster_ip", "external", "ports", "selector",
               "age_s"]
    return pd.DataFrame(rows, columns=columns)


def label_text(labels: dict[str, str]) -> str:
    """Return labels as ``k=v,k=v``, sorted; ``-`` when there are none."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """True when a service selector picks a pod with these labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_ready(pod: dict[str, Any]) -> bool:
    """True when the pod's Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def selected_pods(service: dict[str, Any], pods: list[dict[str, Any]]
                  ) -> pd.DataFrame:
    """Return every listed pod, its labels, and whether the service selects it."""
    import pandas as pd

    selector = (service.get("spec") or {}).get("selector") or {}
    rows = [{
        "pod": pod["metadata"]["name"],
        "labels": label_text(pod["metadata"].get("labels") or {}),
        "selected": selects(selector, pod["metadata"].get("labels") or {}),
        "status": kube.pod_status(pod),
        "ready": pod_ready(pod),
        "pod_ip": (pod.get("status") or {}).get("podIP"),
    } for pod in pods]
    columns = ["pod", "labels", "selected", "status", "ready", "pod_ip"]
    return pd.DataFrame(rows, columns=columns)


def selector_mismatch(selector: dict[str, str], pods: list[dict[str, Any]]
                      ) -> dict[str, dict[str, Any]]:
    """Return the selector keys some pod fails: wanted value, values pods have.

    >>> pod = {"metadata": {"labels": {"app": "api", "tier": "api"}}}
    >>> selector_mismatch({"app": "api", "tier": "backend"}, [pod])
    {'tier': {'wanted': 'backend', 'pods_have': ['api']}}
    """
    mismatched = {}
    for key, wanted in sorted(selector.items()):
        have = sorted({str((p["metadata"].get("labels") or {}).get(key, "(absent)"))
                       for p in pods})
        if have != [wanted]:
            mismatched[key] = {"wanted": wanted, "pods_have": have}
    return mismatched


def label_values(pods: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Return every label key of the pods with the values they carry."""
    values: dict[str, set[str]] = {}
    for pod in pods:
        for key, value in (pod["metadata"].get("labels") or {}).items():
            values.setdefault(key, set()).add(str(value))
    return {key: sorted(found) for key, found in sorted(values.items())}


def endpoint_table(endpoints: dict[str, Any]) -> pd.DataFrame:
    """Return one row per endpoint address, ready or not."""
    import pandas as pd

    rows = []
    for subset in endpoints.get("subsets") or []:
        ports = ",".join(str(p.get("port")) for p in subset.get("ports") or [])
        for ready, key in ((True, "addresses"), (False, "notReadyAddresses")):
            for address in subset.get(key) or []:
                rows.append({"ip": address.get("ip"),
                             "pod": (address.get("targetRef") or {}).get("name"),
                             "node": address.get("nodeName"),
                             "ready": ready, "ports": ports})
    return pd.DataFrame(rows, columns=["ip", "pod", "node", "ready", "ports"])


# -- ingress -------------------------------------------------------------------------

def ingress_backends(ingress: dict[str, Any], services: list[dict[str, Any]]
                     ) -> pd.DataFrame:
    """Return each ingress rule's backend, and whether its service and port exist."""
    import pandas as pd

    by_name = {s["metadata"]["name"]: s for s in services}
    spec = ingress.get("spec") or {}
    routes: list[tuple[str, str, dict[str, Any], str]] = []
    if spec.get("defaultBackend"):
        routes.append(("*", "(default)", spec["defaultBackend"],
                       "/spec/defaultBackend"))
    for i, rule in enumerate(spec.get("rules") or []):
        for j, path in enumerate((rule.get("http") or {}).get("paths") or []):
            routes.append((rule.get("host") or "*", path.get("path") or "/",
                           path.get("backend") or {},
                           f"/spec/rules/{i}/http/paths/{j}/backend"))

    rows = []
    for host, path, backend, pointer in routes:
        wanted = backend.get("service") or {}
        name = wanted.get("name")
        port = wanted.get("port") or {}
        service = by_name.get(name or "")
        rows.append({
            "ingress": ingress["metadata"]["name"],
            "host": host,
            "path": path,
            "service": name or "-",
            "port": port.get("number") or port.get("name"),
            "service_exists": service is not None,
            "port_exists": service is not None and _has_port(service, port),
            "service_ports": service_port_list(service) if service else [],
            "backend_field": pointer,
        })
    columns = ["ingress", "host", "path", "service", "port", "service_exists",
               "port_exists", "service_ports", "backend_field"]
    return pd.DataFrame(rows, columns=columns)


def service_port_list(service: dict[str, Any]) -> list[str]:
    """Return a service's ports as ``8000`` or ``8000 (http)``."""
    return [f"{p.get('port')} ({p['name']})" if p.get("name") else str(p.get("port"))
            for p in (service.get("spec") or {}).get("ports") or []]


def _has_port(service: dict[str, Any], port: dict[str, Any]) -> bool:
    for candidate in (service.get("spec") or {}).get("ports") or []:
        if port.get("number") is not None and candidate.get("port") == port["number"]:
            return True
        if port.get("name") and candidate.get("name") == port["name"]:
            return True
    return False


# -- load balancers --------------------------------------------------------------------

def load_balancers(services: list[dict[str, Any]], events: dict[str, Any],
                   now: dt.datetime | None = None) -> pd.DataFrame:
    """Return the LoadBalancer services: address or pending, age, last event.

    ``events`` maps a service name to its events (see :func:`object_events`).
    """
    import pandas as pd

    now = now or dt.datetime.now(dt.timezone.utc)
    rows = []
    for service in services:
        if (service.get("spec") or {}).get("type") != "LoadBalancer":
            continue
        name = service["metadata"]["name"]
        created = kube._timestamp(service["metadata"].get("creationTimestamp"))
        mine = events.get(name)
        last = mine.iloc[0] if mine is not None and not mine.empty else None
        warnings = (mine[mine["type"] == "Warning"] if mine is not None
                    else None)
        rows.append({
            "service": name,
            "external": external_address(service),
            "pending": external_address(service) == "<pending>",
            "age_s": (now - created).total_seconds() if created else None,
            "last_event": (f"{last['reason']}: {last['message']}"
                           if last is not None else ""),
            "failures": int(warnings["count"].sum()) if warnings is not None
            and not warnings.empty else 0,
        })
    columns = ["service", "external", "pending", "age_s", "last_event", "failures"]
    return pd.DataFrame(rows, columns=columns)


def load_balancer_events(target: Target, services: list[dict[str, Any]]
                         ) -> dict[str, pd.DataFrame]:
    """Return the events of each LoadBalancer service, by service name."""
    return {s["metadata"]["name"]: object_events(target, "Service",
                                                 s["metadata"]["name"])
            for s in services if (s.get("spec") or {}).get("type") == "LoadBalancer"}


# -- cluster DNS ---------------------------------------------------------------------

def dns_name(service: str, namespace: str) -> str:
    """Return the in-cluster DNS name of a service."""
    return f"{service}.{namespace}.svc.cluster.local"
