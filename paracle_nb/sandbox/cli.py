"""``paracle-nb sandbox up|down|incidents``: the lab from a terminal."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import threading
import time

from paracle_nb.errors import SandboxError
from paracle_nb.sandbox import procs

STATE_FILE = pathlib.Path(".sandbox") / "state.json"


def main(args: argparse.Namespace) -> int:
    if args.lab_command == "incidents":
        from paracle_nb.sandbox.lab import INCIDENTS

        width = max(map(len, INCIDENTS))
        for name, (start, _) in INCIDENTS.items():
            about = (start.__doc__ or "").strip().splitlines()
            print(f"{name:<{width}}  {about[0] if about else ''}")
        return 0
    if args.lab_command == "down":
        return _down()
    return _up(args.parameters_out, args.incident)


def _up(parameters_out: str, incident_names: list[str]) -> int:
    from paracle_nb.sandbox.lab import INCIDENTS, Lab

    unknown = [n for n in incident_names if n not in INCIDENTS]
    if unknown:
        raise SandboxError(f"unknown incident {unknown[0]!r}; known: "
                           f"{', '.join(INCIDENTS)}")
    running = _running_lab()
    if running:
        raise SandboxError(f"a lab is already running here (pid {running}); "
                           "stop it with `paracle-nb sandbox down` first")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out = pathlib.Path(parameters_out)

    with Lab() as lab:
        for name in incident_names:
            lab.reproduce(name)
        lab.write_parameters(out)
        STATE_FILE.parent.mkdir(exist_ok=True)
        STATE_FILE.write_text(json.dumps({"pid": os.getpid(),
                                          "parameters": str(out)}))
        print(f"Lab up. Parameters written to {out}:\n")
        print(out.read_text())
        print("Incidents active: " + (", ".join(incident_names) or "none (healthy)"))
        print("Open a runbook with environment = \"sandbox\", or run e.g.\n"
              f"  paracle-nb run database/connection-pool-exhausted "
              f"--parameters {out}\nCtrl-C (or `paracle-nb sandbox down`) stops it.")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            out.unlink(missing_ok=True)
            STATE_FILE.unlink(missing_ok=True)
    print("Lab stopped.")
    return 0


def _running_lab() -> int | None:
    """Return the PID of the lab started from this folder, if it still runs."""
    try:
        pid = int(json.loads(STATE_FILE.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    return pid if procs.pid_alive(pid) else None


def _down(wait_s: float = 60.0) -> int:
    pid = _running_lab()
    if pid is None:
        existed = STATE_FILE.exists()
        STATE_FILE.unlink(missing_ok=True)
        if existed:
            raise SandboxError("the lab's process is gone; removed its stale state")
        raise SandboxError("no running lab found (no .sandbox/state.json here)")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and procs.pid_alive(pid):
        time.sleep(0.2)
    if procs.pid_alive(pid):
        raise SandboxError(f"the lab (pid {pid}) did not stop within {wait_s:g}s")
    print(f"Lab (pid {pid}) stopped.")
    return 0
