"""Process plumbing for the incident lab: ports, binaries, users, deadlines.

Everything the lab starts binds 127.0.0.1 only, is stopped by the PID we
hold, and is remembered in a registry that stops it at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from paracle_nb.errors import SandboxError

if TYPE_CHECKING:
    from typing import Self

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOOPBACK = "127.0.0.1"

#: The OS user that runs PostgreSQL (and anything else that refuses root).
SERVER_USER = "postgres"

#: Ports other things on the machine may hold; the lab never picks them.
DEFAULT_PORTS = frozenset({5432, 6379, 6432, 9090})

_registry_lock = threading.Lock()
_started: dict[int, tuple[str, Callable[[], None]]] = {}
_tokens = itertools.count(1)


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nobody listens on right now.

    The port is free when we look; another process may take it before the
    server binds it, so callers retry on "Address already in use".
    """
    _require_loopback(host)
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in DEFAULT_PORTS:
            return port
    raise SandboxError("could not find a free port", target=host)


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Return True if a server could bind ``host:port`` now (as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so TIME_WAIT leftovers do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Return True if something accepts TCP connections on ``host:port``."""
    _require_loopback(host)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> T:
    """Call ``condition`` until it returns something truthy; return that.

    Raises :class:`SandboxError` naming ``what`` once ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    delay = interval

    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise SandboxError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def wait_for_port(port: int, host: str = LOOPBACK, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts connections or ``timeout`` passes."""
    wait_for(
        lambda: port_accepts(port, host),
        timeout=timeout,
        what=f"{host}:{port} to accept connections",
    )


def find_binary(name: str, extra_dirs: Sequence[Path] = ()) -> Path | None:
    """Return the path of executable ``name`` in ``extra_dirs`` or on PATH."""
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def binary_version(binary: Path) -> tuple[int, ...]:
    """Return the version ``binary --version`` reports, e.g. ``(15, 18)``."""
    try:
        out = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except OSError:
        return ()
    match = re.search(r"(\d+(?:\.\d+)*)", out)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def running_as_root() -> bool:
    """Return True when this process has euid 0 (servers must drop to a user)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def server_user_ids() -> tuple[int, int]:
    """Return (uid, gid) that server processes run as: ``postgres`` if root."""
    if not running_as_root():
        return os.getuid(), os.getgid()

    import pwd

    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise SandboxError(
            f"running as root, but there is no '{SERVER_USER}' OS user to run "
            "the lab's servers as; apt-get install postgresql-15 creates it "
            f"(or: useradd --system {SERVER_USER})"
        ) from None
    return entry.pw_uid, entry.pw_gid


def current_os_user() -> str:
    """Return the name of the OS user this process runs as."""
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def server_user_name() -> str:
    """Return the name of the OS user that server processes run as."""
    return SERVER_USER if running_as_root() else current_os_user()


def as_server_user() -> dict[str, Any]:
    """Return ``subprocess`` keyword arguments that drop root to ``postgres``.

    Empty when we are not root: then servers simply run as ourselves.
    """
    if not running_as_root():
        return {}
    uid, gid = server_user_ids()
    return {"user": uid, "group": gid, "extra_groups": []}


def server_env() -> dict[str, str]:
    """Return our environment without ``PG*`` variables that could redirect."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def run_as_server_user(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` as the server user, capturing output; never raises on rc."""
    cmd = [str(arg) for arg in args]
    logger.debug("running %s", Path(cmd[0]).name)
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=server_env(),
        timeout=timeout,
        check=False,
        **as_server_user(),
    )


def chown_to_server_user(path: Path) -> None:
    """Give ``path`` (not recursively) to the server user when we are root."""
    if running_as_root():
        uid, gid = server_user_ids()
        os.chown(path, uid, gid)


def make_work_dir(prefix: str, base_dir: Path | str | None = None) -> Path:
    """Create a private temp dir the server user can traverse (mode 0711).

    Every parent must be traversable by others, or a server running as
    ``postgres`` could not reach its files; we check rather than chmod them.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir)).resolve()
    path.chmod(0o711)

    if running_as_root():
        uid, _ = server_user_ids()
        for parent in path.parents:
            info = parent.stat()
            if not (info.st_mode & stat.S_IXOTH or info.st_uid == uid):
                shutil.rmtree(path, ignore_errors=True)
                raise SandboxError(
                    f"'{SERVER_USER}' cannot traverse {parent} (needs o+x); "
                    "choose another base_dir or TMPDIR",
                    target=str(path),
                )
    return path


def copy_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` with modes, giving all of it to ``src``'s owner.

    Python's copy beats ``cp -a`` several times over on a data directory's
    thousand small files (``cp`` spends its time in per-file
    ``copy_file_range`` and xattr calls).
    """
    try:
        shutil.copytree(src, dst, symlinks=True)
    except OSError as exc:
        raise SandboxError(
            "could not copy the data directory template",
            target=str(dst),
            detail=str(exc),
        ) from exc

    owner = src.stat()
    if (owner.st_uid, owner.st_gid) == (os.geteuid(), os.getegid()):
        return
    for root, dirs, files in os.walk(dst):
        os.chown(root, owner.st_uid, owner.st_gid)
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), owner.st_uid, owner.st_gid)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by us alone (0600), e.g. a secret."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def log_tail(path: Path, lines: int = 15) -> str:
    """Return the last ``lines`` lines of a server log ("" if unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) across processes."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """Return True if process ``pid`` exists and is not a zombie."""
    try:
        # Reap it if it is our child, so a finished child does not linger.
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return status.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_command(pid: int) -> str | None:
    """Return the command line of ``pid`` (Linux ``/proc``), None if unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def stop_pid(pid: int, *, grace: float = 5.0, expect: str | None = None) -> bool:
    """Stop process ``pid``: SIGTERM, then SIGKILL after ``grace`` seconds.

    With ``expect``, the signal is sent only if the process's command line
    contains that word, so a recycled PID is left alone. Returns True if a
    signal was sent.
    """
    if not pid_alive(pid):
        return False
    command = pid_command(pid)
    if expect and command is not None and expect not in command:
        logger.warning("PID %d is no longer %s; leaving it alone", pid, expect)
        return False

    logger.debug("sending SIGTERM to PID %d", pid)
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: not pid_alive(pid), timeout=grace, what=f"PID {pid}")
        return True
    except SandboxError:
        pass

    logger.warning("PID %d ignored SIGTERM for %g s; sending SIGKILL", pid, grace)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    wait_for(lambda: not pid_alive(pid), timeout=5.0, what=f"PID {pid} to die")
    return True


def stop_child(proc: subprocess.Popen[Any], *, grace: float = 5.0) -> None:
    """Stop a child we spawned: SIGTERM, SIGKILL after ``grace``, then reap."""
    if proc.poll() is not None:
        return

    proc.terminate()
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        logger.warning("PID %d ignored SIGTERM for %g s; killing", proc.pid, grace)

    proc.kill()
    proc.wait(timeout=5.0)


def register_started(what: str, stop: Callable[[], None]) -> int:
    """Remember something we started so it is stopped at exit; returns a token."""
    with _registry_lock:
        token = next(_tokens)
        _started[token] = (what, stop)
    return token


def unregister_started(token: int) -> None:
    """Forget a registration once its owner has stopped it."""
    with _registry_lock:
        _started.pop(token, None)


def started() -> list[str]:
    """Return descriptions of everything started and not yet stopped."""
    with _registry_lock:
        return [what for what, _ in _started.values()]


def stop_all_started() -> None:
    """Stop everything still registered, newest first; runs at exit."""
    while True:
        with _registry_lock:
            if not _started:
                return
            token = max(_started)
            what, stop = _started.pop(token)
        try:
            stop()
        except Exception:
            logger.exception("could not stop %s", what)


def _require_loopback(host: str) -> None:
    if host != LOOPBACK:
        raise SandboxError(f"the lab only uses {LOOPBACK}", target=host)


atexit.register(stop_all_started)


class LabServer:
    """A lab server: ``with`` starts it and stops it, whatever happens."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
