"""A real Prometheus for the lab, from the machine's ``prometheus`` binary.

Live: :class:`PrometheusServer` listens on 127.0.0.1 (port 0, read back
from its log), scrapes each job's targets every second through file-based
discovery, and itself under ``job="prometheus"``. Recorded: with
``history=`` it starts on blocks that ``promtool tsdb create-blocks-from
openmetrics`` built from timestamped samples, so range queries over an
incident window answer at once.

Prometheus is optional in the lab: a missing binary is a
:class:`MissingServerBinary` that names the package to install.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from paracle_nb.errors import MissingServerBinary, SandboxError
from paracle_nb.sandbox import procs

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install Prometheus (Debian/Ubuntu: apt-get install prometheus; "
    "conda: conda install -c conda-forge prometheus); the lab runs without "
    "it, but runbooks then get no metrics"
)
_LISTENING = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')
_START_TIMEOUT = 20.0


def prometheus_binary(name: str = "prometheus") -> Path:
    """Return the ``prometheus`` (or ``promtool``) binary, or what to install."""
    found = procs.find_binary(name)
    if found is None:
        raise MissingServerBinary(f"{name} not found on PATH; {INSTALL_HINT}")
    return found


def build_blocks(openmetrics: str, data_dir: Path) -> Path:
    """Write TSDB blocks for timestamped OpenMetrics text into ``data_dir``."""
    promtool = prometheus_binary("promtool")
    data_dir.mkdir(parents=True, exist_ok=True)
    source = data_dir.parent / f"{data_dir.name}.om.txt"
    source.write_text(openmetrics)
    done = subprocess.run(
        [str(promtool), "tsdb", "create-blocks-from", "openmetrics", "--quiet",
         str(source), str(data_dir)],
        capture_output=True, text=True, timeout=60, check=False)
    source.unlink(missing_ok=True)
    if done.returncode != 0:
        raise SandboxError("promtool could not build blocks from the history",
                           target="prometheus",
                           detail=(done.stderr or done.stdout).strip()[-500:])
    return data_dir


class PrometheusServer(procs.LabServer):
    """Prometheus on 127.0.0.1, scraping the given jobs every ``scrape_interval``.

    >>> with PrometheusServer({"paracle-api": ["127.0.0.1:8123"]}) as prom:
    ...     prom.url  # doctest: +SKIP
    'http://127.0.0.1:41234'
    """

    host = procs.LOOPBACK

    def __init__(self, jobs: Mapping[str, Sequence[str]] | None = None, *,
                 scrape_interval: str = "1s", history: str | None = None,
                 base_dir: Path | str | None = None) -> None:
        self.jobs = {job: _loopback(targets) for job, targets in
                     (jobs or {}).items()}
        self.scrape_interval = scrape_interval
        self.history = history
        self.base_dir = base_dir
        self.port = 0
        self.work_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._token: int | None = None

    def __repr__(self) -> str:
        state = f"port={self.port} pid={self.pid}" if self._proc else "stopped"
        return f"<PrometheusServer {self.host} {state}>"

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc else 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``; the server must be started."""
        if self._proc is None:
            raise SandboxError("Prometheus is not started", target="prometheus")
        return f"http://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self._dir / "prometheus.log"

    @property
    def _dir(self) -> Path:
        if self.work_dir is None:
            raise SandboxError("Prometheus was never started", target="prometheus")
        return self.work_dir

    def start(self) -> Self:
        """Start Prometheus; return once it listens (not once it has scraped)."""
        if self._proc is not None:
            return self
        binary = prometheus_binary()
        # Prometheus runs as we do: a private temp dir will do.
        self.work_dir = Path(tempfile.mkdtemp(prefix="paracle-nb-prometheus-",
                                              dir=self.base_dir))
        data = self._dir / "data"
        if self.history is not None:
            build_blocks(self.history, data)
        for job in ("prometheus", *self.jobs):
            self._write_targets(job, self.jobs.get(job, []))
        config = self._dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config(), sort_keys=False))

        args = [str(binary), f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address={self.host}:0",
                # Discovered targets are picked up in 0.1 s, not the default 5 s.
                "--scrape.discovery-reload-interval=100ms",
                "--storage.tsdb.retention.time=400d", "--log.level=info"]
        with open(self.log_file, "wb") as log_out:
            self._proc = subprocess.Popen(
                args, stdout=log_out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self._dir, env=procs.server_env())
        self._token = procs.register_started(f"prometheus (PID {self._proc.pid})",
                                             self.stop)
        try:
            port = procs.wait_for(self._listening_port, timeout=_START_TIMEOUT,
                                  what="Prometheus to listen")
        except SandboxError:
            tail = procs.log_tail(self.log_file)
            self.stop()
            raise SandboxError("Prometheus did not start", target="prometheus",
                               detail=tail) from None
        self.port = port
        self._write_targets("prometheus", [f"{self.host}:{self.port}"])
        log.info("Prometheus on %s (PID %d)", self.url, self.pid)
        return self

    def set_targets(self, job: str, targets: Sequence[str]) -> None:
        """Point a job at new ``host:port`` targets; picked up within a second."""
        if job not in self.jobs:
            raise SandboxError(f"Prometheus has no job {job!r}; it scrapes "
                               f"{', '.join(self.jobs) or 'no job'}")
        self.jobs[job] = _loopback(targets)
        self._write_targets(job, targets)

    def stop(self) -> None:
        """Stop Prometheus by the PID we hold; remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None:
            procs.stop_child(proc, grace=10.0)
            log.info("Prometheus (PID %d) stopped", proc.pid)
        if self._token is not None:
            procs.unregister_started(self._token)
            self._token = None
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None

    def _config(self) -> dict[str, object]:
        interval = self.scrape_interval
        return {
            "global": {"scrape_interval": interval, "scrape_timeout": interval,
                       "evaluation_interval": interval},
            "scrape_configs": [
                {"job_name": job, "file_sd_configs": [
                    {"files": [str(self._targets_file(job))],
                     "refresh_interval": "1s"}]}
                for job in ("prometheus", *self.jobs)],
        }

    def _targets_file(self, job: str) -> Path:
        return self._dir / "targets" / f"{job}.json"

    def _write_targets(self, job: str, targets: Sequence[str]) -> None:
        path = self._targets_file(job)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps([{"targets": list(targets)}]))
        partial.replace(path)

    def _listening_port(self) -> int:
        if self._proc is not None and self._proc.poll() is not None:
            raise SandboxError(f"Prometheus exited with code {self._proc.returncode}",
                               target="prometheus")
        match = _LISTENING.search(self.log_file.read_text(errors="replace"))
        return int(match.group(1)) if match else 0


def _loopback(targets: Sequence[str]) -> list[str]:
    for target in targets:
        if target.rsplit(":", 1)[0] not in (procs.LOOPBACK, "localhost"):
            raise SandboxError(f"the lab's Prometheus scrapes loopback only, "
                               f"not {target}")
    return list(targets)


def wait_for_first_scrape(url: str, job: str, timeout: float = 20.0) -> float:
    """Wait until Prometheus has scraped ``job`` once; return the seconds waited."""
    from paracle_nb import prometheus
    from paracle_nb.target import Target

    target = Target(prometheus_url=url, timeout_seconds=2.0)
    started = time.monotonic()
    procs.wait_for(
        lambda: prometheus.value(target, f'max(up{{job="{job}"}})') == 1,
        timeout=timeout, what=f"Prometheus to scrape job {job}", interval=0.2)
    return time.monotonic() - started
