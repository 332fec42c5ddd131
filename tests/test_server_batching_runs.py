"""Batched serving under torchrun: reproducible and resumable with several clients, probes apart."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.torchrun_util import spawn_ranks, torchrun, wait_all

pytestmark = pytest.mark.slow

BATCHED = ["--method=splitlora", "--split.server_batching=true"]


def _lora(run):
    return load_file(str(run.run_dir / "model/lora.safetensors"))


# One client, batched == CenLoRA: tests/test_train_methods.py::test_one_client_split_equals_centralized.


RESUMABLE = [*BATCHED, "--train.max_steps=8", "--ckpt.every=4", "--runtime.order=round_robin",
             "--fed.aggregate_every=2"]


def test_batched_run_logs_its_batches_and_resumes_bitwise(tmp_path):
    full = torchrun(3, RESUMABLE, tmp_path, "full")
    assert full.rc == 0, full.stderr[-2000:]
    batches = [r for r in full.metrics() if r.get("kind") == "server_batch"]
    steps = [r for r in full.metrics() if r.get("kind") == "step"]
    # round_robin: every batch holds both clients, one server update per pair of client steps
    assert [r["clients"] for r in batches] == [[1, 2]] * 8
    tokens = {(r["client"], r["step"]): r["tokens"] for r in steps}
    assert sum(sum(r["tokens"]) for r in batches) <= sum(tokens.values())  # loss tokens within all tokens
    assert all(len(r["tokens"]) == len(r["rows"]) == 2 and r["seq_len"] > 0 for r in batches)
    server = torch.load(full.run_dir / "ckpt/step_8/server.pt", weights_only=True)
    assert server["server_steps"] == 8 and server["scheduler"]["last_epoch"] == 16
    assert full.summary()["server"] == {"mode": "batched", "updates": 8}
    cut = torchrun(3, RESUMABLE, tmp_path, "cut", env={"SPLITLORA_INJECT_FAULT": "kill:2:6"})
    assert cut.rc != 0
    resumed = torchrun(3, [f"--resume={cut.run_dir}"], tmp_path, "ignored")
    assert resumed.rc == 0, resumed.stderr[-2000:]
    a, b = _lora(full), _lora(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise: the batches are the same after the resume


def test_batched_lora_a2_probes_do_not_update_the_server(tmp_path):
    run = torchrun(3, [*BATCHED, "--fed.strategy=lora-a2", "--lora.r=4", "--fed.client_ranks=1,2",
                       "--train.max_steps=6", "--fed.aggregate_every=3", "--fed.probe_steps=2",
                       "--runtime.order=round_robin"], tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    batches = [r for r in run.metrics() if r.get("kind") == "server_batch"]
    probes = [r for r in batches if not r["update"]]
    # probes (gradients only) form batches of their own; one update per pair of training steps
    assert probes and len(batches) - len(probes) == 6
    assert all(r["clients"] == [1, 2] for r in batches)


@pytest.mark.heavy
def test_batched_continue_policy_drops_a_dead_client_from_its_batch(tmp_path):
    procs = spawn_ranks(4, [*BATCHED, "--train.max_steps=6", "--fed.aggregate_every=2", "--runtime.rpc_timeout=20",
                            "--fed.on_client_failure=continue", "--runtime.order=arrival"], tmp_path,
                        env={"SPLITLORA_INJECT_FAULT": "kill:2:3"})
    results = wait_all(procs, timeout=150)  # hang guard
    assert results[0][0] == 0 and results[1][0] == 0 and results[3][0] == 0, results[0][1][-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["dropped_clients"]) == ["2"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    late = [r for r in metrics if r.get("kind") == "server_batch"][-2:]
    assert all(2 not in r["clients"] for r in late)  # the survivors' last batches go on without it
