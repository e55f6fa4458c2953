"""What a batch run's kernel does before the first cell.

Passed to the kernel as its ``exec_lines`` (see :data:`paracle_nb.run.KERNEL_SETUP`).
"""

from __future__ import annotations

import logging

# jupyter_client interrupts every kernel before shutting it down; when the
# kernel is still handling a message, ipykernel logs this at ERROR level,
# on the operator's terminal, at the end of a run that went fine.
_SHUTDOWN_NOISE = "KeyboardInterrupt caught in kernel."


def setup() -> None:
    """Scrub the kernel's log records; drop the shutdown interrupt's noise."""
    from paracle_nb.redact import protect_logs

    protect_logs()
    kernel_log = _kernel_log()
    if kernel_log is not None:
        kernel_log.addFilter(_not_shutdown_noise)


def _kernel_log() -> logging.Logger | None:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    kernel = getattr(get_ipython(), "kernel", None)
    log = getattr(kernel, "log", None)
    return log if isinstance(log, logging.Logger) else None


def _not_shutdown_noise(record: logging.LogRecord) -> bool:
    return record.getMessage() != _SHUTDOWN_NOISE
