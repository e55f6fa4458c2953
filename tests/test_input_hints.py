"""Hints for a mistyped sweep tag, and long texts that say they were cut."""

import pandas as pd
import pytest

from paracle_nb import sweep
from paracle_nb.diagnosis import pods
from paracle_nb.diagnosis import slow_queries as sq
from paracle_nb.errors import ParameterError
from paracle_nb.runbook import clip_text


def test_a_mistyped_tag_gets_the_closest_one():
    with pytest.raises(ParameterError) as refused:
        sweep.select_runbooks(["databse"])

    message = str(refused.value)
    assert "unknown tag databse (did you mean 'database'?)" in message
    assert "a runbook's name selects it too" in message


def test_a_mistyped_runbook_name_gets_the_closest_one():
    with pytest.raises(ParameterError, match="did you mean 'api/high-latency'"):
        sweep.select_runbooks(["api/high-latncy"])


def test_a_tag_unlike_any_gets_no_guess():
    with pytest.raises(ParameterError) as refused:
        sweep.select_runbooks(["zzzz"])
    assert "did you mean" not in str(refused.value)


@pytest.mark.parametrize("text, limit, shown", [
    ("short", 10, "short"),
    ("exactly10!", 10, "exactly10!"),
    ("eleven chars", 10, "eleven ch…"),
])
def test_clip_text_marks_a_cut(text, limit, shown):
    assert clip_text(text, limit) == shown
    assert len(clip_text(text, limit)) <= limit


def test_last_log_line_in_the_sentence_ends_in_an_ellipsis_when_cut():
    line = "psycopg.OperationalError: " + "x" * 300
    logs = pd.DataFrame([{"pod": "api-1", "container": "api", "restarts": 3,
                          "last_line": line, "log": line}])

    sentence = pods.describe_logs(logs)

    assert f"`{line[:159]}…`" in sentence


def test_long_running_query_in_the_summary_ends_in_an_ellipsis_when_cut():
    query = "SELECT " + ", ".join(f"column_{n}" for n in range(30)) + " FROM agents"
    active = pd.DataFrame([{"pid": 21, "duration_s": 900.0, "wait_event_type": None,
                            "wait_event": None, "application": "paracle-api",
                            "role": "paracle", "query": query}])

    finding = sq._long_running(active, long_query_s=60.0)

    assert finding is not None
    assert f"`{query[:79]}…`" in finding.summary
