"""A finished run is evaluated end to end; saved models reload exactly (incl. the peft layout)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from launch.evaluate import main as evaluate_main
from launch.train import main as train_main
from models.lora import iter_lora_adapters
from runtime.config.parse import config_from_dict
from runtime.evaluation import load_trained_model

FAST = ["--method=cenlora", "--data.source=synthetic", "--data.max_train_examples=200",
        "--data.max_eval_examples=8", "--train.max_steps=4", "--train.batch_size=4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert train_main([*FAST, f"--out.dir={out}", "--out.name=r"]) == 0  # cenlora needs no process group
    return out / "r"


def _cfg(run_dir):
    saved = json.loads((run_dir / "config.json").read_text())
    return config_from_dict({k: v for k, v in saved.items() if k != "launch"})


def test_saved_model_reloads_bitwise(run_dir):
    model = load_trained_model(_cfg(run_dir), run_dir)
    lora = load_file(str(run_dir / "model/lora.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in lora.items())
    assert any(v.abs().sum() > 0 for k, v in lora.items() if k.endswith("lora_B"))


def test_peft_layout_is_the_same_update(run_dir):
    """adapter_model.safetensors (one c_attn adapter of rank 2r) gives exactly our q/v update."""
    cfg_peft = json.loads((run_dir / "model/adapter_config.json").read_text())
    tensors = load_file(str(run_dir / "model/adapter_model.safetensors"))
    model = load_trained_model(_cfg(run_dir), run_dir)
    scale = cfg_peft["lora_alpha"] / cfg_peft["r"]
    for name, adapter in iter_lora_adapters(model):
        block = name.split(".adapters.")[0]
        A = tensors[f"base_model.model.{block}.lora_A.weight"]
        B = tensors[f"base_model.model.{block}.lora_B.weight"]
        delta = (B @ A) * scale  # (3d, d)
        d = A.shape[1]
        s = {"q": 0, "k": 1, "v": 2}[name.rsplit(".", 1)[1]] * d
        assert torch.allclose(delta[s:s + d], adapter.delta_weight(), atol=1e-6)
    assert cfg_peft["target_modules"] == ["c_attn"] and cfg_peft["fan_in_fan_out"] is True


@pytest.mark.parametrize("style", ["raw", "tokenized"])
def test_evaluate_cli_writes_predictions_references_scores(run_dir, tmp_path, style, capsys):
    out = tmp_path / style
    rc = evaluate_main(["--run", str(run_dir), "--max-mrs", "5", "--beams", "2", "--no-meteor",
                        "--refs-style", style, "--out", str(out)])
    assert rc == 0
    preds = (out / "predictions.txt").read_text().splitlines()
    groups = (out / "references.txt").read_text().strip().split("\n\n")
    assert len(preds) == len(groups) == 5
    rec = json.loads((out / "scores.json").read_text())
    assert rec["refs_style"] == style and rec["n_mrs"] == 5 and rec["data_source"] == "synthetic"
    assert set(rec["scores"]) == {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"} and rec["scores"]["METEOR"] is None
    assert "SYNTHETIC" in rec["warning"]
    assert rec["slots"]["n_name"] == 5 and 0 <= rec["slots"]["name"] <= 1  # every synthetic MR has a name
    assert f"refs {style}" in capsys.readouterr().out


def test_rescoring_predictions_equals_decoding_again(run_dir, tmp_path):
    """--predictions scores earlier texts against the other references without decoding: the
    scores equal a fresh decode scored against those references, and the decode settings are
    those the texts were made with."""
    common = ["--run", str(run_dir), "--max-mrs", "5", "--beams", "2", "--no-meteor"]
    assert evaluate_main([*common, "--refs-style", "raw", "--out", str(tmp_path / "raw")]) == 0
    assert evaluate_main([*common, "--refs-style", "tokenized", "--out", str(tmp_path / "tok")]) == 0
    assert evaluate_main([*common, "--beams", "7", "--refs-style", "tokenized", "--out", str(tmp_path / "re"),
                          "--predictions", str(tmp_path / "raw" / "predictions.txt")]) == 0
    fresh, rescored = (json.loads((tmp_path / d / "scores.json").read_text()) for d in ("tok", "re"))
    assert rescored["scores"] == fresh["scores"] and rescored["rescored"] and not fresh["rescored"]
    assert rescored["decode"]["num_beams"] == 2  # taken from raw/scores.json, not the ignored --beams 7
    assert (tmp_path / "re" / "predictions.txt").read_text() == (tmp_path / "raw" / "predictions.txt").read_text()


def test_rescoring_refuses_a_predictions_file_of_another_length(run_dir, tmp_path, capsys):
    preds = tmp_path / "predictions.txt"
    preds.write_text("one text\nanother\n")
    assert evaluate_main(["--run", str(run_dir), "--max-mrs", "5", "--no-meteor", "--predictions", str(preds),
                          "--out", str(tmp_path / "o")]) == 2
    assert "2 predictions for 5 MRs" in capsys.readouterr().err


def test_only_a_splitlora_run_decodes_through_the_split(run_dir, capsys):
    assert evaluate_main(["--run", str(run_dir), "--through", "split"]) == 2
    assert "--through split needs a SplitLoRA run" in capsys.readouterr().err


def test_evaluate_rejects_a_non_run_directory(tmp_path, capsys):
    assert evaluate_main(["--run", str(tmp_path)]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_tensorboard_events_mirror_the_metrics(run_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = run_dir.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step"]
    loss = acc.Scalars("loss/client0")
    assert [e.step for e in loss] == [r["step"] for r in steps]
    assert [round(e.value, 5) for e in loss] == [round(r["loss"], 5) for r in steps]
    assert {"lr/client0", "tokens_per_s/client0", "phase_s/fwd/client0", "eval/val_loss"} <= set(acc.Tags()["scalars"])
