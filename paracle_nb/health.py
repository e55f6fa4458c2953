"""The API's health endpoint, checked the way the guide's curl does."""

from __future__ import annotations

import time
from typing import Any

from paracle_nb.errors import ParameterError, TargetTimeout, TargetUnreachable
from paracle_nb.target import Target


def check_health(target: Target, path: str = "/health") -> dict[str, Any]:
    """Return the health endpoint's status code, latency and body head."""
    import urllib3

    if not target.api_url:
        raise ParameterError("no `api_url` in the parameters", target="api")
    url = target.api_url.rstrip("/") + path
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(
        total=target.timeout_seconds))
    started = time.monotonic()
    try:
        response = http.request("GET", url)
    except urllib3.exceptions.TimeoutError:
        raise TargetTimeout(f"{url} did not answer within "
                            f"{target.timeout_seconds:g}s", target="api") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TargetUnreachable(f"{url} is unreachable ({reason})",
                                target="api") from None
    finally:
        http.clear()
    return {"url": url, "status": response.status,
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
            "body": response.data[:200].decode(errors="replace")}
