"""Run ``launch.train`` under torchrun in a subprocess, with a hard time bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from launch.jobs import run_group

REPO = Path(__file__).resolve().parents[1]

# Small and fast: tiny model, synthetic data, a handful of steps, short eval.
FAST = ["--data.source=synthetic", "--data.max_train_examples=400", "--data.max_eval_examples=16",
        "--train.batch_size=4", "--runtime.rpc_timeout=60"]


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    run_dir: Path

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    def metrics(self) -> list[dict]:
        return [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines()]


def torchrun(nproc: int, args: list[str], out_dir: Path, name: str = "run", timeout: float = 180,
             env: dict[str, str] | None = None, module: str = "launch.train") -> Run:
    """``module``: the entry point (``launch.train``, or a test module that wraps it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, *FAST, f"--out.dir={out_dir}", f"--out.name={name}", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("SPLITLORA_DATA", None)
    # Its own process group: a timeout or an interrupt ends the ranks too, not only torchrun.
    proc = run_group(cmd, timeout=timeout, cwd=REPO, capture_output=True, text=True, env=full_env)
    return Run(proc.returncode, proc.stdout, proc.stderr, out_dir / name)


def spawn_ranks(nproc: int, args: list[str], out_dir: Path, name: str = "run",
                env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Start the ranks as plain processes (no torchrun agent that ends the others on a failure)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(nproc):
        e = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {}), "RANK": str(rank),
             "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        e.pop("SPLITLORA_DATA", None)
        procs.append(subprocess.Popen([sys.executable, "-m", "launch.train", *FAST, f"--out.dir={out_dir}",
                                       f"--out.name={name}", *args], cwd=REPO, env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """(exit code, stderr) per rank; kills what is still running after ``timeout`` and fails."""
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"rank pid {p.pid} still running after {timeout}s: a hang") from None
        out.append((p.returncode, err))
    return out
