"""The launch scripts, rendered with a fake SLURM: stub scontrol/srun/python record what would run.

The stub ``srun`` emulates task placement (one task per node, or one per hostfile line
with ``--distribution=arbitrary``) and runs the task command with the SLURM task
variables set; the stub Python records its argv and the rank variables instead of
training. The torchrun command line is then parsed with torchrun's own parser.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/run_local.sh", "launch/slurm/splitlora.sbatch", "launch/slurm/splitlora-uneven.sbatch",
           "launch/slurm/srun_rank_env.sh"]

SCONTROL = """#!/usr/bin/env bash
echo "$*" >> "$STUB_DIR/scontrol.log"
[[ "$1 $2" == "show hostnames" ]] || exit 1
for h in $FAKE_HOSTS; do echo "$h"; done
"""

# Records its arguments and environment, then runs the task command once per task.
SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$STUB_DIR/srun.args"
env | grep -E '^(GLOO|NCCL|TP)_SOCKET_IFNAME=|^MASTER_(ADDR|PORT)=' | sort > "$STUB_DIR/srun.env" || true
arbitrary=0; ntasks=""
while [[ $# -gt 0 && "$1" == -* ]]; do
    case "$1" in
        --distribution=arbitrary) arbitrary=1 ;;
        --ntasks=*) ntasks="${1#--ntasks=}" ;;
    esac
    shift
done
hosts=($FAKE_HOSTS)
if ((arbitrary)); then
    cp "$SLURM_HOSTFILE" "$STUB_DIR/hostfile"
    mapfile -t placement < "$SLURM_HOSTFILE"
else
    placement=("${hosts[@]:0:$ntasks}")
fi
declare -A seen
for ((i = 0; i < ${#placement[@]}; i++)); do
    h="${placement[i]}"
    node=0
    for ((j = 0; j < ${#hosts[@]}; j++)); do [[ "${hosts[j]}" == "$h" ]] && node=$j; done
    localid="${seen[$h]:-0}"; seen[$h]=$((localid + 1))
    SLURMD_NODENAME="$h" SLURM_NODEID="$node" SLURM_PROCID="$i" SLURM_LOCALID="$localid" \\
        SLURM_STEP_NUM_TASKS="${#placement[@]}" SLURM_NTASKS="${#placement[@]}" "$@" || exit $?
done
"""

PY_STUB = """#!{python}
import json, os, sys
keys = ["SLURMD_NODENAME", "SLURM_NODEID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
        "OMP_NUM_THREADS", "PYTHONPATH"]
with open(os.path.join(os.environ["STUB_DIR"], "python.jsonl"), "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                          "env": {{k: os.environ.get(k) for k in keys}}}}) + "\\n")
"""


def _exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, object]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _exe(bin_dir / "scontrol", SCONTROL)
    _exe(bin_dir / "srun", SRUN)
    py = _exe(tmp_path / "python-stub", PY_STUB.format(python=sys.executable))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "SPLITLORA_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", STUB_DIR=str(tmp_path), SPLITLORA_PYTHON=str(py))
    return {"dir": tmp_path, "env": env}


def _calls(d: Path) -> list[dict]:
    path = d / "python.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _run(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / script), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_are_executable(script: str) -> None:
    path = REPO / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert os.access(path, os.X_OK)


def test_sbatch_runs_torchrun_per_node_with_static_rendezvous(stubs: dict) -> None:
    from torch.distributed.run import get_args_parser

    env = {**stubs["env"], "FAKE_HOSTS": "gpu-a07 gpu-a08 gpu-b01", "SLURM_JOB_NODELIST": "gpu-a[07-08],gpu-b01",
           "SLURM_NNODES": "3", "SLURM_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "16",
           "SLURM_SUBMIT_DIR": str(REPO), "NPROC_PER_NODE": "2", "SPLITLORA_IFNAME": "ib0"}
    overrides = ["--method", "fedlora", "--train.max_steps", "10", "--out.dir=/scratch/runs"]
    proc = _run("launch/slurm/splitlora.sbatch", overrides, env)
    assert proc.returncode == 0, proc.stderr
    d = stubs["dir"]
    srun_args = (d / "srun.args").read_text().splitlines()
    assert {"--ntasks=3", "--ntasks-per-node=1", "--nodes=3", "--kill-on-bad-exit=1",
            "--cpus-per-task=16"} <= set(srun_args)
    assert (d / "srun.env").read_text().splitlines() == [
        "GLOO_SOCKET_IFNAME=ib0", "MASTER_ADDR=gpu-a07", "MASTER_PORT=24242", "NCCL_SOCKET_IFNAME=ib0",
        "TP_SOCKET_IFNAME=ib0"]
    calls = _calls(d)
    assert [c["env"]["SLURMD_NODENAME"] for c in calls] == ["gpu-a07", "gpu-a08", "gpu-b01"]
    for node, call in enumerate(calls):
        argv = call["argv"]
        assert argv[:2] == ["-m", "torch.distributed.run"]
        assert Path(call["cwd"]) == REPO
        a = get_args_parser().parse_args(argv[2:])  # torchrun's own parser
        assert (a.nnodes, a.node_rank, a.nproc_per_node) == ("3", node, "2")
        assert (a.rdzv_backend, a.master_addr, a.master_port) == ("static", "gpu-a07", 24242)
        assert a.rdzv_conf == "timeout=300"  # a node that never starts does not hold the others 600 s
        assert not a.standalone and a.max_restarts == 0
        assert a.module and a.training_script == "launch.train"
        assert a.training_script_args == overrides
    # global rank = node_rank * nproc_per_node + local_rank: rank 0 (the server) is on the first host


def test_uneven_sbatch_places_server_once_then_clients(stubs: dict) -> None:
    env = {**stubs["env"], "FAKE_HOSTS": "srv c1 c2", "SLURM_JOB_NODELIST": "srv,c[1-2]", "SLURM_NNODES": "3",
           "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(REPO), "CLIENTS_PER_NODE": "3", "CPUS_PER_TASK": "2"}
    proc = _run("launch/slurm/splitlora-uneven.sbatch", ["--train.max_steps=5", "--split.cut", "2"], env)
    assert proc.returncode == 0, proc.stderr
    d = stubs["dir"]
    assert (d / "hostfile").read_text().split() == ["srv", "c1", "c1", "c1", "c2", "c2", "c2"]
    srun_args = (d / "srun.args").read_text().splitlines()
    assert {"--ntasks=7", "--distribution=arbitrary", "--cpus-per-task=2", "--kill-on-bad-exit=1"} <= set(srun_args)
    assert srun_args[-3:] == ["--train.max_steps=5", "--split.cut", "2"]
    calls = _calls(d)  # the real srun_rank_env.sh ran for each task and exec'd the stub Python
    assert len(calls) == 7
    for rank, call in enumerate(calls):
        e = call["env"]
        assert call["argv"] == ["-m", "launch.train", "--train.max_steps=5", "--split.cut", "2"]
        assert (e["RANK"], e["WORLD_SIZE"], e["MASTER_ADDR"], e["MASTER_PORT"]) == (str(rank), "7", "srv", "20007")
        assert e["OMP_NUM_THREADS"] == "1"
    assert calls[0]["env"]["SLURMD_NODENAME"] == "srv" and calls[0]["env"]["LOCAL_RANK"] == "0"
    assert [(c["env"]["SLURMD_NODENAME"], c["env"]["LOCAL_RANK"]) for c in calls[1:]] == [
        ("c1", "0"), ("c1", "1"), ("c1", "2"), ("c2", "0"), ("c2", "1"), ("c2", "2")]
    assert not list(Path(env.get("TMPDIR", "/tmp")).glob("splitlora-hosts.*7")), "hostfile left behind"


def test_uneven_sbatch_needs_two_nodes(stubs: dict) -> None:
    env = {**stubs["env"], "FAKE_HOSTS": "only", "SLURM_JOB_NODELIST": "only", "SLURM_NNODES": "1"}
    proc = _run("launch/slurm/splitlora-uneven.sbatch", [], env)
    assert proc.returncode == 2 and "at least 2 nodes" in proc.stderr
    assert not _calls(stubs["dir"])


def test_rank_env_wrapper_falls_back_to_first_host_and_refuses_outside_srun(stubs: dict) -> None:
    env = {**stubs["env"], "FAKE_HOSTS": "h0 h1", "SLURM_JOB_NODELIST": "h[0-1]", "SLURM_PROCID": "2",
           "SLURM_NTASKS": "3", "SLURM_LOCALID": "1"}
    proc = _run("launch/slurm/srun_rank_env.sh", ["--method=splitlora"], env)
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(stubs["dir"])
    assert call["argv"] == ["-m", "launch.train", "--method=splitlora"]
    assert {k: call["env"][k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "29500"}
    bare = {k: v for k, v in env.items() if k != "SLURM_PROCID"}
    proc = _run("launch/slurm/srun_rank_env.sh", [], bare)
    assert proc.returncode != 0 and "SLURM_PROCID is not set" in proc.stderr


@pytest.mark.parametrize(("args", "nproc"), [
    (["2", "--method", "fedlora", "--train.max_steps", "10"], 3),
    (["4"], 5),
    (["0", "--method=cenlora"], 1),
])
def test_run_local_wraps_standalone_torchrun(stubs: dict, args: list[str], nproc: int) -> None:
    proc = _run("launch/run_local.sh", args, stubs["env"])
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(stubs["dir"])
    assert call["argv"] == ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                            "-m", "launch.train", *args[1:]]
    assert call["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)


@pytest.mark.parametrize("args", [[], ["two"], ["0"], ["0", "--method", "fedlora"]])
def test_run_local_rejects_bad_client_counts(stubs: dict, args: list[str]) -> None:
    proc = _run("launch/run_local.sh", args, stubs["env"])
    assert proc.returncode == 2
    assert not _calls(stubs["dir"])
