"""A large API log, as ``kubectl logs`` of a failing ``paracle-api`` pod writes it.

Mostly finished requests in logfmt, with tracebacks from a handful of bugs
in between: plain ones, chained ones (``During handling ...``) and some
whose error line mentions a traceback without starting one.
"""

from __future__ import annotations

import random
from pathlib import Path

_REQUEST = ("ts=2026-12-04T15:{m:02d}:{s:02d}.{ms:03d}Z level=info logger=paracle.api "
            'msg="request finished" method=POST path=/v1/agents/run status=200 '
            "duration_ms={d} llm_provider=openai llm_duration=0.{d} "
            "request_id={rid:012x}\n")
_ERROR = ("ts=2026-12-04T15:{m:02d}:{s:02d}.{ms:03d}Z level=error logger=paracle.api "
          'msg="unhandled exception" request_id={rid:012x}\n')
_MENTION = ("ts=2026-12-04T15:{m:02d}:{s:02d}.{ms:03d}Z level=warning "
            'logger=paracle.worker msg="retrying after Traceback (most recent call '
            'last): see previous line" request_id={rid:012x}\n')

_BUGS = [
    ('  File "/app/paracle/api/routes.py", line 88, in run_agent\n'
     "    result = executor.run(agent, payload)\n"
     '  File "/app/paracle/executor.py", line 142, in run\n'
     '    tokens = payload["max_tokens"]\n'
     "KeyError: 'max_tokens'\n"),
    ('  File "/app/paracle/api/routes.py", line 61, in list_agents\n'
     "    rows = store.agents(tenant)\n"
     '  File "/app/paracle/store.py", line 204, in agents\n'
     "    import paracle_vector\n"
     "ModuleNotFoundError: No module named 'paracle_vector'\n"),
    ('  File "/app/paracle/api/routes.py", line 90, in run_agent\n'
     "    timeout = config.llm_timeout()\n"
     '  File "/app/paracle/config.py", line 31, in llm_timeout\n'
     '    return int(os.environ["LLM_TIMEOUT"])\n'
     "ValueError: invalid literal for int() with base 10: 'sixty'\n"
     "\nDuring handling of the above exception, another exception occurred:\n\n"
     "Traceback (most recent call last):\n"
     '  File "/app/paracle/api/routes.py", line 90, in run_agent\n'
     "    timeout = config.llm_timeout()\n"
     '  File "/app/paracle/config.py", line 33, in llm_timeout\n'
     '    raise ConfigError("LLM_TIMEOUT must be a number of seconds")\n'
     "paracle.config.ConfigError: LLM_TIMEOUT must be a number of seconds\n"),
]
_START = "Traceback (most recent call last):\n"


def write_api_log(path: Path, size_bytes: int, *, seed: int = 7,
                  error_every: int = 40) -> int:
    """Write about ``size_bytes`` of log to ``path``; return the tracebacks in it.

    One request in ``error_every`` fails with a traceback (a chain counts
    once); one in 500 writes a warning that mentions one.
    """
    rng = random.Random(seed)
    tracebacks = written = 0
    chunk: list[str] = []
    with path.open("w", encoding="utf-8") as out:
        while written < size_bytes:
            for _ in range(5000):
                rid = rng.getrandbits(48)
                stamp = {"m": rng.randrange(60), "s": rng.randrange(60),
                         "ms": rng.randrange(1000), "rid": rid}
                draw = rng.randrange(error_every * 500)
                if draw < 500:
                    chunk.append(_ERROR.format(**stamp) + _START
                                 + _BUGS[draw % len(_BUGS)])
                    tracebacks += 1
                elif draw < 500 + error_every:
                    chunk.append(_MENTION.format(**stamp))
                else:
                    chunk.append(_REQUEST.format(d=rng.randrange(50, 999), **stamp))
            text = "".join(chunk)
            chunk.clear()
            out.write(text)
            written += len(text)
    return tracebacks
