"""Classification (data.task=classify) under torchrun: a tiny BERT learns; SplitLoRA == CenLoRA,
vanilla and U; in U no integer tensor reaches the server; every strategy trains; bitwise resume."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from runtime.io.checkpoint import mark_latest
from runtime.split.server import RECORD_ENV
from runtime.strategies import STRATEGIES
from tests.torchrun_util import torchrun

pytestmark = pytest.mark.slow

SIX = "--lora.targets=q,k,v,attn_proj,mlp_fc,mlp_proj"


def _args(encoder_dirs, kind: str = "bert") -> list[str]:
    return [f"--model.path={encoder_dirs[kind]}", "--data.task=classify", SIX, "--lora.dropout=0",
            "--runtime.order=round_robin", "--out.tensorboard=false"]


def _lora(run) -> dict[str, torch.Tensor]:
    return load_file(str(run.run_dir / "model/lora.safetensors"))


def test_a_tiny_encoder_learns_the_synthetic_intents(tmp_path, encoder_dirs):
    """Fails if LoRA's gradients or the head broke: 8 classes (chance 12.5 %) in ~200 steps."""
    run = torchrun(1, ["--method=cenlora", *_args(encoder_dirs), "--train.max_steps=200", "--train.batch_size=16",
                       "--train.lr=5e-3", "--train.warmup_steps=10", "--train.label_smoothing=0",
                       "--eval.every=100"], tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    scores = json.loads((run.run_dir / "scores.json").read_text())["scores"]
    assert scores["accuracy"] > 0.6 and scores["macro_f1"] > 0.5 and scores["n"] == 200, scores
    assert run.summary()["eval"] == scores
    tests = [r for r in run.metrics() if r.get("kind") == "test"]
    assert [t["step"] for t in tests] == [100, 200] and tests[-1]["accuracy"] == scores["accuracy"]
    head = load_file(str(run.run_dir / "model/head.safetensors"))
    assert head["head.weight"].shape == (8, 32)


# Vanilla with the heavy cases: test_a_trained_head_split_equals_centralized runs it by default.
@pytest.mark.parametrize("shape", [pytest.param("vanilla", marks=pytest.mark.heavy), "u"])
def test_one_client_split_equals_centralized(tmp_path, encoder_dirs, shape):
    common = [*_args(encoder_dirs, "roberta"), "--train.max_steps=6", "--data.partition=contiguous"]
    split = ["--method=splitlora", f"--split.shape={shape}", "--split.cut=1",
             *(["--split.head_cut=2"] if shape == "u" else [])]
    cen = torchrun(1, ["--method=cenlora", *common], tmp_path, "cen")
    sp = torchrun(2, [*split, *common], tmp_path, shape)
    assert cen.rc == 0 and sp.rc == 0, (cen.stderr[-2000:], sp.stderr[-2000:])
    a, b = _lora(cen), _lora(sp)
    assert a.keys() == b.keys() and len(a) == 2 * 6 * 3  # A and B of 6 modules x 3 layers
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (k, (a[k] - b[k]).abs().max())
    moved = {k.split(".")[2] for k in b if k.endswith("lora_B") and b[k].abs().sum() > 0}
    assert moved == {"0", "1", "2"}
    assert abs(cen.summary()["val_loss"] - sp.summary()["val_loss"]) < 1e-5


# U by default: the shape that promises the labels never leave the client.
@pytest.mark.parametrize("shape", [pytest.param("vanilla", marks=pytest.mark.heavy), "u"])
def test_what_the_server_receives(tmp_path, encoder_dirs, shape):
    """U: only floating tensors (hidden states and the padding mask) reach the server, never ids or
    labels; vanilla (the control): the labels arrive, as integers."""
    record = tmp_path / f"{shape}.jsonl"
    args = ["--method=splitlora", f"--split.shape={shape}", "--split.cut=1", "--train.max_steps=3",
            *(["--split.head_cut=2"] if shape == "u" else []), *_args(encoder_dirs)]
    run = torchrun(3, args, tmp_path, shape, env={RECORD_ENV: str(record)})
    assert run.rc == 0, run.stderr[-3000:]
    received = [json.loads(line) for line in record.read_text().splitlines()]
    calls = [c for c in received if c["call"].startswith("server_forward")]
    assert len(calls) == 2 * 3
    # The test scores at the end run through the split: hidden states and the padding mask go up,
    # no label (the server returns the logits, or in U the middle's hidden states).
    evals = [c for c in received if c not in calls]
    assert evals and {c["call"] for c in evals} == {"server_eval_output"}
    assert all(t["floating"] for c in evals for t in c["tensors"])
    tensors = [t for c in calls for t in c["tensors"]]
    if shape == "u":
        assert all(t["floating"] for t in tensors), tensors
        assert all(len(c["tensors"]) == 2 and c["tensors"][1]["shape"] == c["tensors"][0]["shape"][:2]
                   for c in calls)  # (B, T, C) hidden states + the (B, T) mask
    else:
        labels = [c["tensors"][1] for c in calls]
        assert all(not t["floating"] and len(t["shape"]) == 1 for t in labels)


# Two in the default suite (FFA-LoRA trains a language model there); the others with the heavy cases.
DEFAULT = ("fedavg", "lora-a2")


@pytest.mark.parametrize("strategy", [s if s in DEFAULT else pytest.param(s, marks=pytest.mark.heavy)
                                      for s in sorted(STRATEGIES)])
def test_every_strategy_trains_a_classifier(tmp_path, encoder_dirs, strategy):
    args = ["--method=fedlora", f"--fed.strategy={strategy}", *_args(encoder_dirs), "--train.max_steps=40",
            "--fed.aggregate_every=10", "--lora.r=4", "--train.lr=5e-3", "--train.batch_size=16",
            "--data.partition=iid", "--eval.every=20"]
    if strategy in ("flexlora", "hetlora", "lora-a2", "flora"):
        args.append("--fed.client_ranks=2,4")
    run = torchrun(3, args, tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    s = run.summary()
    assert s["loss_last"] < s["loss_first"], (s["loss_first"], s["loss_last"])
    tests = [r for r in run.metrics() if r.get("kind") == "test"]
    assert [t["round"] for t in tests] == [2, 4] and all(0 <= t["accuracy"] <= 1 for t in tests)
    part = s["clients"]["1"]["data"]["all_clients"]
    assert sum(part["sizes"]) == 400 and part["classes_per_client"]  # tests/torchrun_util.py: 400 examples


def test_resume_is_bitwise(tmp_path, encoder_dirs):
    """LoRA-A2 with budgets 1 and r_G = 2 under label skew, in round_robin order: the full-budget client
    makes the probe's server calls too (before, the turns went out of step and the run hung)."""
    args = ["--method=splitlora", "--fed.strategy=lora-a2", "--fed.client_ranks=1,2", *_args(encoder_dirs),
            "--data.partition=dirichlet:0.5",
            "--train.max_steps=6", "--fed.aggregate_every=2", "--ckpt.every=3", "--lora.r=2", "--split.cut=1"]
    full = torchrun(3, args, tmp_path, "full")
    assert full.rc == 0, full.stderr[-3000:]
    cut = tmp_path / "cut"
    shutil.copytree(full.run_dir, cut)
    shutil.rmtree(cut / "model")
    mark_latest(cut, 3)
    resumed = torchrun(3, [f"--resume={cut}"], tmp_path, "ignored")
    assert resumed.rc == 0 and "resuming" in resumed.stderr, resumed.stderr[-3000:]
    a, b = _lora(full), load_file(str(cut / "model/lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _head(run) -> dict[str, torch.Tensor]:
    return load_file(str(run.run_dir / "model/head.safetensors"))


# U with the heavy cases: test_one_client_split_equals_centralized runs U with the frozen head by default.
@pytest.mark.parametrize("shape", ["vanilla", pytest.param("u", marks=pytest.mark.heavy)])
def test_a_trained_head_split_equals_centralized(tmp_path, encoder_dirs, shape):
    """model.train_head: the head's holder trains it (vanilla: the server, U: the client); one-client
    SplitLoRA == CenLoRA for the adapters and the head; the frozen-head run's head is the initial one."""
    common = [*_args(encoder_dirs), "--train.max_steps=6", "--data.partition=contiguous", "--train.lr=5e-3"]
    split = ["--method=splitlora", f"--split.shape={shape}", "--split.cut=1"]
    cen = torchrun(1, ["--method=cenlora", *common, "--model.train_head=true"], tmp_path, "cen")
    sp = torchrun(2, [*split, *common, "--model.train_head=true"], tmp_path, shape)
    frozen = torchrun(1, ["--method=cenlora", *common], tmp_path, "frozen")
    assert cen.rc == 0 and sp.rc == 0 and frozen.rc == 0, (cen.stderr[-2000:], sp.stderr[-2000:])
    for a, b in ((_lora(cen), _lora(sp)), (_head(cen), _head(sp))):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (k, (a[k] - b[k]).abs().max())
    trained, init = _head(cen), _head(frozen)
    assert trained.keys() == init.keys() and all(not torch.equal(trained[k], init[k]) for k in init)


def test_a_trained_head_is_averaged_among_clients_and_resumes(tmp_path, encoder_dirs):
    """FedLoRA with model.train_head and LoRA-A2 (whose optimizer groups list only adapters): after every
    round both clients hold the same head, its bytes count in the upload, and a resumed run is bitwise."""
    args = ["--method=fedlora", "--fed.strategy=lora-a2", "--fed.client_ranks=1,2", "--lora.r=2",
            *_args(encoder_dirs), "--model.train_head=true", "--data.partition=dirichlet:0.5", "--train.lr=5e-3",
            "--train.max_steps=6", "--fed.aggregate_every=3", "--ckpt.every=3"]
    full = torchrun(3, args, tmp_path, "full")
    assert full.rc == 0, full.stderr[-3000:]
    heads = [torch.load(full.run_dir / f"ckpt/step_6/client{r}.pt", weights_only=True)["clients"][0]["lora"]
             for r in (1, 2)]
    keys = [k for k in heads[0] if k.startswith("head.")]
    assert keys and all(torch.equal(heads[0][k], heads[1][k]) for k in keys)
    head_params = sum(heads[0][k].numel() for k in keys)
    rounds = [r for r in full.metrics() if r.get("kind") == "aggregate" and r["client"] == 1]
    assert all(r["up_params"] >= head_params for r in rounds) and len(rounds) == 2
    cut = tmp_path / "cut"
    shutil.copytree(full.run_dir, cut)
    shutil.rmtree(cut / "model")
    mark_latest(cut, 3)
    resumed = torchrun(3, [f"--resume={cut}"], tmp_path, "ignored")
    assert resumed.rc == 0 and "resuming" in resumed.stderr, resumed.stderr[-3000:]
    for name in ("lora", "head"):
        a = load_file(str(full.run_dir / f"model/{name}.safetensors"))
        b = load_file(str(cut / f"model/{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
