"""The U-shaped split under torchrun: equal to CenLoRA, hidden states only across the cut."""

import json

import pytest
import torch
from safetensors.torch import load_file

from runtime.split.server import RECORD_ENV
from runtime.strategies import STRATEGIES
from tests.torchrun_util import REPO, torchrun

pytestmark = pytest.mark.slow

U = ["--method=splitlora", "--split.shape=u", "--split.cut=1", "--split.head_cut=3"]


def test_one_client_u_split_equals_centralized(tmp_path):
    """Client front (block 0) -> server (1, 2) -> client back end (3, ln_f, head, loss) == CenLoRA."""
    common = ["--train.max_steps=6", "--lora.dropout=0", "--model.dropout=0", "--data.partition=contiguous",
              "--runtime.order=round_robin"]
    cen = torchrun(1, ["--method=cenlora", *common], tmp_path, "cen")
    u = torchrun(2, [*U, *common], tmp_path, "u")
    assert cen.rc == 0 and u.rc == 0, (cen.stderr[-2000:], u.stderr[-2000:])
    a = load_file(str(cen.run_dir / "model/lora.safetensors"))
    b = load_file(str(u.run_dir / "model/lora.safetensors"))
    assert a.keys() == b.keys() and len(a) == 16
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (k, (a[k] - b[k]).abs().max())
    moved = {k.split(".")[2] for k in b if k.endswith("lora_B") and b[k].abs().sum() > 0}
    assert moved == {"0", "1", "2", "3"}  # front, middle and back end all trained
    assert abs(cen.summary()["loss_last"] - u.summary()["loss_last"]) < 1e-5
    client = torch.load(u.run_dir / "ckpt/step_6/client1.pt", weights_only=True)["clients"][0]["lora"]
    server = torch.load(u.run_dir / "ckpt/step_6/server.pt", weights_only=True)["lora"]
    assert {k.split(".")[2] for k in client} == {"0", "3"} and {k.split(".")[2] for k in server} == {"1", "2"}


@pytest.mark.parametrize("shape", ["vanilla", "u"])
def test_what_the_server_receives(tmp_path, shape):
    """U: only floating (B, T, C) hidden states reach the server; vanilla (the control): the
    token ids arrive as targets, so the recorder sees what it must."""
    record = tmp_path / f"{shape}.jsonl"
    args = ["--method=splitlora", f"--split.shape={shape}", "--split.cut=2", "--train.max_steps=3",
            "--runtime.order=round_robin"]
    run = torchrun(3, args, tmp_path, shape, env={RECORD_ENV: str(record)})
    assert run.rc == 0, run.stderr[-3000:]
    received = [json.loads(line) for line in record.read_text().splitlines()]
    calls = [c for c in received if c["call"].startswith("server_forward")]
    assert len(calls) == 2 * 3  # every client step sent one forward call
    # ... and the validation at the end runs through the split (runtime/split/inference.py)
    assert {c["call"] for c in received} - {c["call"] for c in calls} == \
        {"server_eval_output" if shape == "u" else "server_eval_loss"}
    tensors = [t for c in received for t in c["tensors"]]
    steps = [r for r in run.metrics() if r.get("kind") == "step"]
    if shape == "u":
        assert {c["call"] for c in calls} == {"server_forward_hidden"}
        assert all(t["floating"] and t["dtype"] == "torch.float32" and len(t["shape"]) == 3 and t["shape"][2] == 64
                   for t in tensors), tensors  # training and validation alike
        for r in steps:  # up and down: exactly 2 x B x T x d x 4 bytes each, nothing else
            b, t = r["examples"], r["tokens"] // r["examples"]
            assert r["bytes_up"] == r["bytes_down"] == 2 * b * t * 64 * 4
    else:
        assert any(not t["floating"] and len(t["shape"]) == 2 for t in tensors)  # the targets: token ids
        for r in steps:
            assert r["bytes_up"] > r["bytes_down"]


def test_u_bytes_halve_with_a_bf16_cut(tmp_path):
    run = torchrun(2, [*U, "--train.max_steps=2", "--split.cut_dtype=bf16"], tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    for r in (r for r in run.metrics() if r.get("kind") == "step"):
        b, t = r["examples"], r["tokens"] // r["examples"]
        assert r["bytes_up"] == r["bytes_down"] == 2 * b * t * 64 * 2


# Two in the default suite (rank selection with budgets, a base-merging strategy; U with the
# factor average trains in the tests above); the others with the heavy cases
# (python -m pytest -m "heavy or not heavy").
DEFAULT = ("lora-a2", "flora")


@pytest.mark.parametrize("strategy", [s if s in DEFAULT else pytest.param(s, marks=pytest.mark.heavy)
                                      for s in sorted(STRATEGIES)])
def test_every_strategy_trains_in_u_shape(tmp_path, strategy):
    args = [*U, f"--fed.strategy={strategy}", "--train.max_steps=6", "--fed.aggregate_every=3", "--lora.r=4"]
    if strategy in ("flexlora", "hetlora", "lora-a2", "flora"):
        args.append("--fed.client_ranks=2,4")
    run = torchrun(3, args, tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    s = run.summary()
    assert s["loss_last"] < s["loss_first"], (s["loss_first"], s["loss_last"])
    aggs = [r for r in run.metrics() if r.get("kind") == "aggregate"]
    assert len(aggs) == 2 * 2
    client = torch.load(run.run_dir / "ckpt/step_6/client1.pt", weights_only=True)["clients"][0]["lora"]
    assert {k.split(".")[2] for k in client} == {"0", "3"}  # the back end's adapters are the client's too


def test_a_third_shape_is_one_registered_class(tmp_path):
    """tests/toy_logits_shape.py registers a shape (the server returns logits; the loss and the labels
    stay on the client) with no change to the runtime: it trains like the vanilla split (same pieces,
    the same loss up to summation order) and no integer tensor reaches the server."""
    record = tmp_path / "logits.jsonl"
    common = ["--method=splitlora", "--split.cut=2", "--train.max_steps=4", "--lora.dropout=0", "--model.dropout=0",
              "--runtime.order=round_robin"]
    env = {"PYTHONPATH": str(REPO / "tests"), RECORD_ENV: str(record)}
    toy = torchrun(2, [*common, "--split.shape=logits"], tmp_path, "logits", env=env, module="toy_logits_shape")
    vanilla = torchrun(2, common, tmp_path, "vanilla")
    assert toy.rc == 0 and vanilla.rc == 0, (toy.stderr[-3000:], vanilla.stderr[-2000:])
    a = load_file(str(toy.run_dir / "model/lora.safetensors"))
    b = load_file(str(vanilla.run_dir / "model/lora.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(calls) == 4 and {c["call"] for c in calls} == {"server_forward_hidden"}
    assert all(t["floating"] for c in calls for t in c["tensors"])
