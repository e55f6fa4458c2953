"""LLM provider checks: API keys by fingerprint only, and status pages.

A key is read from the cluster Secret only to fingerprint it; the value
never leaves this module. Status pages are read only when their URL is
given, with a short timeout, and a page that does not answer is noted, not
an error.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import TYPE_CHECKING, Any

from paracle_nb import kube
from paracle_nb.errors import KubernetesError
from paracle_nb.secrets import fingerprint
from paracle_nb.target import Target

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY",
                 "gemini": "GEMINI_API_KEY"}


def split_list(text: str) -> tuple[str, ...]:
    """Return the items of a comma-separated parameter, blanks dropped.

    >>> split_list("OPENAI_API_KEY, ANTHROPIC_API_KEY,")
    ('OPENAI_API_KEY', 'ANTHROPIC_API_KEY')
    """
    return tuple(item.strip() for item in (text or "").split(",") if item.strip())


def key_fingerprints(target: Target, secret: str = "paracle-secrets",
                     keys: tuple[str, ...] = tuple(PROVIDER_KEYS.values())
                     ) -> pd.DataFrame:
    """Return, per API key in the Secret, its fingerprint and length only."""
    import pandas as pd

    body = kube._call(target, f"read secret {secret}",
                      kube._core(target).read_namespaced_secret, secret,
                      target.namespace)
    data = body.get("data") or {}
    rows = []
    for key in keys:
        if key not in data:
            rows.append({"secret": secret, "key": key, "present": False,
                         "fingerprint": None, "length": 0, "shape": None})
            continue
        value = base64.b64decode(data[key]).decode(errors="replace").strip()
        rows.append({"secret": secret, "key": key, "present": True,
                     "fingerprint": fingerprint(value), "length": len(value),
                     "shape": _shape(value)})
    return pd.DataFrame(rows, columns=["secret", "key", "present", "fingerprint",
                                       "length", "shape"])


def _shape(value: str) -> str:
    """Return the key's kind by its prefix, never any of its secret part."""
    for prefix in ("sk-ant-", "sk-proj-", "sk-"):
        if value.startswith(prefix):
            return f"{prefix}… ({len(value)} chars)"
    return f"unprefixed ({len(value)} chars)"


def status_pages(urls: list[str], timeout: float = 3.0) -> pd.DataFrame:
    """Return each status page's indicator; unreachable pages are noted."""
    import pandas as pd
    import urllib3

    http = urllib3.PoolManager(retries=False,
                               timeout=urllib3.Timeout(total=timeout))
    rows = []
    for url in urls:
        try:
            response = http.request("GET", url)
            status = json.loads(response.data).get("status", {})
            rows.append({"url": url, "reachable": True,
                         "indicator": status.get("indicator"),
                         "description": status.get("description")})
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            log.debug("status page %s: %s", url, exc)
            rows.append({"url": url, "reachable": False, "indicator": None,
                         "description": f"not read: {type(exc).__name__}"})
    http.clear()
    return pd.DataFrame(rows, columns=["url", "reachable", "indicator",
                                       "description"])


def configured_providers(target: Target, deployment: str, container: str = "api"
                         ) -> dict[str, Any]:
    """Return DEFAULT_LLM_PROVIDER, FALLBACK_PROVIDERS and rate limit settings."""
    spec = kube.get_deployment(target, deployment)
    containers = spec["spec"]["template"]["spec"]["containers"]
    main = next((c for c in containers if c["name"] == container), containers[0])
    env = {e["name"]: e.get("value") for e in main.get("env", [])}
    settings = {name: env.get(name) for name in
                ("DEFAULT_LLM_PROVIDER", "FALLBACK_PROVIDERS", "LLM_RATE_LIMIT",
                 "LLM_TIMEOUT")}
    for source in main.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if not name:
            continue
        try:
            body = kube._call(target, f"read configmap {name}",
                              kube._core(target).read_namespaced_config_map, name,
                              target.namespace)
        except KubernetesError:
            continue
        for key in settings:
            if settings[key] is None and key in (body.get("data") or {}):
                settings[key] = body["data"][key]
    return settings
