"""Reproduce 500 errors and LLM provider errors on the API stand-in, for real.

The 500s come from raising in code: the API's own modules (see
:mod:`paracle_nb.sandbox.app_code`) fail where a real deployment would,
and the stand-in logs each failure with its Python traceback. The LLM
errors are real answers of the lab's providers: 429s, 401s for a revoked
key the Secret still holds, and 5xx. Every incident runs a bounded, paced
load until Prometheus sees the 5xx rate, and keeps it running while held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from paracle_nb import api_errors
from paracle_nb.errors import SandboxError
from paracle_nb.sandbox import app_code
from paracle_nb.sandbox.live import settle
from paracle_nb.sandbox.load import Load
from paracle_nb.secrets import fingerprint
from paracle_nb.target import Target

if TYPE_CHECKING:
    from paracle_nb.sandbox.lab import Lab

log = logging.getLogger(__name__)

WINDOW = "20s"
CONFIGMAP = "paracle-config"
SECRET = "paracle-secrets"
# Bounds of an incident's load: threads, pause between one thread's
# requests, requests and seconds at most; a failing API answers in a
# millisecond, so an unpaced load would flood the logs.
CONCURRENCY = 4
PAUSE_S = 0.1
REQUESTS = 5_000
LOAD_SECONDS = 150.0
SETTLE_TIMEOUT = 40.0
MIN_RATIO = 0.05


class PacedLoad(Load):
    """A :class:`Load` whose threads pause between requests."""

    def __init__(self, url: str, *, pause: float = PAUSE_S, **options: Any
                 ) -> None:
        super().__init__(url, **options)
        self.pause = pause

    def _send(self, body: bytes) -> int:
        status = super()._send(body)
        self._stop.wait(self.pause)
        return status


@dataclasses.dataclass
class ErrorIncident:
    """An error incident being held: its cause, the load, what Prometheus saw."""

    cause: str
    load: Load
    window: str
    ratio: float | None = None
    settled_in_s: float = 0.0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    undo: list[Callable[[], None]] = dataclasses.field(default_factory=list)


# -- 500 Internal Server Errors -------------------------------------------------

def unhandled_exception(lab: Lab, *, window: str = WINDOW) -> ErrorIncident:
    """Every third agent run fails: its settings lack ``max_tokens`` (KeyError)."""
    runner = app_code.module("paracle.agents.runner")
    runs = itertools.count(1)
    lab.live.require_api().raise_in_requests(lambda: runner.run_agent(next(runs)))
    incident = _under_load(lab, "unhandled-exception", window)
    incident.details.update(
        exception="KeyError", message="'max_tokens'",
        where=app_code.where("paracle.agents.runner", 'settings["max_tokens"]'))
    return incident


def missing_dependency(lab: Lab, *, window: str = WINDOW) -> ErrorIncident:
    """Runs of agents on Anthropic import its SDK, which the image lacks."""
    if app_code.sdk_installed("anthropic"):
        raise SandboxError("the missing-dependency incident needs the `anthropic` "
                           "package NOT installed where the lab runs")
    providers = app_code.module("paracle.llm.providers")
    calls = itertools.count(1)
    # Every fourth agent is pinned to Anthropic (as the stand-in routes them).
    lab.live.require_api().raise_in_requests(lambda: providers.client_for(
        "anthropic" if next(calls) % 4 == 0 else "openai"))
    incident = _under_load(lab, "missing-dependency", window)
    incident.details.update(
        exception="ModuleNotFoundError", module="anthropic",
        where=app_code.where("paracle.llm.providers", "import anthropic"))
    return incident


def config_error(lab: Lab, *, key: str = "LLM_TIMEOUT", value: str = "sixty",
                 window: str = WINDOW) -> ErrorIncident:
    """The ConfigMap gets a bad value; the API fails loading its settings."""
    from paracle_nb.sandbox.lab import NAMESPACE

    store = lab.kube.store
    configmap = store.get("ConfigMap", NAMESPACE, CONFIGMAP)
    if configmap is None:
        raise SandboxError(f"the lab has no ConfigMap {CONFIGMAP}")
    before = (configmap.get("data") or {}).get(key)
    configmap.setdefault("data", {})[key] = value
    store.put(configmap)
    incident = _under_load(lab, "configuration-error", window)
    incident.details.update(
        exception="paracle.config.ConfigError", key=key, value=value,
        before=before, source=f"configmap/{CONFIGMAP}",
        where=app_code.where("paracle.config", "raise ConfigError(f\"{name} must "
                                               "be a number"))
    return incident


# -- OpenAI/Anthropic API errors ------------------------------------------------

def llm_rate_limited(lab: Lab, *, provider: str = "openai",
                     window: str = WINDOW) -> ErrorIncident:
    """The provider answers 429 with Retry-After to every call."""
    lab.live.providers[provider].set_mode("rate-limited")
    incident = _under_load(lab, "llm-rate-limited", window)
    incident.details.update(provider=provider, status=429)
    return incident


def llm_outage(lab: Lab, *, provider: str = "openai", window: str = WINDOW
               ) -> ErrorIncident:
    """The provider answers 503 and 502 to every call."""
    lab.live.providers[provider].set_mode("outage")
    incident = _under_load(lab, "llm-provider-outage", window)
    incident.details.update(provider=provider, status=[502, 503])
    return incident


def llm_invalid_key(lab: Lab, *, provider: str = "openai", window: str = WINDOW
                    ) -> ErrorIncident:
    """The key was rotated at the provider; the Secret still holds the old one.

    The provider accepts only its current key, so the API's calls get real
    401s. Only fingerprints of either key are kept.
    """
    key_name = app_code.KEY_NAMES[provider]
    current = f"sk-lab-{provider}-{secrets.token_hex(16)}"
    revoked = f"sk-lab-{provider}-{secrets.token_hex(16)}"
    lab.live.providers[provider].api_key = current
    lab.write_secret(SECRET, {key_name: revoked})
    try:
        incident = _under_load(lab, "llm-invalid-key", window)
    except BaseException:
        lab.live.providers[provider].api_key = None
        raise
    incident.details.update(provider=provider, status=401, secret=SECRET,
                            secret_key=key_name,
                            key_fingerprint=fingerprint(revoked),
                            current_key_fingerprint=fingerprint(current))
    incident.undo.append(lambda: setattr(lab.live.providers[provider],
                                         "api_key", None))
    return incident


# -- holding and healing --------------------------------------------------------

def heal(lab: Lab, incident: ErrorIncident) -> None:
    """Stop the load, undo the fault and load the healthy cluster again.

    Reloading the cluster also restores the ConfigMap and the Secret, and
    starts the pods' logs afresh, as a rollout after the fix would.
    """
    result = incident.load.stop()
    log.info("error incident %s over: %s", incident.cause, result.summary())
    for undo in incident.undo:
        undo()
    lab.live.heal()
    lab.load_scenario("healthy")


@contextlib.contextmanager
def healthy_traffic(lab: Lab, *, window: str = WINDOW, concurrency: int = 2
                    ) -> Iterator[Load]:
    """Hold light traffic until Prometheus sees requests and no 5xx in ``window``."""
    load = _load(lab, concurrency).start()
    try:
        if lab.live.prometheus is not None:
            _settle(lab, window, lambda rate: (rate["requests_per_second"] or 0) > 0
                    and rate["errors_per_second"] == 0)
        else:
            time.sleep(2.0)
        yield load
    finally:
        load.stop()


def _load(lab: Lab, concurrency: int = CONCURRENCY) -> PacedLoad:
    url = lab.live.require_api().url
    return PacedLoad(url, requests=REQUESTS, concurrency=concurrency,
                     seconds=LOAD_SECONDS, timeout=10.0)


def _under_load(lab: Lab, cause: str, window: str) -> ErrorIncident:
    load = _load(lab).start()
    incident = ErrorIncident(cause, load, window)
    try:
        started = time.monotonic()
        if lab.live.prometheus is None:
            time.sleep(3.0)  # only the logs can tell
        else:
            rate = _settle(lab, window, lambda rate: (rate["ratio"] or 0.0)
                           > MIN_RATIO)
            incident.ratio = rate["ratio"]
        # Enough failed requests in the logs for every rule's minimum.
        time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
        incident.settled_in_s = round(time.monotonic() - started, 1)
    except BaseException:
        load.stop()
        lab.live.heal()
        raise
    log.info("error incident %s: 5xx ratio %s after %.1fs", cause,
             incident.ratio, incident.settled_in_s)
    return incident


def _settle(lab: Lab, window: str, good: Callable[[dict[str, Any]], bool]
            ) -> dict[str, Any]:
    """Wait until the 5xx rate over ``window`` satisfies ``good``; return it."""
    assert lab.live.prometheus is not None
    target = Target(prometheus_url=lab.live.prometheus.url, timeout_seconds=2.0)
    return settle(lambda: api_errors.error_rate(target, window), good,
                  f"the 5xx rate over {window}", SETTLE_TIMEOUT)

