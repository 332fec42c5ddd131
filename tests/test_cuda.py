"""The CUDA path: NCCL aggregation, the split cut on a GPU (host-staged and device maps),
FedLoRA, beam search, a bf16 cut, several ranks sharing one GPU.

Marked ``cuda``; skipped where CUDA is absent. ``SPLITLORA_CHECK_DEVICE=cpu`` runs the same
tests on the CPU (``launch/gpu_check.sh --dry-run``), so they cannot rot between GPU runs.
Tolerances are stated per test: GPU kernels (cuBLAS, SDPA) sum in other orders than the CPU's.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.torchrun_util import torchrun

DEVICE = os.environ.get("SPLITLORA_CHECK_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="no CUDA device here (SPLITLORA_CHECK_DEVICE=cpu runs these tests on the CPU)"),
]
DEV = [f"--runtime.device={DEVICE}"]
# Per run: a few steps of a tiny model take seconds; a hang the ranks' watchdogs miss (rpc_timeout
# 60 s) must not eat the GPU check's whole budget.
TIMEOUT = 180
EXACT = ["--lora.dropout=0", "--model.dropout=0", "--data.partition=contiguous", "--runtime.order=round_robin"]


def _lora(run) -> dict[str, torch.Tensor]:
    return load_file(str(run.run_dir / "model/lora.safetensors"))


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, (a[k] - b[k]).abs().max().item())


def _client_backend(run) -> str:
    return json.loads((run.run_dir / "config.json").read_text())["launch"]["client_backend"]


def _expected_backend(n_clients: int) -> str:
    """Rank k uses GPU k mod n: clients 1..N get distinct GPUs iff N <= n. NCCL refuses two
    ranks of one group on one GPU, so clients sharing one reduce with gloo via host memory."""
    if DEVICE != "cuda":
        return "gloo"
    return "nccl" if n_clients <= torch.cuda.device_count() else "gloo"


@pytest.mark.parametrize("n_clients", [1, 2])
def test_fedavg_over_the_client_group_equals_the_cpu_result(tmp_path, n_clients):
    """The all_reduce of client adapters (NCCL where each client has a GPU of its own, so one
    client on a one-GPU machine; else gloo through host memory): the CPU run's model (atol 1e-4)."""
    args = ["--method=fedlora", "--train.max_steps=4", "--fed.aggregate_every=1", *EXACT]
    dev = torchrun(1 + n_clients, [*args, *DEV], tmp_path, "dev", timeout=TIMEOUT)
    cpu = torchrun(1 + n_clients, [*args, "--runtime.device=cpu"], tmp_path, "cpu", timeout=TIMEOUT)
    assert dev.rc == 0 and cpu.rc == 0, (dev.stderr[-2000:], cpu.stderr[-2000:])
    assert _client_backend(dev) == _expected_backend(n_clients)
    assert len([r for r in dev.metrics() if r.get("kind") == "aggregate"]) == 4 * n_clients
    _close(_lora(dev), _lora(cpu), 1e-4)
    if n_clients == 2:
        c1 = torch.load(dev.run_dir / "ckpt/step_4/client1.pt", weights_only=True)["clients"][0]["lora"]
        c2 = torch.load(dev.run_dir / "ckpt/step_4/client2.pt", weights_only=True)["clients"][0]["lora"]
        assert all(torch.equal(c1[k], c2[k]) for k in c1)  # the all_reduce left every client the same average


COMMON = ["--train.max_steps=4", *EXACT, *DEV]


@pytest.fixture(scope="module")
def cenlora_run(tmp_path_factory):
    run = torchrun(1, ["--method=cenlora", *COMMON], tmp_path_factory.mktemp("cen"), "cen", timeout=TIMEOUT)
    assert run.rc == 0, run.stderr[-2000:]
    return run


# The cut modes differ on CUDA only (on the CPU both send the tensors as they are).
MODES = ["host", "device_maps"] if DEVICE == "cuda" else ["host"]


@pytest.mark.parametrize("cut_mode", MODES)
@pytest.mark.parametrize("shape", ["vanilla", "u"])
def test_one_client_split_equals_cenlora_on_the_device(tmp_path, cenlora_run, cut_mode, shape):
    """The cut is invisible on the device too (atol 1e-5), with the cut staged through host
    memory or sent GPU to GPU (``runtime.cuda_cut=device_maps``)."""
    split = torchrun(2, ["--method=splitlora", f"--split.shape={shape}", "--split.cut=2",
                         f"--runtime.cuda_cut={cut_mode}", *COMMON], tmp_path, "split", timeout=TIMEOUT)
    assert split.rc == 0, split.stderr[-2000:]
    _close(_lora(cenlora_run), _lora(split), 1e-5)
    assert abs(cenlora_run.summary()["loss_last"] - split.summary()["loss_last"]) < 1e-4


@pytest.mark.parametrize("method", ["splitlora", "fedlora"])
def test_two_clients_train_and_aggregate_on_the_device(tmp_path, method):
    run = torchrun(3, [f"--method={method}", "--train.max_steps=8", "--fed.aggregate_every=4", *DEV], tmp_path,
                   timeout=TIMEOUT)
    assert run.rc == 0, run.stderr[-3000:]
    s = run.summary()
    assert s["loss_last"] < s["loss_first"], (s["loss_first"], s["loss_last"])
    assert len([r for r in run.metrics() if r.get("kind") == "aggregate"]) == 2 * 2
    if DEVICE == "cuda":
        assert all(c["memory"].get("cuda_peak_mib", 0) > 0 for c in s["clients"].values())


def test_batched_server_on_the_device(tmp_path, cenlora_run):
    """Batched serving on the device: one client equals CenLoRA (atol 1e-5); three clients
    sharing the device are served in batches of three."""
    one = torchrun(2, ["--method=splitlora", "--split.server_batching=true", "--split.cut=2", *COMMON], tmp_path,
                   "one", timeout=TIMEOUT)
    assert one.rc == 0, one.stderr[-2000:]
    _close(_lora(cenlora_run), _lora(one), 1e-5)
    three = torchrun(4, ["--split.server_batching=true", "--train.max_steps=4", "--runtime.order=round_robin", *DEV],
                     tmp_path, "three", timeout=TIMEOUT)
    assert three.rc == 0, three.stderr[-3000:]
    batches = [r for r in three.metrics() if r.get("kind") == "server_batch"]
    assert [r["clients"] for r in batches] == [[1, 2, 3]] * 4


@pytest.mark.parametrize("strategy, method", [("lora-a2", "splitlora"), ("flora", "fedlora")])
def test_heterogeneous_rank_strategies_on_the_device(tmp_path, strategy, method):
    """LoRA-A2 (probe steps, rank selection masks) and FLoRA (an all_gather, a base that changes)
    with clients of ranks 2 and 4: every tensor they make must land on the clients' device."""
    run = torchrun(3, [f"--method={method}", f"--fed.strategy={strategy}", "--train.max_steps=6",
                       "--fed.aggregate_every=2", "--lora.r=4", "--fed.client_ranks=2,4", "--fed.probe_steps=2",
                       *DEV], tmp_path, timeout=TIMEOUT)
    assert run.rc == 0, run.stderr[-3000:]
    records = run.metrics()
    for client in (1, 2):
        losses = [r["loss"] for r in records if r.get("kind") == "step" and r["client"] == client]
        assert len(losses) == 6 and losses[-1] < losses[0], (client, losses)
        rounds = [r["round"] for r in records if r.get("kind") == "aggregate" and r["client"] == client]
        assert rounds == [1, 2, 3]


def test_bf16_cut_on_the_device(tmp_path):
    run = torchrun(3, ["--train.max_steps=4", "--split.cut_dtype=bf16", "--split.cut=2", *DEV], tmp_path,
                   timeout=TIMEOUT)
    assert run.rc == 0, run.stderr[-3000:]
    for r in (r for r in run.metrics() if r.get("kind") == "step"):
        assert r["bytes_down"] == r["tokens"] * 64 * 2  # the activation gradient: bf16 (B, T, 64)


def test_ranks_share_one_device(tmp_path):
    """4 ranks (server + 3 clients); rank k uses GPU k mod n, so with one GPU all share it."""
    run = torchrun(4, ["--train.max_steps=4", "--fed.aggregate_every=2", *DEV], tmp_path, timeout=TIMEOUT)
    assert run.rc == 0, run.stderr[-3000:]
    assert run.summary()["n_clients"] == 3 and "out of memory" not in run.stderr.lower()
    assert _client_backend(run) == _expected_backend(3)


def test_beam_search_on_the_device_gives_the_cpu_tokens():
    from models.generate import DecodeConfig, beam_search
    from models.gpt2 import GPT2, GPT2Config

    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=3, n_head=4)).eval()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15]]
    cfg = DecodeConfig(num_beams=4, max_new_tokens=12, no_repeat_ngram_size=3, stop_tokens=(0,))
    want = beam_search(model, prompts, cfg)
    assert beam_search(model.to(DEVICE), prompts, cfg) == want
