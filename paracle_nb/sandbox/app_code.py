"""Pieces of the Paracle API's own code, run by the lab's API stand-in.

The 500-error incidents need tracebacks that come from raising in real
code, with the frames a real API pod would log. These modules are compiled
under the file names they have in the API's image (``/app/paracle/...``)
and their source is registered with :mod:`linecache`, so
``traceback.format_exc()`` prints the same frames and code lines as the
API would. Nothing here is imported by the runbooks.
"""

from __future__ import annotations

import base64
import linecache
import sys
import textwrap
import threading
import time
import types
from collections.abc import Mapping
from typing import Any

APP_ROOT = "/app/paracle"

_CONFIG = '''
"""Settings of the API, read from its environment (the paracle-config ConfigMap)."""


class ConfigError(Exception):
    """A setting the API cannot run with."""


def seconds(name, raw):
    """Return a duration setting as float seconds."""
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


def count(name, raw):
    """Return a count setting as a positive int."""
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


def load_settings(env):
    """Return the API's settings, checked; raise ConfigError on a bad value."""
    return {
        "llm_timeout": seconds("LLM_TIMEOUT", env.get("LLM_TIMEOUT", "60")),
        "cache_ttl": seconds("CACHE_TTL", env.get("CACHE_TTL", "3600")),
        "db_pool_size": count("DB_POOL_SIZE", env.get("DB_POOL_SIZE", "20")),
        "workers": count("WORKERS", env.get("WORKERS", "4")),
    }
'''

_RUNNER = '''
"""One agent run: its settings, then the provider request."""

DEFAULTS = {"temperature": 0.2}


def agent_settings(agent_id):
    """Return an agent's stored settings (agents made before v1.0.3 lack max_tokens)."""
    if agent_id % 3 == 0:
        return dict(DEFAULTS)
    return {**DEFAULTS, "max_tokens": 1024}


def build_request(agent_id, settings):
    """Return the provider request for one run of the agent."""
    return {
        "model": "default",
        "temperature": settings["temperature"],
        "max_tokens": settings["max_tokens"],
        "metadata": {"agent_id": agent_id},
    }


def run_agent(agent_id):
    """Prepare one run of an agent."""
    settings = agent_settings(agent_id)
    return build_request(agent_id, settings)
'''

_PROVIDERS = '''
"""LLM provider clients, each SDK imported when its provider is first used."""


def openai_client():
    """Return the OpenAI client (the lab's stand-in needs none)."""
    return None


def anthropic_client():
    """Return the Anthropic client."""
    import anthropic

    return anthropic.Anthropic()


def client_for(provider):
    """Return the client of a provider."""
    factories = {"openai": openai_client, "anthropic": anthropic_client}
    return factories[provider]()
'''

_MODULES = {
    "paracle.config": ("config.py", _CONFIG),
    "paracle.agents.runner": ("agents/runner.py", _RUNNER),
    "paracle.llm.providers": ("llm/providers.py", _PROVIDERS),
}


def module(name: str) -> types.ModuleType:
    """Return one of the app's modules, compiled under its path in the image.

    The module is not put in ``sys.modules``: the lab's process has no
    ``paracle`` package and must not pretend to.
    """
    relative, source = _MODULES[name]
    filename = f"{APP_ROOT}/{relative}"
    text = textwrap.dedent(source).lstrip("\n")
    lines = text.splitlines(keepends=True)
    # Registered with no modification time, so linecache never drops it.
    linecache.cache[filename] = (len(text), None, lines, filename)

    compiled = types.ModuleType(name)
    compiled.__file__ = filename
    code = compile(text, filename, "exec")
    exec(code, compiled.__dict__)  # noqa: S102 (our own source, above)
    return compiled


def load_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Check the API's settings as the API does; ConfigError on a bad value."""
    settings: dict[str, Any] = _config().load_settings(env)
    return settings


def sdk_installed(name: str) -> bool:
    """True when a provider SDK is importable here (it must not be, for the
    missing-dependency incident)."""
    import importlib.util

    return name in sys.modules or importlib.util.find_spec(name) is not None


def where(name: str, text: str) -> str:
    """Return ``file:line in function`` of the first line of a module with ``text``.

    That is how a traceback's innermost frame names the line that raised.
    """
    import ast

    relative, source = _MODULES[name]
    body = textwrap.dedent(source).lstrip("\n")
    line = next(n for n, code in enumerate(body.splitlines(), 1) if text in code)
    function = next(node.name for node in ast.walk(ast.parse(body))
                    if isinstance(node, ast.FunctionDef)
                    and node.lineno <= line <= (node.end_lineno or node.lineno))
    return f"{APP_ROOT}/{relative}:{line} in {function}"


_loaded: dict[str, types.ModuleType] = {}


def _config() -> types.ModuleType:
    if "paracle.config" not in _loaded:
        _loaded["paracle.config"] = module("paracle.config")
    return _loaded["paracle.config"]


KEY_NAMES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


class ClusterSettings:
    """What the API pods get from the cluster: ConfigMap and Secret values.

    The stand-in checks the ``paracle-config`` ConfigMap on every request,
    as the API does when it loads its settings, and sends the provider key
    the ``paracle-secrets`` Secret holds. Both are read from the lab's
    Kubernetes store at most once a second. A ConfigMap or key that is not
    there means the defaults (and the lab's own key).
    """

    def __init__(self, store: Any, namespace: str, *,
                 configmap: str = "paracle-config",
                 secret: str = "paracle-secrets") -> None:
        self.store = store
        self.namespace = namespace
        self.configmap, self.secret = configmap, secret
        self._read = -1.0
        self._config: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def check_settings(self) -> dict[str, Any]:
        """Load the API's settings from the ConfigMap; ConfigError when bad."""
        self._refresh()
        return load_settings(self._config)

    def api_key(self, provider: str) -> str | None:
        """Return the key the Secret holds for a provider (None: not set)."""
        self._refresh()
        return self._keys.get(KEY_NAMES.get(provider, ""))

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._read < 1.0:
                return
            configmap = self.store.get("ConfigMap", self.namespace, self.configmap)
            secret = self.store.get("Secret", self.namespace, self.secret)
            self._config = dict((configmap or {}).get("data") or {})
            data = (secret or {}).get("data") or {}
            self._keys = {name: base64.b64decode(data[name]).decode().strip()
                          for name in KEY_NAMES.values() if name in data}
            self._read = time.monotonic()

    def __repr__(self) -> str:
        return f"<ClusterSettings {self.namespace}/{self.configmap}>"
