"""Multi-node launches on one machine: two torchrun "nodes" with a static rendezvous, and
the srun-style wrapper (SLURM task variables set by hand) for uneven layouts.

Both check that rank 0 -- the server, the only rank that writes config.json/summary.json
and announces the run directory -- ran where the launch put it.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--data.source=synthetic", "--data.max_train_examples=200", "--data.max_eval_examples=8",
        "--train.max_steps=4", "--train.batch_size=4", "--out.save_model=false", "--runtime.rpc_timeout=60"]
SERVER_LINE = "splitlora: splitlora -> "  # printed by rank 0 only (launch/train.py)
TIMEOUT = 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "SPLITLORA_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _wait_all(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:  # only the processes this test started
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


@pytest.mark.slow
def test_two_torchrun_nodes_static_rendezvous_put_the_server_on_node0(tmp_path: Path) -> None:
    port = free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=2", "--rdzv_backend=static", "--master_addr=127.0.0.1", f"--master_port={port}",
               "--max_restarts=0", "-m", "launch.train", *TINY, f"--out.dir={tmp_path}", "--out.name=mn"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    (rc0, out0, err0), (rc1, out1, err1) = _wait_all(procs)
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    run = tmp_path / "mn"
    assert SERVER_LINE + str(run) in err0  # rank 0 lives under the node-0 agent ...
    assert SERVER_LINE not in err1  # ... and not under node 1's
    assert json.loads(out0[: out0.rindex("}") + 1])["method"] == "splitlora"  # the config, printed by rank 0
    config = json.loads((run / "config.json").read_text())
    assert config["launch"]["world_size"] == 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_clients"] == 3 and sorted(summary["clients"]) == ["1", "2", "3"]
    assert all(c["steps"] == 4 for c in summary["clients"].values())
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["client"] for r in steps if r.get("kind") == "step"}) == [1, 2, 3]


@pytest.mark.heavy
@pytest.mark.slow
def test_srun_rank_env_wrapper_runs_an_uneven_job_on_localhost(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # the wrapper asks it for the first host: here, loopback
    scontrol.write_text('#!/usr/bin/env bash\n[[ "$1 $2" == "show hostnames" ]] && printf "127.0.0.1\\n"\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IXUSR)
    port = free_port()
    wrapper = REPO / "launch" / "slurm" / "srun_rank_env.sh"
    procs = []
    for task in range(3):  # what srun would start: task 0 on the server node, tasks 1-2 on a client node
        env = _env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_PROCID=str(task), SLURM_NTASKS="3",
                   SLURM_LOCALID=str(0 if task == 0 else task - 1), SLURM_JOB_NODELIST="fake-srv,fake-cli",
                   MASTER_PORT=str(port), SPLITLORA_PYTHON=sys.executable)
        procs.append(subprocess.Popen(["bash", str(wrapper), *TINY, f"--out.dir={tmp_path}", "--out.name=uneven"],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = _wait_all(procs)
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    run = tmp_path / "uneven"
    assert SERVER_LINE + str(run) in results[0][2]
    assert all(SERVER_LINE not in err for _, _, err in results[1:])
    assert json.loads((run / "config.json").read_text())["launch"]["world_size"] == 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_clients"] == 2 and sorted(summary["clients"]) == ["1", "2"]
