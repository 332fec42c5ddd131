"""Jobs end with their driver: a timeout or a SIGTERM leaves no rank behind (launch/jobs.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.jobs import run_group
from tests.torchrun_util import REPO

# A parent that starts a child in the background, writes the child's pid, then waits forever.
PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\n"
    "time.sleep(600)\n"
)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_gone(pid: int, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_run_group_returns_the_output_and_the_exit_code() -> None:
    proc = run_group([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                     capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr.strip()) == (3, "out", "err")


def test_a_timeout_ends_the_children_of_the_job_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_group([sys.executable, "-c", PARENT, str(pid_file)], timeout=5)
    child = int(pid_file.read_text())
    # With subprocess.run(timeout=) the child would live on for 10 minutes.
    assert _wait_gone(child), f"the job's child {child} outlived the timeout"


def test_sigterm_to_a_driver_without_a_handler_ends_its_job(tmp_path: Path) -> None:
    """launch.heterogeneity and the experiment drivers set no SIGTERM handler: run_group's
    own stops the job (in its own session, a bare SIGTERM to the driver would not reach it)."""
    pid_file = tmp_path / "child.pid"
    driver_code = ("import sys\nfrom launch.jobs import run_group\n"
                   f"run_group([sys.executable, '-c', {PARENT!r}, {str(pid_file)!r}])\n")
    driver = subprocess.Popen([sys.executable, "-c", driver_code], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert driver.poll() is None and time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        driver.send_signal(signal.SIGTERM)
        driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 128 + signal.SIGTERM
    assert _wait_gone(int(pid_file.read_text())), "the job outlived its driver"


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace") and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_sigterm_to_the_bench_driver_ends_its_ranks(tmp_path: Path) -> None:
    """A SIGTERM (what ``timeout`` and SLURM send) to ``launch.bench`` mid-job: the torchrun
    job and its ranks end with it, the driver says so and exits non-zero."""
    runs = tmp_path / "runs"
    # One SplitLoRA job whose client sleeps 100x its compute per step: it cannot finish in time.
    cmd = [sys.executable, "-m", "launch.bench", "--methods", "splitlora", "--clients", "1", "--steps", "400",
           "--warmup", "1", "--batch", "2", "--seq-len", "64", "--eval-examples", "0", "--server-threads", "1",
           "--client-threads", "1", "--cut-dtypes", "fp32", "--no-plots", "--out", str(tmp_path / "out"),
           "--runs-dir", str(runs), "--extra=--runtime.client_slowdown=100", "--timeout", "300"]
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (runs / "splitlora-n1" / "metrics.jsonl").exists():  # the ranks are training
            assert driver.poll() is None and time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        assert len(_processes_naming(str(runs))) >= 2, "expected the job's ranks to be running"
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode != 0
    assert "splitlora-n1 stopped by SIGTERM" in err
    assert "no job finished" in err
    deadline = time.monotonic() + 20
    while _processes_naming(str(runs)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_naming(str(runs)), "ranks of the stopped job are still running"
