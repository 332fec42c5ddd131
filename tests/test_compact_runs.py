"""A compact-vocabulary base through the distributed paths: SplitLoRA trains, checkpoints,
resumes bitwise, decodes and is scored; FedLoRA with full fine-tuning averages whole models."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from runtime.io.checkpoint import mark_latest
from tests.torchrun_util import torchrun

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("shape", [[], pytest.param(["--split.shape=u", "--split.cut=1"], marks=pytest.mark.heavy)],
                         ids=["vanilla", "u"])
def test_compact_split_run_trains_resumes_bitwise_and_is_scored(pretrained_base, tmp_path, shape):
    args = [*shape, f"--model.path={pretrained_base}", "--train.max_steps=6", "--ckpt.every=3",
            "--runtime.order=round_robin", "--fed.aggregate_every=2", "--eval.at_end=true", "--eval.split=valid",
            "--eval.max_mrs=4", "--eval.meteor=false", "--eval.num_beams=2", "--eval.samples=2", "--train.lr=3e-3"]
    full = torchrun(3, args, tmp_path, "full", timeout=240)
    assert full.rc == 0, full.stderr[-3000:]
    record = json.loads((full.run_dir / "scores.json").read_text())
    assert record["n_mrs"] == 4 and record["scores"]["BLEU"] > 0  # decoded text shares n-grams with the refs
    hyps = (full.run_dir / "predictions.txt").read_text().splitlines()
    assert len(hyps) == 4 and all(h.strip() for h in hyps)
    assert "samples (greedy, validation MRs)" in full.stderr and (full.run_dir / "samples.txt").is_file()
    if importlib.util.find_spec("tensorboard") is not None:  # the scores reach TensorBoard too
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(full.run_dir))
        acc.Reload()
        assert acc.Scalars("eval/BLEU")[0].value == pytest.approx(record["scores"]["BLEU"])
    summary = full.summary()
    assert summary["val_loss"] < 3.0  # a random base of this vocabulary sits near ln(size) ~ 8
    _peft_equals_ours(full.run_dir, pretrained_base)  # the exported adapter: client + server LoRA
    # Resume the same run from its step-3 checkpoint: the trained model is identical.
    cut = tmp_path / "cut"
    shutil.copytree(full.run_dir, cut)
    shutil.rmtree(cut / "model")
    mark_latest(cut, 3)
    resumed = torchrun(3, [f"--resume={cut}"], tmp_path, "ignored", timeout=240)
    assert resumed.rc == 0, resumed.stderr[-3000:]
    a, b = load_file(str(full.run_dir / "model/lora.safetensors")), load_file(str(cut / "model/lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _peft_equals_ours(run_dir, base_dir) -> None:
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from runtime.config.parse import config_from_dict
    from runtime.evaluation import load_trained_model

    saved = json.loads((run_dir / "config.json").read_text())
    ours = load_trained_model(config_from_dict({k: v for k, v in saved.items() if k != "launch"}), run_dir).eval()
    base = transformers.GPT2LMHeadModel.from_pretrained(base_dir).eval()
    x = torch.randint(0, ours.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model = peft.PeftModel.from_pretrained(base, run_dir / "model").eval()
        assert torch.allclose(model(x).logits, ours(x), atol=1e-5)


def test_fedlora_full_fine_tuning_averages_whole_models(pretrained_base, tmp_path):
    run = torchrun(3, [f"--model.path={pretrained_base}", "--method=fedlora", "--train.finetune=full",
                       "--train.max_steps=4", "--fed.aggregate_every=1", "--train.lr=1e-3"], tmp_path, timeout=240)
    assert run.rc == 0, run.stderr[-3000:]
    c1 = torch.load(run.run_dir / "ckpt/step_4/client1.pt", weights_only=True)["clients"][0]["lora"]
    c2 = torch.load(run.run_dir / "ckpt/step_4/client2.pt", weights_only=True)["clients"][0]["lora"]
    assert "transformer.wte.weight" in c1 and "transformer.h.0.mlp.c_fc.weight" in c1
    assert all(torch.equal(c1[k], c2[k]) for k in c1)  # every weight averaged, the last step included
    aggs = [r for r in run.metrics() if r.get("kind") == "aggregate"]
    n_params = sum(v.numel() for v in c1.values())
    assert len(aggs) == 2 * 4 and all(r["up_params"] == n_params and r["bytes"] == 4 * n_params for r in aggs)
    assert (run.run_dir / "model/model.safetensors").is_file() and (run.run_dir / "model/vocab_map.json").is_file()
