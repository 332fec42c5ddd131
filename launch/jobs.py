"""Run a job (torchrun and its ranks, or any command) so that nothing of it outlives a timeout.

``subprocess.run(..., timeout=)`` kills only the process it started: torchrun's ranks
live on, holding ports, memory and GPUs, and may block forever in an RPC. Here the job
starts in its own process group (session), and on a timeout, an interrupt or a SIGTERM
to this process the whole group gets SIGTERM, then SIGKILL after a grace period (while a
job runs, an unhandled SIGTERM raises ``Terminated`` here instead of killing the driver).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from typing import Any

GRACE_S = 5.0  # after SIGTERM, before SIGKILL: lets torchrun stop its ranks itself


def kill_group(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM the process group led by ``proc``, then SIGKILL what is left after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # The leader may be gone while members linger (they ignore SIGTERM): SIGKILL them too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_group(cmd: Sequence[str], timeout: float | None = None, **popen: Any) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(cmd, timeout=timeout, **popen)`` (``capture_output``/``text``
    accepted), but the job and every process it starts are stopped on a timeout or when
    this process is interrupted; raises ``subprocess.TimeoutExpired`` as run does."""
    if popen.pop("capture_output", False):
        popen["stdout"], popen["stderr"] = subprocess.PIPE, subprocess.PIPE
    with subprocess.Popen(list(cmd), start_new_session=True, **popen) as proc:
        try:
            with _sigterm_raises_if_default():
                out, err = proc.communicate(timeout=timeout)
        except BaseException:  # TimeoutExpired, KeyboardInterrupt, SystemExit from a SIGTERM
            kill_group(proc)
            raise
        finally:
            # Ranks left behind by a leader that exited (a crash of torchrun itself).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class JobError(RuntimeError):
    """A benchmark job exited non-zero or ran past its time limit; the message says which."""


class Terminated(SystemExit):
    """Raised by SIGTERM inside ``sigterm_raises``; uncaught, the process exits with 143."""


@contextlib.contextmanager
def _sigterm_raises_if_default() -> Iterator[None]:
    """``sigterm_raises`` unless the program handles SIGTERM itself (or this is not the main
    thread, where handlers cannot be set): a SIGTERM that would kill the driver outright
    would leave the job, in its own session, running."""
    usable = threading.current_thread() is threading.main_thread()
    if usable and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        with sigterm_raises():
            yield
    else:
        yield


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside: SIGTERM raises ``Terminated``, so ``run_group`` stops its job before the
    driver exits (``timeout``, SLURM and a shell's kill send SIGTERM to the driver only)."""

    def _exit(signum: int, frame: object) -> None:
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
