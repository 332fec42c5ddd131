"""Multi-process runs of every method under torchrun (gloo, tiny preset, CPU)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.torchrun_util import torchrun

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method, nproc", [("cenlora", 1), ("splitlora", 3), ("fedlora", 3)])
def test_method_trains_and_exits_cleanly(tmp_path, method, nproc):
    run = torchrun(nproc, [f"--method={method}", "--train.max_steps=12", "--fed.aggregate_every=4"], tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    for f in ("config.json", "metrics.jsonl", "summary.json", "model/lora.safetensors"):
        assert (run.run_dir / f).is_file(), f
    s = run.summary()
    assert s["method"] == method and s["data_source"] == "synthetic"
    assert s["loss_last"] < s["loss_first"] - 0.03, (s["loss_first"], s["loss_last"])
    steps = [r for r in run.metrics() if r.get("kind") == "step"]
    assert len(steps) == 12 * max(1, nproc - 1)
    assert "data: SYNTHETIC" in run.stderr  # the run says it is not on E2E
    ckpts = sorted(p.name for p in (run.run_dir / "ckpt").glob("step_12/*.pt"))
    expected = {"cenlora": ["cenlora.pt"], "splitlora": ["client1.pt", "client2.pt", "server.pt"],
                "fedlora": ["client1.pt", "client2.pt"]}[method]  # a FedLoRA server holds no weights
    assert ckpts == expected


def test_split_bytes_across_the_cut(tmp_path):
    run = torchrun(2, ["--train.max_steps=3", "--split.cut=2"], tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    for r in (r for r in run.metrics() if r.get("kind") == "step"):
        # Down: the activation gradient, fp32 (B, T, d=64). Up: that + targets (int64) + mask (fp32).
        assert r["bytes_down"] % (64 * 4) == 0
        bt = r["bytes_down"] // (64 * 4)
        assert r["bytes_up"] == r["bytes_down"] + bt * (8 + 4)
        assert set(r["time"]) >= {"client_fwd", "cut_up", "server_fwd", "server_bwd", "cut_down", "client_bwd"}


def test_one_client_split_equals_centralized(tmp_path):
    """The cut is invisible: K steps of SplitLoRA with one client == K steps of CenLoRA,
    with the sequential server and with the batched one (runtime/split/batching.py)."""
    common = ["--train.max_steps=6", "--lora.dropout=0", "--model.dropout=0", "--data.partition=contiguous",
              "--runtime.order=round_robin"]
    cen = torchrun(1, ["--method=cenlora", *common], tmp_path, "cen")
    assert cen.rc == 0, cen.stderr[-2000:]
    a = load_file(str(cen.run_dir / "model/lora.safetensors"))
    for mode in ("sequential", "batched"):
        split = torchrun(2, ["--method=splitlora", f"--split.server_batching={mode == 'batched'}", *common],
                         tmp_path, mode)
        assert split.rc == 0, split.stderr[-2000:]
        b = load_file(str(split.run_dir / "model/lora.safetensors"))
        assert a.keys() == b.keys() and len(a) == 16  # 4 blocks x (q, v) x (A, B)
        moved = 0
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (mode, k, (a[k] - b[k]).abs().max())
            moved += int(k.endswith("lora_B") and a[k].abs().sum() > 0)
        assert moved == 8  # every B left zero: the steps really trained both sides of the cut
        assert abs(cen.summary()["loss_last"] - split.summary()["loss_last"]) < 1e-5
        assert split.summary()["server"]["mode"] == mode


def test_two_clients_aggregated_every_step_hold_equal_adapters(tmp_path):
    run = torchrun(3, ["--train.max_steps=4", "--fed.aggregate_every=1", "--data.partition=dirichlet:0.5"],
                   tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    c1 = torch.load(run.run_dir / "ckpt/step_4/client1.pt", weights_only=True)["clients"][0]["lora"]
    c2 = torch.load(run.run_dir / "ckpt/step_4/client2.pt", weights_only=True)["clients"][0]["lora"]
    assert c1.keys() == c2.keys() and c1
    for k in c1:
        assert torch.equal(c1[k], c2[k]), k
    aggs = [r for r in run.metrics() if r.get("kind") == "aggregate"]
    assert len(aggs) == 2 * 4
    s = run.summary()
    weights = [s["clients"][c]["weight"] for c in ("1", "2")]
    samples = [s["clients"][c]["samples"] for c in ("1", "2")]
    assert abs(sum(weights) - 1) < 1e-9 and abs(weights[0] - samples[0] / sum(samples)) < 1e-9


def test_more_clients_than_rpc_threads(tmp_path):
    """Waiting clients hold no server RPC thread (their forwards are futures): 4 clients run
    to the end on a pool of 2 RPC threads, in rank order."""
    run = torchrun(5, ["--train.max_steps=3", "--runtime.rpc_threads=2", "--runtime.order=round_robin",
                       "--fed.aggregate_every=3", "--data.max_train_examples=160"], tmp_path, timeout=300)
    assert run.rc == 0, run.stderr[-3000:]
    steps = [r for r in run.metrics() if r.get("kind") == "step"]
    assert len(steps) == 4 * 3
    assert run.summary()["n_clients"] == 4


def test_split_run_with_adapters_on_some_blocks_only(tmp_path):
    """lora.layers: the client adapts block 0, the server block 3; blocks 1-2 stay frozen and unadapted."""
    run = torchrun(3, ["--train.max_steps=4", "--fed.aggregate_every=2", "--split.cut=1", "--lora.layers=0,3"],
                   tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    lora = load_file(str(run.run_dir / "model" / "lora.safetensors"))
    assert {k.split(".")[2] for k in lora} == {"0", "3"}
    assert all(v.abs().sum() > 0 for k, v in lora.items() if k.endswith("lora_B"))  # both sides trained
    adapter_cfg = json.loads((run.run_dir / "model" / "adapter_config.json").read_text())
    assert adapter_cfg["layers_to_transform"] == [0, 3]


def test_client_lr_scale_scales_the_clients_lr_only(tmp_path):
    """fed.client_lr_scale=3: every client step runs at 3x the lr of the same run unscaled (same schedule)."""
    args = ["--train.max_steps=4", "--fed.aggregate_every=2", "--train.warmup_steps=1"]
    base = torchrun(3, args, tmp_path, "base")
    scaled = torchrun(3, [*args, "--fed.client_lr_scale=3"], tmp_path, "scaled")
    assert base.rc == 0 and scaled.rc == 0, (base.stderr[-2000:], scaled.stderr[-2000:])

    def lrs(run):
        return {(r["client"], r["step"]): r["lr"] for r in run.metrics() if r.get("kind") == "step"}

    got, want = lrs(scaled), lrs(base)
    assert got.keys() == want.keys() and len(got) == 2 * 4
    assert all(abs(got[k] - 3 * want[k]) < 1e-12 for k in got) and min(want.values()) >= 0 < max(want.values())
    assert scaled.summary()["loss_last"] != base.summary()["loss_last"]  # the clients' adapters moved differently
