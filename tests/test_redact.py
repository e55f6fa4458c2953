"""Scrubbing: every kind of secret a run can meet becomes a fingerprint."""

import pytest

from paracle_nb.redact import Scrubber, marker


@pytest.mark.parametrize("text, secret", [
    ("postgresql://paracle:hunter2-db@db:5432/paracle", "hunter2-db"),
    ("redis://:r3dis-pass@cache:6379/0", "r3dis-pass"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def",
     "eyJhbGciOiJIUzI1NiJ9.abc.def"),
    ("using key sk-proj-AbCdEf0123456789xyz for openai", "sk-proj-AbCdEf0123456789xyz"),
    ("anthropic sk-ant-api03-ZZZZzzzz11112222", "sk-ant-api03-ZZZZzzzz11112222"),
    ('level=error msg="auth" api_key=abcd1234efgh', "abcd1234efgh"),
    ('{"password": "p@ssw0rd!"}', "p@ssw0rd!"),
    ("DB_PASSWORD: topsecret99", "topsecret99"),
])
def test_patterns_are_scrubbed(text, secret):
    scrubber = Scrubber()
    cleaned = scrubber.text(text)
    assert secret not in cleaned
    assert marker(secret) in cleaned
    assert scrubber.count >= 1


def test_known_values_are_scrubbed_anywhere():
    scrubber = Scrubber(["plain-value-no-pattern"])
    assert "plain-value" not in scrubber.text("x plain-value-no-pattern y")


def test_harmless_text_is_left_alone():
    text = "GET /health 200 duration_ms=12 status=ok tokens=512"
    assert Scrubber().text(text) == text


def test_objects_secret_data_and_env_are_scrubbed():
    scrubber = Scrubber()
    secret = {"kind": "Secret", "metadata": {"name": "s", "annotations": {
        "last-applied": "OPENAI_API_KEY=sk-lab-123456789012345"}},
        "data": {"OPENAI_API_KEY": "c2stbGFiLTEyMw=="}}
    pod_env = {"env": [{"name": "OPENAI_API_KEY", "value": "sk-live-abcdefghijklmn"},
                       {"name": "LOG_LEVEL", "value": "info"},
                       {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {
                           "name": "paracle-secrets", "key": "DATABASE_URL"}}}]}
    cleaned = scrubber.obj({"items": [secret, pod_env]})
    text = repr(cleaned)
    assert "c2stbGFiLTEyMw==" not in text and "sk-lab" not in text
    assert "sk-live" not in text and "'info'" in text
    assert "paracle-secrets" in text
