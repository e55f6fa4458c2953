"""A Kubernetes API server of the lab's own, for the official client and kubectl.

It serves cluster state loaded from scenario files (``sandbox/scenarios``)
on loopback, with discovery, tables for kubectl, selectors, the three patch
formats, pod logs, scale, watch and the metrics API behind ``kubectl top``.
"""

from .scenario import ScenarioError, scenario_names
from .server import KubeAPIServer
from .status import ApiError
from .store import ObjectStore

__all__ = [
    "ApiError",
    "KubeAPIServer",
    "ObjectStore",
    "ScenarioError",
    "scenario_names",
]
