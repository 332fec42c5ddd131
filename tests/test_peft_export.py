"""The run's peft adapter, loaded by the real peft library, gives our logits (every target)."""

from __future__ import annotations

import json

import pytest
import torch

from launch.train import main as train_main
from runtime.config.parse import config_from_dict
from runtime.evaluation import load_trained_model

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

FAST = ["--method=cenlora", "--data.source=synthetic", "--data.max_train_examples=64", "--data.max_eval_examples=8",
        "--train.batch_size=4", "--train.max_steps=3", "--train.lr=0.02", "--train.warmup_steps=0",
        "--lora.dropout=0"]


def _trained(tmp_path, base, targets: str, extra: tuple[str, ...] = ()):
    name = targets.replace(",", "-")
    assert train_main([*FAST, f"--model.path={base}", f"--lora.targets={targets}", f"--out.dir={tmp_path}",
                       f"--out.name={name}", *extra]) == 0
    run = tmp_path / name
    saved = json.loads((run / "config.json").read_text())
    return run, load_trained_model(config_from_dict({k: v for k, v in saved.items() if k != "launch"}), run).eval()


@pytest.mark.parametrize(("targets", "layers"), [("q,k,v,attn_proj,mlp_fc,mlp_proj", ""), ("mlp_fc,mlp_proj", ""),
                                                ("q,v,mlp_fc", "0,2")])
def test_peft_logits_and_merged_logits_equal_ours(pretrained_base, tmp_path, targets, layers):
    run, ours = _trained(tmp_path, pretrained_base, targets, (f"--lora.layers={layers}",))
    adapter_cfg = json.loads((run / "model/adapter_config.json").read_text())
    assert adapter_cfg.get("layers_to_transform") == ([int(x) for x in layers.split(",")] if layers else None)
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


def _ours(run):
    saved = json.loads((run / "config.json").read_text())
    return load_trained_model(config_from_dict({k: v for k, v in saved.items() if k != "launch"}), run).eval()


def _auto_peft_equals_ours(run) -> None:
    from peft import AutoPeftModelForCausalLM

    ours = _ours(run)
    model = AutoPeftModelForCausalLM.from_pretrained(run / "model").eval()  # offline: the base is in model/
    x = torch.randint(0, ours.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(model(x).logits, ours(x), atol=1e-5)


def test_a_random_base_run_directory_is_a_peft_model(tmp_path):
    assert train_main([*FAST, "--model.name=tiny", "--lora.targets=q,v,mlp_fc", f"--out.dir={tmp_path}",
                       "--out.name=random"]) == 0
    model_dir = tmp_path / "random" / "model"
    assert json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        model_dir.resolve())
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= {p.name for p in model_dir.iterdir()}
    _auto_peft_equals_ours(tmp_path / "random")


@pytest.mark.slow
def test_flora_with_a_model_path_points_its_adapter_at_the_changed_base(pretrained_base, tmp_path):
    from tests.torchrun_util import torchrun

    run = torchrun(3, [f"--model.path={pretrained_base}", "--method=fedlora", "--fed.strategy=flora",
                       "--train.max_steps=4", "--fed.aggregate_every=2", "--train.lr=0.02", "--lora.dropout=0"],
                   tmp_path, timeout=240)
    assert run.rc == 0, run.stderr[-3000:]
    base = json.loads((run.run_dir / "model/adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str((run.run_dir / "model").resolve()) != str(pretrained_base)
    _auto_peft_equals_ours(run.run_dir)


def test_the_adapters_skeleton_exports_what_the_whole_model_exports(pretrained_base):
    """A split run on an unchanged --model.path exports from the adapters alone (runtime/build.py
    adapters_skeleton): the same lora.safetensors tensors and peft layout as the assembled whole
    model, with every base weight left on the meta device."""
    from models.lora import iter_lora_adapters, lora_state_dict
    from runtime.build import adapters_skeleton, build_full_model
    from runtime.config.parse import build_config
    from runtime.io.artifacts import peft_layout

    cfg = build_config([f"--model.path={pretrained_base}", "--method=splitlora", "--lora.targets=q,v,mlp_fc"])
    whole = build_full_model(cfg)
    with torch.no_grad():
        for _, adapter in iter_lora_adapters(whole):
            adapter.lora_B.normal_(0.0, 0.1)
        next(a for _, a in iter_lora_adapters(whole)).rank_mask[1:] = 0  # a client's rank mask travels too
    state = whole.state_dict()
    # The client's part gives its adapters with their masks; the server's, A and B only (as fetched).
    client = {k: v for k, v in state.items() if ".adapters." in k and ".h.0." in k}
    server = {k: v for k, v in lora_state_dict(whole).items() if ".h.0." not in k}
    skeleton = adapters_skeleton(cfg, {**client, **server})
    ours, theirs = lora_state_dict(skeleton), lora_state_dict(whole)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    (a, a_cfg), (b, b_cfg) = peft_layout(skeleton, cfg), peft_layout(whole, cfg)
    assert a_cfg == b_cfg and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    real = [n for n, p in skeleton.named_parameters() if not p.is_meta]
    assert real and all(".adapters." in n for n in real)
