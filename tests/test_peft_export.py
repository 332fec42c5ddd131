"""The run's peft adapter, loaded by the real peft library, gives our logits (every target)."""

from __future__ import annotations

import json

import pytest
import torch

from launch.train import main as train_main
from runtime.config import config_from_dict
from runtime.evaluation import load_trained_model

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

FAST = ["--method=cenlora", "--data.source=synthetic", "--data.max_train_examples=64", "--data.max_eval_examples=8",
        "--train.batch_size=4", "--train.max_steps=3", "--train.lr=0.02", "--train.warmup_steps=0",
        "--lora.dropout=0"]


def _trained(tmp_path, base, targets: str):
    name = targets.replace(",", "-")
    assert train_main([*FAST, f"--model.path={base}", f"--lora.targets={targets}", f"--out.dir={tmp_path}",
                       f"--out.name={name}"]) == 0
    run = tmp_path / name
    saved = json.loads((run / "config.json").read_text())
    return run, load_trained_model(config_from_dict({k: v for k, v in saved.items() if k != "launch"}), run).eval()


@pytest.mark.parametrize("targets", ["q,v", "q,v,mlp_fc", "q,k,v,attn_proj,mlp_fc,mlp_proj", "mlp_fc,mlp_proj"])
def test_peft_logits_and_merged_logits_equal_ours(pretrained_base, tmp_path, targets):
    run, ours = _trained(tmp_path, pretrained_base, targets)
    adapter_cfg = json.loads((run / "model/adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(pretrained_base)
    base = transformers.GPT2LMHeadModel.from_pretrained(pretrained_base).eval()
    x = torch.randint(0, ours.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, before = ours(x), base(x).logits
        assert (want - before).abs().max() > 1e-3  # the adapters changed the model
        model = peft.PeftModel.from_pretrained(base, run / "model").eval()  # wraps `base` in place
        assert torch.allclose(model(x).logits, want, atol=1e-5)
        merged = model.merge_and_unload()
        assert torch.allclose(merged(x).logits, want, atol=1e-5)
