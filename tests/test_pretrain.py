"""Pretrained compact-vocabulary bases: the directory, transformers compatibility, exact resume,
and fine-tuning that learns from the base (and does not from a random one)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from launch.train import main as train_main
from models.gpt2 import GPT2
from runtime.data.vocab import load_vocab_map
from runtime.io.checkpoint import mark_latest
from runtime.pretrain import pretrain, pretrain_config

FAST = ["--data.source=synthetic", "--data.max_train_examples=400", "--data.max_eval_examples=32",
        "--train.batch_size=8"]


def test_directory_is_a_transformers_model_with_a_vocabulary(pretrained_base):
    transformers = pytest.importorskip("transformers")
    names = {p.name for p in pretrained_base.iterdir()}
    assert {"config.json", "model.safetensors", "vocab_map.json", "pretrain.json", "README.md"} <= names
    meta = json.loads((pretrained_base / "pretrain.json").read_text())
    vocab = load_vocab_map(pretrained_base)
    assert meta["vocab_size"] == vocab.size == json.loads((pretrained_base / "config.json").read_text())["vocab_size"]
    assert meta["val_loss"] < meta["loss_first"]  # it learned something
    assert 0 < meta["flops_shares"]["lm_head"] < 1
    ours = GPT2.from_pretrained(pretrained_base).eval()
    hf = transformers.GPT2LMHeadModel.from_pretrained(pretrained_base).eval()
    x = torch.randint(0, vocab.size, (3, 21), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), hf(x).logits, atol=1e-4)


def test_pretraining_resumes_bitwise(pretrained_base, tmp_path):
    """Resume from the step-60 checkpoint of the fixture's run: the final weights are identical."""
    out = tmp_path / "base"
    shutil.copytree(pretrained_base, out)
    (out / "model.safetensors").unlink()
    mark_latest(out / "train", 60)
    cfg = pretrain_config("micro", ["--data.source=synthetic", "--train.max_steps=120", "--train.warmup_steps=10",
                                    "--ckpt.every=60", "--data.max_eval_examples=64"])
    meta = pretrain(cfg, out, resume=True)
    assert meta["resumed_from"] == 60
    a, b = load_file(str(pretrained_base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _val_loss(tmp_path, name: str, args: list[str]) -> float:
    assert train_main(["--method=cenlora", *FAST, "--train.max_steps=30", "--train.lr=3e-3",
                       f"--out.dir={tmp_path}", f"--out.name={name}", "--out.save_model=false", *args]) == 0
    return json.loads((tmp_path / name / "summary.json").read_text())["val_loss"]


def test_fine_tuning_learns_from_the_base_far_below_a_random_one(pretrained_base, tmp_path):
    vocab = str(pretrained_base / "vocab_map.json")
    from_base = _val_loss(tmp_path, "base", [f"--model.path={pretrained_base}"])
    from_random = _val_loss(tmp_path, "random", ["--model.name=micro", "--model.base=random",
                                                 f"--model.vocab_map={vocab}"])
    # Same steps, same LoRA, same vocabulary: only the base differs.
    assert from_base < from_random - 2.0, (from_base, from_random)
    assert from_base < 2.5


def test_full_fine_tuning_trains_every_weight_and_saves_a_model_directory(pretrained_base, tmp_path):
    assert train_main(["--method=cenlora", *FAST, "--train.max_steps=6", "--train.finetune=full",
                       f"--model.path={pretrained_base}", f"--out.dir={tmp_path}", "--out.name=full"]) == 0
    model_dir = tmp_path / "full" / "model"
    trained = GPT2.from_pretrained(model_dir)
    base = GPT2.from_pretrained(pretrained_base)
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, trained.state_dict()[k])]
    assert len(changed) == len(base.state_dict())  # every weight moved (incl. embeddings and norms)
    assert load_vocab_map(model_dir) == load_vocab_map(pretrained_base)


def test_full_fine_tuning_is_refused_for_a_split_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert train_main(["--method=splitlora", "--train.finetune=full", f"--out.dir={tmp_path}"]) == 2
    assert "train.finetune=full runs with method cenlora or fedlora" in capsys.readouterr().err
