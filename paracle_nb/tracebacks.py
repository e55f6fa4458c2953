"""Python tracebacks in API logs: extracted, and grouped by where they raise.

Grouping key is the exception type and the innermost frame (file, line,
function): one bug is one row however many requests it failed.

:func:`extract` reads lines one by one; :func:`extract_file` maps a log
file into memory and looks at the lines of tracebacks (and the line before
each) only, which makes a 200 MB file cost about what ``grep`` does. Both
find the same tracebacks.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

_START = "Traceback (most recent call last):"
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")
_CHAINED = ("During handling of the above exception",
            "The above exception was the direct cause")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z?\s")
_START_BYTES = _START.encode()
# From the marker: the rest of its line, the body (indented or empty lines)
# and the first line that is neither.
_PLAIN_REST = re.compile(rb"[^\n]*\n((?:[ ][^\n]*\n|\r?\n)*)([^ \n][^\n]*)\n")
_BODIES_KEPT = 10_000

Buffer = bytes | mmap.mmap


@dataclasses.dataclass(slots=True)
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


class _Reader:
    """The line-by-line state of extraction: inside a traceback or not."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[Traceback] = []
        self.frames: list[tuple[str, int, str]] | None = None
        self.context = self.previous = ""
        self.chained = False

    def feed(self, raw: str) -> None:
        """Take one log line (a trailing newline is ignored)."""
        line = _strip_timestamp(raw.rstrip("\n"))
        if line.startswith(_START):
            self.frames = []
            if not self.chained:
                self.context = self.previous
            return
        if self.frames is None:
            self.outside(line)
            return

        frame = _FRAME.match(line)
        if frame:
            self.frames.append((frame["file"], int(frame["line"]), frame["func"]))
            return
        if line.startswith(" ") or not line.strip():
            return
        self.end_traceback(line, self.frames)

    def outside(self, line: str) -> None:
        """Take a line, without its timestamp, that is in no traceback."""
        if line.startswith(_CHAINED):
            self.chained = True
        elif line.strip():
            self.previous, self.chained = line, False

    def end_traceback(self, line: str, frames: list[tuple[str, int, str]]) -> None:
        """Close the traceback at ``line``, recording it if ``line`` names one."""
        exception = _EXCEPTION.match(line)
        if exception:
            tb = Traceback(exception["type"], exception["message"] or "",
                           frames, self.source, self.context)
            # The last link of a chain is what reached the user.
            if self.chained and self.found:
                self.found[-1] = tb
            else:
                self.found.append(tb)
        self.frames, self.chained, self.previous = None, False, line


def _strip_timestamp(line: str) -> str:
    """Return a line without the timestamp ``kubectl logs --timestamps`` adds."""
    if line[:1].isdigit():
        return _TIMESTAMP.sub("", line)
    return line


def extract(lines: Iterable[str], source: str = "") -> list[Traceback]:
    """Return every traceback in a log; a chain counts as its last exception."""
    reader = _Reader(source)
    for raw in lines:
        reader.feed(raw)
    return reader.found


def extract_file(path: str | os.PathLike[str], source: str = "") -> list[Traceback]:
    """Return every traceback in a log file, as :func:`extract` finds them.

    Lines end with ``\\n`` or ``\\r\\n``; bytes that are not UTF-8 are
    replaced. Between tracebacks only the line before each one is looked
    at, since that alone decides its context and whether it continues a
    chain; the rest is skipped at the speed of a substring search.
    """
    # Known shortcoming: a lone "\r" is not a line end here, while Python's
    # text files (and so extract(open(path))) take it for one.
    reader = _FileReader(source)
    with open(path, "rb") as log_file:
        size = os.fstat(log_file.fileno()).st_size
        if not size:
            return []
        with mmap.mmap(log_file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            whole = data.rfind(b"\n") + 1
            reader.read(data, whole)
            if whole < size:
                reader.read(data[whole:] + b"\n", size - whole + 1)
    return reader.found


def group(tracebacks: list[Traceback]) -> pd.DataFrame:
    """Return one row per (exception type, innermost frame), most frequent first."""
    import pandas as pd

    columns = ["exception", "where", "count", "sources", "example_message"]
    if not tracebacks:
        return pd.DataFrame(columns=columns)
    # Counted here rather than by a pandas groupby: tens of thousands of
    # tracebacks fall into a handful of groups.
    groups: dict[tuple[str, str], list[Any]] = {}
    for tb in tracebacks:
        found = groups.get((tb.exception, tb.innermost))
        if found is None:
            groups[(tb.exception, tb.innermost)] = [1, {tb.source}, tb.message]
        else:
            found[0] += 1
            found[1].add(tb.source)
    rows = [{"exception": exception, "where": where, "count": count,
             "sources": ", ".join(sorted(sources)), "example_message": message}
            for (exception, where), (count, sources, message) in sorted(groups.items())]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("count", ascending=False, ignore_index=True)


class _FileReader(_Reader):
    """A :class:`_Reader` that skips, in bytes, what cannot change its state."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        # Traceback bodies seen before: one bug repeats the same lines.
        self._bodies: dict[bytes, tuple[tuple[str, int, str], ...]] = {}

    def read(self, data: Buffer, end: int) -> None:
        """Take the lines of ``data[:end]``, which ends with a newline."""
        position = skipped_from = 0
        while position < end:
            if self.frames is not None:
                # A traceback that is not plain: line by line to its end.
                position = skipped_from = self._feed_line(data, position)
                continue

            found = data.find(_START_BYTES, position, end)
            if found < 0:
                break
            line_start = data.rfind(b"\n", 0, found) + 1
            if found > line_start and not _starts_traceback(data[line_start:found]):
                position = data.find(b"\n", found) + 1
                continue
            self._feed_last_line(data, skipped_from, line_start)
            position = skipped_from = self._read_traceback(data, line_start, found)
        self._feed_last_line(data, skipped_from, end)

    def _read_traceback(self, data: Buffer, line_start: int, found: int) -> int:
        """Read a traceback from its first line; return where reading goes on.

        A plain traceback (indented or empty lines, then an unindented
        last line) is read at once, its frames parsed once per distinct
        body. Otherwise only its first line is read here.
        """
        plain = _PLAIN_REST.match(data, found)
        if plain is None:
            return self._feed_line(data, line_start)
        line = _decode(plain[2])
        # Anything that might be a frame, a timestamp or a new traceback
        # is left to the line-by-line reading, which knows them all.
        if not line or line[0].isspace() or line[0].isdigit() \
                or line.startswith(_START):
            return self._feed_line(data, line_start)

        if not self.chained:
            self.context = self.previous
        body = plain[1]
        frames = self._bodies.get(body)
        if frames is None:
            if len(self._bodies) >= _BODIES_KEPT:
                self._bodies.clear()
            frames = self._bodies[body] = _frames_of(body)
        self.end_traceback(line, list(frames))
        return plain.end()

    def _feed_line(self, data: Buffer, position: int) -> int:
        newline = data.find(b"\n", position)
        self.feed(_decode(data[position:newline]))
        return newline + 1

    def _feed_last_line(self, data: Buffer, start: int, end: int) -> None:
        """Take the last non-blank line of ``data[start:end]``, if there is one.

        No line there starts a traceback (:meth:`read` found them all), so
        the line is one outside any.
        """
        line_end = end
        while line_end > start:
            line_start = data.rfind(b"\n", start, line_end - 1) + 1 or start
            line = _strip_timestamp(_decode(data[line_start:line_end]))
            if line.strip():
                self.outside(line)
                return
            line_end = line_start


def _frames_of(body: bytes) -> tuple[tuple[str, int, str], ...]:
    """Return the frames among indented or empty lines, as :class:`_Reader` would."""
    matches = (_FRAME.match(_decode(raw)) for raw in body.split(b"\n"))
    return tuple((m["file"], int(m["line"]), m["func"]) for m in matches if m)


def _decode(raw: bytes) -> str:
    """Return a line of the file as text, without its line ending."""
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")


def _starts_traceback(prefix: bytes) -> bool:
    """Tell whether a line starts a traceback, given what precedes the marker."""
    if not prefix:
        return True
    stamp = _TIMESTAMP.match(_decode(prefix))
    return stamp is not None and stamp.end() == len(_decode(prefix))
