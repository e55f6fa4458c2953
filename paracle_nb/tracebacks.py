"""Python tracebacks in API logs: extracted, and grouped by where they raise.

Grouping key is the exception type and the innermost frame (file, line,
function): one bug is one row however many requests it failed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

_START = "Traceback (most recent call last):"
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")
_CHAINED = ("During handling of the above exception",
            "The above exception was the direct cause")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z?\s")


@dataclasses.dataclass
class Traceback:
    """One traceback: its frames, and the exception it ended with."""

    exception: str
    message: str
    frames: list[tuple[str, int, str]]
    source: str = ""
    context: str = ""

    @property
    def innermost(self) -> str:
        if not self.frames:
            return "(no frame)"
        file, line, func = self.frames[-1]
        return f"{file}:{line} in {func}"


def extract(lines: Iterable[str], source: str = "") -> list[Traceback]:
    """Return every traceback in a log; a chain counts as its last exception."""
    found: list[Traceback] = []
    frames: list[tuple[str, int, str]] | None = None
    context = previous = ""
    chained = False
    for raw in lines:
        line = _TIMESTAMP.sub("", raw.rstrip("\n"))
        if line.startswith(_START):
            frames = []
            if not chained:
                context = previous
            continue
        if frames is None:
            if line.startswith(_CHAINED):
                chained = True
            elif line.strip():
                previous, chained = line, False
            continue

        frame = _FRAME.match(line)
        if frame:
            frames.append((frame["file"], int(frame["line"]), frame["func"]))
            continue
        if line.startswith(" ") or not line.strip():
            continue
        exception = _EXCEPTION.match(line)
        if exception:
            tb = Traceback(exception["type"], exception["message"] or "", frames,
                           source, context)
            # The last link of a chain is what reached the user.
            if chained and found:
                found[-1] = tb
            else:
                found.append(tb)
        frames, chained, previous = None, False, line
    return found


def group(tracebacks: list[Traceback]) -> pd.DataFrame:
    """Return one row per (exception type, innermost frame), most frequent first."""
    import pandas as pd

    rows = [{"exception": tb.exception, "where": tb.innermost,
             "message": tb.message, "source": tb.source} for tb in tracebacks]
    columns = ["exception", "where", "count", "sources", "example_message"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["exception", "where"], as_index=False).agg(
        count=("message", "size"),
        sources=("source", lambda s: ", ".join(sorted(set(s)))),
        example_message=("message", "first"))
    return grouped.sort_values("count", ascending=False, ignore_index=True)[columns]
