"""A recorded history of the API's metrics, as timestamped OpenMetrics text.

What Prometheus would have scraped from the API at each instant: the
request histogram and counter (cumulative), the in-flight gauge and
``up``. :func:`~paracle_nb.sandbox.prometheus.build_blocks` turns the text
into TSDB blocks, so a lab Prometheus answers range queries over a whole
incident at once::

    history = ApiMetricHistory()
    history.steady(start, start + 600, latency=0.2, rps=20)
    history.steady(start + 600, start + 900, latency=2.0, rps=20)
    PrometheusServer(history=history.openmetrics()).start()
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from paracle_nb.sandbox.api_service import BUCKETS, RUN_PATH

Labels = tuple[tuple[str, str], ...]


class ApiMetricHistory:
    """Requests served and scrapes taken at chosen Unix times."""

    def __init__(self, job: str = "paracle-api", instance: str = "paracle-api:8000",
                 buckets: tuple[float, ...] = BUCKETS) -> None:
        self.target = (("instance", instance), ("job", job))
        self.buckets = buckets
        self._counts: dict[Labels, list[int]] = defaultdict(
            lambda: [0] * (len(buckets) + 1))
        self._sums: dict[Labels, float] = defaultdict(float)
        self._in_flight = 0.0
        self._scrapes: list[tuple[float, dict[Labels, list[int]],
                                  dict[Labels, float], float]] = []

    def serve(self, durations: list[float], *, status: int = 200,
              method: str = "POST", handler: str = RUN_PATH,
              in_flight: float | None = None) -> None:
        """Count requests that finished since the last scrape."""
        labels = (("handler", handler), ("method", method), ("status", str(status)))
        counts = self._counts[labels]
        for seconds in durations:
            counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sums[labels] += seconds
        if in_flight is not None:
            self._in_flight = in_flight

    def scrape(self, at: float) -> None:
        """Record every series' value at Unix time ``at`` (after the last one)."""
        if self._scrapes and at <= self._scrapes[-1][0]:
            raise ValueError("scrapes must come in increasing time order")
        self._scrapes.append((at, {k: list(v) for k, v in self._counts.items()},
                              dict(self._sums), self._in_flight))

    def steady(self, start: float, end: float, *, latency: float, rps: float,
               status: int = 200, step: float = 15.0) -> None:
        """Serve ``rps`` requests a second, each taking ``latency``, scraping
        every ``step`` seconds from ``start`` until before ``end``."""
        at = start
        while at < end:
            per_scrape = round(rps * step)
            self.serve([latency] * per_scrape, status=status,
                       in_flight=rps * latency)
            self.scrape(at)
            at += step

    def openmetrics(self) -> str:
        """Return the history as OpenMetrics text, ``# EOF`` included."""
        series = sorted({labels for _, counts, _, _ in self._scrapes
                         for labels in counts})
        lines = ["# HELP http_request_duration_seconds Time to serve an HTTP "
                 "request.", "# TYPE http_request_duration_seconds histogram"]
        bounds = [*(repr(float(b)) for b in self.buckets), "+Inf"]
        for labels in series:
            for at, counts, sums, _ in self._scrapes:
                own = counts.get(labels)
                if own is None:
                    continue
                total = 0
                for bound, count in zip(bounds, own, strict=True):
                    total += count
                    lines.append(self._sample("http_request_duration_seconds_bucket",
                                              labels + (("le", bound),), total, at))
                lines.append(self._sample("http_request_duration_seconds_count",
                                          labels, total, at))
                lines.append(self._sample("http_request_duration_seconds_sum",
                                          labels, sums[labels], at))

        lines += ["# HELP http_requests HTTP requests served.",
                  "# TYPE http_requests counter"]
        for labels in series:
            for at, counts, _, _ in self._scrapes:
                if labels in counts:
                    lines.append(self._sample("http_requests_total", labels,
                                              sum(counts[labels]), at))

        lines += ["# HELP http_requests_in_flight HTTP requests being served or "
                  "queued.", "# TYPE http_requests_in_flight gauge"]
        lines += [self._sample("http_requests_in_flight", (), in_flight, at)
                  for at, _, _, in_flight in self._scrapes]
        lines += ["# HELP up Whether the target was scraped.", "# TYPE up gauge"]
        lines += [self._sample("up", (), 1, at) for at, _, _, _ in self._scrapes]
        return "\n".join(lines) + "\n# EOF\n"

    def _sample(self, name: str, labels: Labels, value: float, at: float) -> str:
        pairs = sorted(self.target + labels)
        text = ",".join(f'{k}="{v}"' for k, v in pairs)
        return f"{name}{{{text}}} {float(value)!r} {at:.3f}"
