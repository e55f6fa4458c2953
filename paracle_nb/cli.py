"""The ``paracle-nb`` command: list, run, sandbox, demo.

Exit codes: 0 ran and found no problem; 1 ran and found a problem
(warning or worse); 2 bad input (unknown runbook, bad parameters); 3 the
run itself failed (kernel died, a cell crashed) — its artifact still says
where. ``sweep`` adds 4: a runbook found a critical problem (see
docs/findings-schema.md). A run or sweep stopped with Ctrl-C exits 130,
one stopped with SIGTERM 143; both still write their partial artifact.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from paracle_nb.errors import ParacleError
from paracle_nb.redact import protect_logs

log = logging.getLogger(__name__)

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
EXIT_CRITICAL = 4  # sweep only: page someone
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT
EXIT_TERMINATED = 143  # SIGTERM (a stopped Job, `kill`): 128 + SIGTERM


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paracle-nb", description="Executable runbooks for Paracle.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("list", help="list the runbooks")

    run = commands.add_parser("run", help="execute a runbook into an artifact")
    run.add_argument("runbook", help="name as `paracle-nb list` shows it")
    run.add_argument("--parameters", metavar="FILE",
                     help="parameters file (target and runbook parameters)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                     metavar=("NAME", "VALUE"), help="set one parameter")
    run.add_argument("--artifacts", default="artifacts", metavar="DIR",
                     help="where run folders go (default: artifacts)")
    run.add_argument("--cell-timeout", type=float, default=300.0, metavar="S",
                     help="seconds one cell may run before the run stops "
                          "(default: 300)")
    run.add_argument("--deadline", default="15min", metavar="DURATION",
                     help="how long the whole run may take, e.g. 10min; past "
                          "it the kernel is stopped and the partial artifact "
                          "written (default: 15min)")

    _add_sweep_parser(commands)

    sandbox = commands.add_parser("sandbox", help="the local incident lab")
    lab_commands = sandbox.add_subparsers(dest="lab_command", required=True)
    up = lab_commands.add_parser("up", help="start the lab until Ctrl-C")
    up.add_argument("--incident", action="append", default=[],
                    help="reproduce this incident once up (repeatable)")
    up.add_argument("--parameters-out", default="parameters/sandbox.yaml",
                    metavar="FILE", help="where to write the lab's parameters")
    lab_commands.add_parser("down", help="stop a lab started with `up`")
    lab_commands.add_parser("incidents", help="list the incidents it reproduces")

    demo = commands.add_parser("demo", help="reproduce incidents and diagnose them")
    demo.add_argument("--artifacts", default="artifacts", metavar="DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    protect_logs()
    if not args.verbose:
        # The execution machinery reports what we report again, in tracebacks.
        for noisy in ("papermill", "traitlets", "asyncio", "nbclient"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    terminated: list[int] = []
    try:
        with _sigterm_as_interrupt(terminated, args.command in ("run", "sweep")):
            return int(_dispatch(args))
    except ParacleError as exc:
        # A refused value may be a credential given in the wrong place.
        message = protect_logs().text(str(exc))
        print(f"paracle-nb: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        result = getattr(exc, "result", None)
        where = f"; partial artifact in {result.folder}" if result else ""
        how = "terminated" if terminated else "interrupted"
        print(f"paracle-nb: {how}{where}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


@contextlib.contextmanager
def _sigterm_as_interrupt(received: list[int], wanted: bool) -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C inside the block; record it in ``received``.

    A run stopped by ``kill`` or by Kubernetes ending its Job then writes
    its partial artifact, naming the cell it was in. Further SIGTERMs are
    ignored while that artifact is written.
    """
    if not wanted or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt("Stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "list":
        return _list()
    if args.command == "run":
        return _run(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "sandbox":
        from paracle_nb.sandbox import cli as sandbox_cli

        return sandbox_cli.main(args)
    if args.command == "demo":
        from paracle_nb.demo import demo

        return demo(args.artifacts)
    raise AssertionError(args.command)


def _list() -> int:
    from paracle_nb.run import runbook_title, runbooks

    found = runbooks()
    width = max((len(n) for n in found), default=10)
    for name, path in found.items():
        print(f"{name:<{width}}  {runbook_title(path)}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from paracle_nb import run

    overrides: dict[str, Any] = {name: value for name, value in args.parameter}
    result = run.run(args.runbook, args.parameters, overrides,
                     artifacts=args.artifacts, cell_timeout=args.cell_timeout,
                     deadline=run.parse_deadline(args.deadline))
    print_result(result)
    if result.failed:
        return EXIT_FAILED
    return EXIT_PROBLEM if result.verdict.problem else EXIT_OK


def _add_sweep_parser(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep", help="run every runbook (or a tagged few) at once into one "
                      "incident folder")
    sweep.add_argument("--parameters", metavar="FILE",
                       help="parameters file of the target (default: "
                            "parameters/sandbox.yaml)")
    sweep.add_argument("--only", nargs="+", action="extend", default=[],
                       metavar="TAG", help="only runbooks with one of these tags "
                                           "or names (api, database, redis, ...)")
    sweep.add_argument("--artifacts", default="artifacts", metavar="DIR",
                       help="where the incident folder goes (default: artifacts)")
    sweep.add_argument("--kernels", type=int, default=None, metavar="N",
                       help="runbooks run at once (default: CPU count + 1)")
    sweep.add_argument("--cell-timeout", type=float, default=300.0, metavar="S",
                       help="seconds one cell may run (default: 300)")
    sweep.add_argument("--deadline", default="15min", metavar="DURATION",
                       help="how long each runbook may take (default: 15min)")


def _sweep(args: argparse.Namespace) -> int:
    from paracle_nb.errors import ParameterError
    from paracle_nb.progress import Progress
    from paracle_nb.run import parse_deadline
    from paracle_nb.sweep import sweep

    if args.kernels is not None and args.kernels < 1:
        raise ParameterError(f"--kernels must be 1 or more, got {args.kernels}")
    result = sweep(args.parameters, args.only, artifacts=args.artifacts,
                   kernels=args.kernels, cell_timeout=args.cell_timeout,
                   deadline=parse_deadline(args.deadline), on_change=Progress())
    print(f"incident folder: {result.folder}")
    print(f"  index:    {result.folder / 'index.html'}")
    print(f"  findings: {result.folder / 'findings.json'}")
    print(f"  archive:  {result.folder / 'incident.zip'}")
    return result.exit_code


def print_result(result: Any) -> None:
    """Print a run's verdict headline and its artifact paths."""
    print(result.verdict.headline())
    for finding in result.verdict.ordered()[1:]:
        if finding.severity.rank >= 2:
            print(f"  [{finding.severity.value}] {finding.cause}: {finding.summary}")
    _print_remediation(result)
    print(f"  notebook: {result.notebook}")
    print(f"  html:     {result.html}")


def _print_remediation(result: Any) -> None:
    """Print the plans a run showed, by id, and what applying them did."""
    import json

    from paracle_nb.remediate import plans_from_notebook

    try:
        plans = plans_from_notebook(json.loads(result.notebook.read_text()))
    except (OSError, ValueError):
        return
    for plan in plans:
        if plan["applicable"] or plan["outcome"] != "not applied":
            print(f"  plan {plan['id']}: {plan['title']} [{plan['outcome']}]")
    for finding in result.verdict.findings:  # warnings are printed above
        if finding.severity.rank < 2 and finding.cause.startswith("remediation-"):
            print(f"  [{finding.severity.value}] {finding.cause}: {finding.summary}")
    if any(p["applicable"] and p["outcome"] == "not applied" for p in plans):
        print("  (apply a plan: run again with -p apply <id>)")


if __name__ == "__main__":
    sys.exit(main())
