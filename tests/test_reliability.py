"""Fault injection: kills, raises, interrupted writes, exact resume — every case ends in bounded time."""

import json
import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from runtime.io.artifacts import torch_save
from runtime.io.checkpoint import CheckpointError, latest_step, load_rank
from tests.torchrun_util import spawn_ranks, torchrun, wait_all

pytestmark = pytest.mark.slow

RESUMABLE = ["--train.max_steps=8", "--ckpt.every=4", "--runtime.order=round_robin", "--fed.aggregate_every=2"]


def test_killed_run_keeps_its_last_checkpoint_and_resumes_bitwise(tmp_path):
    full = torchrun(3, RESUMABLE, tmp_path, "full")
    assert full.rc == 0, full.stderr[-2000:]
    # SIGKILL client 2 at step 6: the checkpoint of step 4 must be complete and loadable.
    cut = torchrun(3, RESUMABLE, tmp_path, "cut", env={"SPLITLORA_INJECT_FAULT": "kill:2:6"})
    assert cut.rc != 0
    assert latest_step(cut.run_dir) == 4
    for name in ("server", "client1", "client2"):
        assert load_rank(cut.run_dir, 4, name)["step"] == 4
    resumed = torchrun(3, [f"--resume={cut.run_dir}"], tmp_path, "ignored")
    assert resumed.rc == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and (cut.run_dir / "resumes.jsonl").is_file()
    a = load_file(str(full.run_dir / "model/lora.safetensors"))
    b = load_file(str(cut.run_dir / "model/lora.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise: the interruption is invisible


def test_resume_refuses_changes_and_bad_checkpoints(tmp_path):
    run = torchrun(1, ["--method=cenlora", "--train.max_steps=2"], tmp_path, "r")
    assert run.rc == 0, run.stderr[-2000:]
    changed = torchrun(1, [f"--resume={run.run_dir}", "--lora.r=8", "--split.cut=2"], tmp_path)
    assert changed.rc != 0
    assert "cannot resume" in changed.stderr and "lora.r (4 -> 8)" in changed.stderr and "split.cut" in changed.stderr
    ckpt = run.run_dir / "ckpt/step_2/cenlora.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated
    bad = torchrun(1, [f"--resume={run.run_dir}"], tmp_path)
    assert bad.rc != 0 and "truncated or corrupted" in bad.stderr
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        latest_step(tmp_path)


def test_interrupted_checkpoint_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    torch_save(path, {"v": torch.ones(3)})

    def dying_save(obj, fh):
        fh.write(b"PK\x03\x04 partial")  # the process dies half way through the write
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        torch_save(path, {"v": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file left


def test_client_killed_without_torchrun_aborts_every_rank(tmp_path):
    """Plain processes (no torchrun agent): the server's watchdog notices and every rank exits non-zero."""
    procs = spawn_ranks(3, ["--train.max_steps=40", "--ckpt.every=2", "--runtime.rpc_timeout=30"], tmp_path,
                        env={"SPLITLORA_INJECT_FAULT": "kill:2:3"})
    results = wait_all(procs, timeout=250)  # bounded: nothing waits for ever
    assert results[2][0] == -signal.SIGKILL, results[2][1][-2000:]
    assert results[0][0] != 0 and results[1][0] != 0
    assert "client 2 failed" in results[0][1]  # the server names the failed client
    assert "splitlora: error [rank 1]" in results[1][1] or "splitlora: error [client1]" in results[1][1]
    assert latest_step(tmp_path / "run") == 2  # the last complete checkpoint is intact


@pytest.mark.heavy
def test_server_killed_ends_every_client(tmp_path):
    procs = spawn_ranks(3, ["--method=fedlora", "--train.max_steps=400", "--runtime.rpc_timeout=600"], tmp_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.5)
    assert metrics.exists(), "the run never started"
    os.kill(procs[0].pid, signal.SIGKILL)
    results = wait_all(procs, timeout=250)  # hang guard, far below the 600 s RPC timeout
    assert all(code != 0 for code, _ in results[1:])
    # Ended by the watchdog's verdict, not by an RPC timeout.
    assert all("server is unreachable" in err and "timed out" not in err.lower() for _, err in results[1:])


@pytest.mark.heavy
def test_continue_policy_finishes_without_the_dead_client(tmp_path):
    procs = spawn_ranks(4, ["--train.max_steps=6", "--fed.aggregate_every=2", "--runtime.rpc_timeout=20",
                            "--fed.on_client_failure=continue"], tmp_path, env={"SPLITLORA_INJECT_FAULT": "kill:2:3"})
    results = wait_all(procs, timeout=150)
    assert results[0][0] == 0 and results[1][0] == 0 and results[3][0] == 0, results[0][1][-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["dropped_clients"]) == ["2"]
    assert sorted(summary["clients"]) == ["1", "3"]
    c1 = torch.load(tmp_path / "run/ckpt/step_6/client1.pt", weights_only=True)["clients"][0]["lora"]
    c3 = torch.load(tmp_path / "run/ckpt/step_6/client3.pt", weights_only=True)["clients"][0]["lora"]
    assert all(torch.equal(c1[k], c3[k]) for k in c1)  # survivors still aggregate together


def test_too_many_clients_for_the_data(tmp_path):
    run = torchrun(4, ["--data.max_train_examples=2"], tmp_path)
    assert run.rc != 0
    assert "client" in run.stderr and "splitlora: error" in run.stderr


@pytest.mark.heavy
def test_continue_policy_drops_a_rank_with_every_client_it_hosts(tmp_path):
    procs = spawn_ranks(4, ["--method=fedlora", "--fed.num_clients=6", "--train.max_steps=6", "--fed.aggregate_every=2",
                            "--runtime.rpc_timeout=20", "--fed.on_client_failure=continue"], tmp_path,
                        env={"SPLITLORA_INJECT_FAULT": "kill:2:3"})
    results = wait_all(procs, timeout=150)
    assert results[0][0] == 0 and results[1][0] == 0 and results[3][0] == 0, results[0][1][-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["dropped_clients"]) == ["2"]
    assert sorted(summary["logical_clients"], key=int) == ["1", "3", "4", "6"]  # rank 2 hosted clients 2 and 5
    entries = [e for r in (1, 3) for e in torch.load(tmp_path / f"run/ckpt/step_6/client{r}.pt",
                                                     weights_only=True)["clients"]]
    first = entries[0]["lora"]
    assert all(torch.equal(first[k], e["lora"][k]) for e in entries for k in first)  # the survivors' clients agree
