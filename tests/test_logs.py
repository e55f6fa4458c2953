"""Parsing the API's logfmt lines and summing up LLM calls (pure)."""

import datetime as dt

import pandas as pd
import pytest

from paracle_nb.logs import llm_durations, log_frame, parse_logfmt, recent
from paracle_nb.sandbox.api_service import logfmt

NOW = dt.datetime(2026, 12, 4, 15, 3, tzinfo=dt.timezone.utc)

LINES = """\
ts=2026-12-04T15:02:11.532Z level=info logger=paracle.api msg="request finished" \
method=POST path=/v1/agents/run status=200 duration_ms=812 llm_provider=openai \
llm_duration=0.655 request_id=9f2c41d7e0a3
ts=2026-12-04T15:02:12.047Z level=info logger=paracle.api msg="request finished" \
method=GET path=/v1/agents status=200 duration_ms=23 request_id=1b7e90c2f4d8
ts=2026-12-04T15:02:13.001Z level=error logger=paracle.llm msg="llm call failed" \
provider=openai error="timed out after 1.5s" timeout=1.5
ts=2026-12-04T15:02:13.002Z level=error logger=paracle.api msg="request finished" \
method=POST path=/v1/agents/run status=504 duration_ms=1503 llm_provider=openai \
llm_duration=1.501 request_id=5d03a8e6b1c9
ts=2026-12-04T15:02:14.100Z level=error logger=paracle.llm msg="llm call failed" \
provider=anthropic status=429 error="Rate limit exceeded" retry_after=20
ts=2026-12-04T15:02:14.101Z level=error logger=paracle.api msg="request finished" \
method=POST path=/v1/agents/run status=503 duration_ms=210 llm_provider=anthropic \
llm_duration=0.204 request_id=0c6f2e9a7b15
ts=2026-12-04T15:02:15.000Z level=error logger=paracle.api msg="unhandled exception" \
error="KeyError: 'model'" request_id=e8b4d1f07a26
Traceback (most recent call last):
  File "/app/paracle/api/routes.py", line 88, in run_agent
KeyError: 'model'
ts=2026-12-04T14:40:00.000Z level=info logger=paracle.api msg="request finished" \
method=POST path=/v1/agents/run status=200 duration_ms=900 llm_provider=openai \
llm_duration=0.850 request_id=7a91c3e5d2f0
"""


def test_parse_logfmt_reads_quoted_and_bare_values():
    fields = parse_logfmt('ts=2026-12-04T15:02:11Z level=error msg="llm call '
                          'failed" error="said \\"no\\"" status=429 empty=')
    assert fields == {"ts": "2026-12-04T15:02:11Z", "level": "error",
                      "msg": "llm call failed", "error": 'said "no"',
                      "status": "429", "empty": ""}


def test_parse_logfmt_of_plain_text_is_empty():
    assert parse_logfmt("Traceback (most recent call last):") == {}


def test_what_the_api_writes_parses_back():
    line = logfmt("error", "paracle.llm", "llm call failed", provider="openai",
                  status=429, error='Rate limit "exceeded"', skipped=None)
    fields = parse_logfmt(line)
    assert fields["msg"] == "llm call failed"
    assert fields["error"] == 'Rate limit "exceeded"'
    assert fields["status"] == "429" and "skipped" not in fields
    assert dt.datetime.fromisoformat(fields["ts"].replace("Z", "+00:00"))


def test_log_frame_types_and_plain_lines():
    frame = log_frame(LINES.splitlines(), pod="paracle-api-1")
    assert len(frame) == 11  # 8 logfmt lines, 3 of a traceback
    assert str(frame["ts"].dt.tz) == "UTC"
    assert frame.loc[0, "duration_ms"] == 812.0
    assert frame.loc[0, "llm_duration"] == pytest.approx(0.655)
    assert frame.loc[0, "status"] == "200"  # status stays as the log wrote it
    assert frame.loc[4, "retry_after"] == "20"  # keys beyond the usual ones
    traceback = frame[frame["msg"].str.startswith("Traceback")]
    assert len(traceback) == 1 and traceback["level"].isna().all()
    assert set(frame["pod"]) == {"paracle-api-1"}


def test_log_frame_of_nothing_has_the_columns():
    frame = log_frame([])
    assert frame.empty and {"ts", "level", "llm_duration"} <= set(frame.columns)


def test_recent_keeps_the_window():
    frame = log_frame(LINES.splitlines())
    assert len(recent(frame, "5m", NOW)) == 7  # stamped lines of the last 5 min
    assert len(recent(frame, "", NOW)) == len(frame)


def test_llm_durations_per_provider_with_timeouts():
    llm = llm_durations(log_frame(LINES.splitlines()), "5m", NOW)
    assert list(llm["provider"]) == ["openai", "anthropic"]
    openai = llm.iloc[0]
    assert (openai["calls"], openai["failed"], openai["timeouts"]) == (2, 1, 1)
    assert (openai["p50_ms"], openai["max_ms"], openai["timeout_ms"]) == (
        1078, 1501, 1500)
    anthropic = llm.iloc[1]
    assert (anthropic["calls"], anthropic["failed"], anthropic["timeouts"]) == (
        1, 1, 0)
    assert anthropic["p95_ms"] == 204 and pd.isna(anthropic["timeout_ms"])


def test_llm_durations_without_llm_lines():
    lines = [LINES.splitlines()[1]]
    assert llm_durations(log_frame(lines)).empty
