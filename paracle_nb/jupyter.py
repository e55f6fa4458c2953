"""JupyterLab for stepping through the runbooks: loopback only, with a token.

``python -m paracle_nb.jupyter`` (what ``make lab`` runs) starts JupyterLab
on 127.0.0.1 with a generated token, in ``notebooks/``, with a ``python3``
kernel that runs this very interpreter, so ``paracle_nb`` imports in every
runbook. With ``--sandbox`` it first starts the incident lab
(``paracle-nb sandbox up``), whose ``parameters/sandbox.yaml`` the
runbooks' default ``environment = "sandbox"`` finds.

The token never reaches a log line or the terminal: JupyterLab reads it
from a private file, and the link that carries it is written to another
(``open.html``, readable by its owner alone)::

    with JupyterLab("notebooks") as lab:
        print(lab.url)                                  # no token in it
        page.goto(lab.open_url("triage.ipynb"))         # with the token
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any

from paracle_nb.errors import ParacleError
from paracle_nb.sandbox import procs
from paracle_nb.secrets import Secret

log = logging.getLogger(__name__)

#: Where ``make lab`` keeps JupyterLab's runtime files, token and log.
STATE_DIR = pathlib.Path(".sandbox") / "jupyter"

#: Settings that keep JupyterLab from fetching news, update checks or the
#: extension catalogue: nothing but loopback is ever contacted.
OFFLINE_SETTINGS = (
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class="
    "jupyterlab.handlers.announcements.NeverCheckForUpdate",
    "--LabApp.extension_manager=readonly",
)

#: JupyterLab's defaults for the runbooks (the user may still change them):
#: a runbook opens with its kernel started, and the news toast never asks
#: to fetch anything from the internet.
LAB_DEFAULTS = {
    "@jupyterlab/notebook-extension:tracker": {"autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false", "checkForUpdates": False},
}


class JupyterLabError(ParacleError):
    """JupyterLab (or the lab it was to point at) could not start."""


class JupyterLab:
    """A JupyterLab server on 127.0.0.1; ``with`` starts and stops it by PID."""

    def __init__(self, root_dir: str | os.PathLike[str], *,
                 port: int | None = None,
                 state_dir: str | os.PathLike[str] = STATE_DIR,
                 env: Mapping[str, str] | None = None,
                 python: str = sys.executable) -> None:
        self.root_dir = pathlib.Path(root_dir).resolve()
        self.port = port
        self.state_dir = pathlib.Path(state_dir).resolve()
        self.extra_env = dict(env or {})
        self.python = python
        self.token = Secret(secrets.token_urlsafe(32))
        self.process: subprocess.Popen[bytes] | None = None
        self._registration: int | None = None
        # Kernels talk to the server over Unix sockets in here, not TCP.
        self._sockets: str | None = None

    @property
    def log_file(self) -> pathlib.Path:
        return self.state_dir / "jupyterlab.log"

    @property
    def token_file(self) -> pathlib.Path:
        return self.state_dir / "token"

    @property
    def open_file(self) -> pathlib.Path:
        """A private page that opens JupyterLab with the token."""
        return self.state_dir / "open.html"

    @property
    def kernels_dir(self) -> pathlib.Path:
        """Searched before any other kernel folder (first in JUPYTER_PATH)."""
        return self.state_dir / "share"

    @property
    def url(self) -> str:
        """JupyterLab's address, without the token."""
        return f"http://{procs.LOOPBACK}:{self._port()}/lab"

    def open_url(self, notebook: str = "") -> str:
        """Return the address of ``notebook`` (relative to the root) with the token."""
        path = f"/tree/{notebook.strip('/')}" if notebook else ""
        return f"{self.url}{path}?token={self.token.reveal()}"

    def command(self) -> list[str]:
        """Return the command line that starts JupyterLab (no secret in it)."""
        command = [
            self.python, "-m", "jupyterlab",
            f"--ServerApp.ip={procs.LOOPBACK}",
            f"--ServerApp.port={self._port()}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.open_browser=False",
            # Known shortcoming: this replaces the installation's settings
            # folder, so an overrides.json or page_config.json placed there
            # by an administrator is not read by this JupyterLab.
            f"--LabApp.app_settings_dir={self.state_dir / 'settings'}",
            *OFFLINE_SETTINGS,
            *self._kernel_transport(),
        ]
        # JupyterLab refuses root unless told; the lab is for one operator.
        if procs.running_as_root():
            command.append("--allow-root")
        return command

    def _kernel_transport(self) -> list[str]:
        """Kernel sockets as files in a private folder where the OS has them.

        A short temporary folder: a socket path must fit in about 100 bytes.
        """
        if self._sockets is None:
            return []
        return ["--KernelManager.transport=ipc",
                f"--KernelManager.ip={os.path.join(self._sockets, 'kernel')}"]

    def environment(self) -> dict[str, str]:
        """Return the server's environment; its kernels inherit it."""
        env = dict(os.environ)
        env.pop("JUPYTER_TOKEN", None)
        searched = [str(self.kernels_dir), env.get("JUPYTER_PATH", "")]
        env.update({
            "JUPYTER_TOKEN_FILE": str(self.token_file),
            "JUPYTER_PATH": os.pathsep.join(p for p in searched if p),
            "JUPYTER_RUNTIME_DIR": str(self.state_dir / "runtime"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.state_dir / "workspaces"),
        })
        env.update(self.extra_env)
        return env

    def kernel_spec(self) -> dict[str, Any]:
        """Return the ``python3`` kernel spec: this interpreter, by full path."""
        return {
            "argv": [self.python, "-m", "ipykernel_launcher",
                     "-f", "{connection_file}"],
            "display_name": "Python 3 (paracle-nb)",
            "language": "python",
            "metadata": {"debugger": True},
        }

    def start(self) -> JupyterLab:
        """Start JupyterLab and wait until it answers with our token."""
        if not self.root_dir.is_dir():
            raise JupyterLabError(f"no notebooks folder at {self.root_dir}")
        if self.port is None:
            self.port = procs.free_port()
        self._write_files()
        if os.name == "posix":
            import tempfile

            self._sockets = tempfile.mkdtemp(prefix="paracle-jk-")

        log.info("starting JupyterLab on %s", self.url)
        with open(self.log_file, "ab") as output:
            # A session of its own: Ctrl-C in the terminal reaches us, and we
            # stop JupyterLab by its PID instead of it prompting on stdin.
            self.process = subprocess.Popen(
                self.command(), env=self.environment(), cwd=self.root_dir,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._registration = procs.register_started(
            f"JupyterLab (PID {self.process.pid})", self.stop)

        try:
            procs.wait_for(self._answers, timeout=90.0,
                           what=f"JupyterLab on port {self.port}", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop JupyterLab (and so its kernels) by PID; forget the token."""
        if self.process is not None:
            procs.stop_child(self.process, grace=10.0)
            log.info("JupyterLab (PID %d) stopped", self.process.pid)
        if self._registration is not None:
            procs.unregister_started(self._registration)
            self._registration = None
        self.token_file.unlink(missing_ok=True)
        self.open_file.unlink(missing_ok=True)
        if self._sockets is not None:
            import shutil

            shutil.rmtree(self._sockets, ignore_errors=True)
            self._sockets = None

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _port(self) -> int:
        if self.port is None:
            raise JupyterLabError("JupyterLab has no port until it is started")
        return self.port

    def _write_files(self) -> None:
        spec_dir = self.kernels_dir / "kernels" / "python3"
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "kernel.json").write_text(json.dumps(self.kernel_spec(),
                                                         indent=1))
        settings = self.state_dir / "settings"
        settings.mkdir(exist_ok=True)
        (settings / "overrides.json").write_text(json.dumps(LAB_DEFAULTS, indent=1))
        self.state_dir.chmod(0o700)
        procs.write_private(self.token_file, self.token.reveal())
        link = html.escape(self.open_url(), quote=True)
        procs.write_private(self.open_file, (
            f"<!DOCTYPE html><meta http-equiv='refresh' content='0;url={link}'>"
            f"<a href='{link}'>Open JupyterLab</a>\n"))

    def _answers(self) -> bool:
        """True once JupyterLab serves its API to our token; fails if it died."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise JupyterLabError(
                f"JupyterLab exited with status {self.process.returncode}",
                detail=procs.log_tail(self.log_file, 5))
        request = urllib.request.Request(
            f"http://{procs.LOOPBACK}:{self.port}/api/status",
            headers={"Authorization": f"token {self.token.reveal()}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


class SandboxProcess:
    """``paracle-nb sandbox up`` in a child process, stopped by its PID."""

    def __init__(self, incidents: Sequence[str], log_file: pathlib.Path) -> None:
        self.incidents = list(incidents)
        self.log_file = log_file
        self.state_file = pathlib.Path.cwd() / ".sandbox" / "state.json"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """Return the command that starts the lab with the chosen incidents."""
        script = pathlib.Path(sys.executable).with_name("paracle-nb")
        if not script.exists():
            raise JupyterLabError(f"no paracle-nb command at {script}; "
                                  "run scripts/dev.sh setup")
        command = [str(script), "sandbox", "up"]
        for incident in self.incidents:
            command += ["--incident", incident]
        return command

    def start(self) -> SandboxProcess:
        """Start the lab and wait until it has written its parameters file."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as output:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            procs.wait_for(self._ready, timeout=180.0, what="the incident lab",
                           interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the lab; it heals its incidents and removes its parameters."""
        if self.process is not None:
            procs.stop_child(self.process, grace=60.0)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise JupyterLabError(
                f"the incident lab exited with status {self.process.returncode}",
                detail=procs.log_tail(self.log_file, 3))
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return False
        return bool(state.get("pid") == self.process.pid)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m paracle_nb.jupyter",
        description="Start JupyterLab on 127.0.0.1 in notebooks/ until Ctrl-C.")
    parser.add_argument("--sandbox", action="store_true",
                        help="start the incident lab first and point the "
                             "runbooks at it (environment = \"sandbox\")")
    parser.add_argument("--incident", action="append", default=[],
                        help="start the lab in this incident (implies "
                             "--sandbox; repeatable; `paracle-nb sandbox "
                             "incidents` lists them)")
    parser.add_argument("--port", type=int, default=None,
                        help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--notebooks", default="notebooks", metavar="DIR",
                        help="JupyterLab's root folder (default: notebooks)")
    return parser


def _stop_on_sigterm() -> threading.Event:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    return stopping


def _announce(lab: JupyterLab, out: IO[str]) -> None:
    print(f"JupyterLab is up at {lab.url} (127.0.0.1 only).\n"
          f"Open it with the token: {lab.open_file.as_uri()}\n"
          f"  (a page only you can read; its log: {lab.log_file})\n"
          "Ctrl-C stops it.", file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run JupyterLab (and with ``--sandbox`` the lab) until Ctrl-C."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    sandbox = None
    parameters = pathlib.Path("parameters").resolve()
    stopping = _stop_on_sigterm()
    try:
        if args.sandbox or args.incident:
            print("Starting the incident lab ...", flush=True)
            sandbox = SandboxProcess(args.incident, STATE_DIR / "sandbox.log").start()
        elif not (parameters / "sandbox.yaml").exists():
            print("No parameters/sandbox.yaml: set `environment` in a runbook's "
                  "parameters cell, or start with --sandbox.", flush=True)
        env = {"PARACLE_NB_PARAMETERS": str(parameters)} if parameters.is_dir() \
            else {}
        with JupyterLab(args.notebooks, port=args.port, env=env) as lab:
            _announce(lab, sys.stdout)
            while lab.process is not None and lab.process.poll() is None:
                if stopping.wait(0.5):
                    break
    except KeyboardInterrupt:
        pass
    except ParacleError as exc:
        print(f"paracle-nb lab: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if sandbox is not None:
            sandbox.stop()
    print("JupyterLab stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
