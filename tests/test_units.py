import pytest

from paracle_nb.errors import ParameterError
from paracle_nb.units import (
    format_bytes,
    format_duration,
    parse_duration,
    parse_quantity,
)


@pytest.mark.parametrize("text, expected", [
    ("512Mi", 512 * 2**20), ("1Gi", 2**30), ("250m", 0.25), ("2", 2.0),
    ("1k", 1000.0), ("1.5Gi", 1.5 * 2**30), (None, None), ("", None),
])
def test_parse_quantity(text, expected):
    assert parse_quantity(text) == expected


def test_parse_quantity_rejects_garbage():
    with pytest.raises(ValueError):
        parse_quantity("lots")


@pytest.mark.parametrize("text, seconds", [
    ("10min", 600), ("5m", 300), ("1h30m", 5400), ("45s", 45), ("2h", 7200),
    ("1d", 86400), (30, 30), ("90", 90), ("500ms", 0.5), ("10 minutes", 600),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "10 parsecs", "", "m10", True, "5m later"])
def test_parse_duration_refuses(text):
    with pytest.raises(ParameterError, match="not a duration"):
        parse_duration(text)


def test_formatting():
    assert format_bytes(512 * 2**20) == "512.0 MiB"
    assert format_bytes(100) == "100 B"
    assert format_bytes(None) == "-"
    assert format_duration(125) == "2m05s"
    assert format_duration(7500) == "2h05m"
    assert format_duration(9) == "9s"
