"""Traceback extraction and grouping on log text as the API writes it."""

from paracle_nb.tracebacks import extract, group

LOG = '''\
ts=2026-12-04T10:00:00Z level=info logger=paracle.api msg="done" status=200
ts=2026-12-04T10:00:01Z level=error logger=paracle.api msg="unhandled" request_id=a1
Traceback (most recent call last):
  File "/app/paracle/api/routes.py", line 88, in run_agent
    result = executor.run(agent, payload)
  File "/app/paracle/executor.py", line 142, in run
    tokens = payload["max_tokens"]
KeyError: 'max_tokens'
ts=2026-12-04T10:00:02Z level=error logger=paracle.api msg="unhandled" request_id=a2
Traceback (most recent call last):
  File "/app/paracle/api/routes.py", line 88, in run_agent
    result = executor.run(agent, payload)
  File "/app/paracle/executor.py", line 142, in run
    tokens = payload["max_tokens"]
KeyError: 'max_tokens'
ts=2026-12-04T10:00:03Z level=error logger=paracle.api msg="unhandled" request_id=a3
Traceback (most recent call last):
  File "/app/paracle/config.py", line 31, in llm_timeout
    return int(os.environ["LLM_TIMEOUT"])
ValueError: invalid literal for int() with base 10: 'sixty'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/app/paracle/api/routes.py", line 90, in run_agent
    timeout = config.llm_timeout()
  File "/app/paracle/config.py", line 33, in llm_timeout
    raise ConfigError("LLM_TIMEOUT must be a number of seconds, got 'sixty'")
paracle.config.ConfigError: LLM_TIMEOUT must be a number of seconds, got 'sixty'
ts=2026-12-04T10:00:04Z level=info logger=paracle.api msg="done" status=200
'''


def test_extract_finds_each_traceback_and_the_last_of_a_chain():
    found = extract(LOG.splitlines(), source="pod-a")
    assert [tb.exception for tb in found] == [
        "KeyError", "KeyError", "paracle.config.ConfigError"]
    assert found[0].innermost == "/app/paracle/executor.py:142 in run"
    assert found[2].message.startswith("LLM_TIMEOUT must be a number")
    assert "request_id=a3" in found[2].context


def test_group_counts_one_row_per_bug():
    found = extract(LOG.splitlines(), "pod-a") + extract(LOG.splitlines(), "pod-b")
    grouped = group(found)
    top = grouped.iloc[0]
    assert (top["exception"], top["count"]) == ("KeyError", 4)
    assert top["sources"] == "pod-a, pod-b"
    assert len(grouped) == 2


def test_kubectl_timestamps_are_tolerated_and_empty_is_empty():
    stamped = ["2026-12-04T10:00:01.5Z " + line for line in LOG.splitlines()]
    assert len(extract(stamped)) == 3
    assert group([]).empty


def test_groups_from_api_log_lines_of_a_real_raise():
    """A chained ConfigError, raised by the API's settings code, logged as
    the API logs it, is one group at the line that raised it."""
    import traceback

    from paracle_nb import api_errors
    from paracle_nb.logs import log_frame
    from paracle_nb.sandbox import app_code
    from paracle_nb.sandbox.api_service import logfmt

    lines = []
    for _ in range(3):
        try:
            app_code.load_settings({"LLM_TIMEOUT": "sixty"})
        except Exception as exc:
            lines.append(logfmt("error", "paracle.api", "unhandled exception",
                                error=f"{type(exc).__name__}: {exc}"))
            lines += traceback.format_exc().splitlines()
        lines.append(logfmt("error", "paracle.api", "request finished",
                            status=500))
    groups = api_errors.traceback_groups(log_frame(lines, pod="paracle-api-a"))

    assert groups.to_dict("records") == [{
        "exception": "paracle.config.ConfigError",
        "where": app_code.where("paracle.config", 'raise ConfigError(f"{name} '
                                                  "must be a number"),
        "count": 3, "sources": "paracle-api-a",
        "example_message": "LLM_TIMEOUT must be a number of seconds, got 'sixty'"}]


def test_extract_file_finds_what_extract_finds(tmp_path):
    """Random mixes of traceback, chain, timestamped and plain lines, with
    either line ending, with or without a last newline."""
    import dataclasses
    import random

    from paracle_nb.tracebacks import extract_file

    vocabulary = LOG.splitlines() + [
        "", "   ", "\t", "ValueError", "plain text line", "1 not a stamp",
        '\tFile "/app/t.py", line 4, in tabbed', "\tKeyError: 'tab'",
        'level=warning msg="see Traceback (most recent call last): above"',
        "2026-12-04T10:00:01.5Z Traceback (most recent call last):",
        '2026-12-04T10:00:01.5Z   File "/app/c.py", line 1, in h',
        "2026-12-04T10:00:01.5Z KeyError: 'z'", "2026-12-04T10:00:01.5Z "]
    rng = random.Random(20261204)
    path = tmp_path / "api.log"
    for _ in range(250):
        lines = [rng.choice(vocabulary) for _ in range(rng.randrange(1, 60))]
        text = "\n".join(lines) + rng.choice(["", "\n", "\r\n"])
        path.write_bytes(text.replace("\n", rng.choice(["\n", "\r\n"])).encode())
        wanted = [dataclasses.astuple(tb) for tb in extract(lines, "pod-a")]

        found = extract_file(path, "pod-a")
        assert [dataclasses.astuple(tb) for tb in found] == wanted, text
