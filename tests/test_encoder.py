"""The BERT-family encoder classifier: parity with transformers, parts, LoRA vs peft, errors."""

import json

import pytest
import torch

from models.encoder import EncoderClassifier
from models.lora import LoRAConfig, apply_lora, iter_lora_adapters
from runtime.build import build_full_model, build_part, check_model_fits_task, model_arch
from runtime.config import ConfigError
from runtime.config.parse import build_config
from tests.encoder_util import build_encoder_dir

transformers = pytest.importorskip("transformers")
SIX = "--lora.targets=q,k,v,attn_proj,mlp_fc,mlp_proj"


def _batch(kind: str, vocab: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (3, 10) and their attention mask; rows of 10, 6 and 3 real tokens."""
    pad = 0 if kind == "bert" else 1
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, vocab, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, pad), mask


def _hf(kind: str, path):
    cls = transformers.BertModel if kind == "bert" else transformers.RobertaModel
    return cls.from_pretrained(str(path), add_pooling_layer=False).eval()


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("safetensors", [True, False])
def test_hidden_states_match_transformers(tmp_path, kind, safetensors):
    path = build_encoder_dir(tmp_path / kind, kind, safetensors=safetensors)
    assert (path / ("model.safetensors" if safetensors else "pytorch_model.bin")).is_file()
    ids, mask = _batch(kind)
    ref = _hf(kind, path)(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, C)
    ours = EncoderClassifier.from_pretrained(path, num_labels=5).eval()
    h = ours(ids, stop_block=99)  # the mask comes from the padding id
    real = mask.bool()[..., None]
    assert (ref - h).abs().masked_select(real).max() < 1e-4
    pooled = (ref * real).sum(1) / real.sum(1)
    assert torch.allclose(ours(ids), ours.head(pooled), atol=1e-4)


@pytest.mark.parametrize("shape", ["vanilla", "u"])
def test_parts_built_alone_equal_the_whole(encoder_dirs, shape):
    args = [f"--model.path={encoder_dirs['bert']}", "--data.task=classify", "--data.source=synthetic", SIX,
            "--split.cut=1", f"--split.shape={shape}", *(["--split.head_cut=2"] if shape == "u" else [])]
    cfg = build_config(args)
    whole = build_full_model(cfg).state_dict()
    client, server = build_part(cfg, "client").state_dict(), build_part(cfg, "server").state_dict()
    assert set(client) | set(server) == set(whole) and not set(client) & set(server)
    for k, v in {**client, **server}.items():
        assert torch.equal(v, whole[k]), k
    blocks = {k.split(".")[2] for k in server if k.startswith("transformer.h.")}
    assert blocks == ({"1", "2"} if shape == "vanilla" else {"1"})
    assert ("head.weight" in server) == (shape == "vanilla")


def test_head_is_frozen_and_the_same_for_every_seeded_build(encoder_dirs):
    cfg = build_config([f"--model.path={encoder_dirs['roberta']}", "--data.task=classify", "--data.source=synthetic",
                        SIX])
    a, b = build_full_model(cfg), build_full_model(cfg)
    assert torch.equal(a.head.weight, b.head.weight) and not a.head.weight.requires_grad
    trainable = {n for n, p in a.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(list(iter_lora_adapters(a))) == 6 * a.config.n_layer  # N = 6 x layers (LoRA-A2's count)


def test_lora_outputs_equal_peft(tmp_path, encoder_dirs):
    """Our adapters exported in peft's layout give transformers + peft our hidden states."""
    peft = pytest.importorskip("peft")
    from runtime.io.artifacts import save_encoder_model

    path = encoder_dirs["bert"]
    cfg = build_config([f"--model.path={path}", "--data.task=classify", "--data.source=synthetic", SIX,
                        "--lora.r=2", "--lora.alpha=16", "--lora.dropout=0"])
    ours = build_full_model(cfg).eval()
    with torch.no_grad():
        for _, a in iter_lora_adapters(ours):
            a.lora_B.normal_(0.0, 0.5)
    out = save_encoder_model(tmp_path / "model", ours, cfg)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2
    adapted = peft.PeftModel.from_pretrained(_hf("bert", path), str(out)).eval()
    ids, mask = _batch("bert")
    ref = adapted(input_ids=ids, attention_mask=mask).last_hidden_state
    plain = _hf("bert", path)(input_ids=ids, attention_mask=mask).last_hidden_state
    h = ours(ids, stop_block=99)
    real = mask.bool()[..., None]
    assert (plain - h).abs().masked_select(real).max() > 1e-2  # the adapters change the output
    assert (ref - h).abs().masked_select(real).max() < 1e-4


def test_lora_applies_to_a_loaded_encoder_as_to_gpt2(encoder_dirs):
    model = EncoderClassifier.from_pretrained(encoder_dirs["bert"], num_labels=3)
    apply_lora(model, LoRAConfig(r=1, targets=("q", "v", "mlp_fc")))
    names = [n for n, _ in iter_lora_adapters(model)]
    assert names[:3] == ["transformer.h.0.attn.c_attn.adapters.q", "transformer.h.0.attn.c_attn.adapters.v",
                         "transformer.h.0.mlp.c_fc.adapters.all"]


def test_unsupported_architecture_is_one_clear_error(tmp_path, encoder_dirs):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    cfg = build_config([f"--model.path={tmp_path}"])
    with pytest.raises(ConfigError, match="supported architectures: gpt2, bert, roberta"):
        model_arch(cfg)
    gen = build_config([f"--model.path={encoder_dirs['bert']}"])  # data.task=finetune on an encoder
    with pytest.raises(ConfigError, match="it classifies"):
        check_model_fits_task(gen)
    with pytest.raises(ConfigError, match="needs a BERT or RoBERTa encoder"):
        check_model_fits_task(build_config(["--data.task=classify"]))


def test_speed_benchmark_compares_like_with_like(tmp_path, encoder_dirs):
    """launch.bench.encoder times the same step on both sides: their first losses agree."""
    pytest.importorskip("peft")
    from launch.bench.encoder import main

    assert main(["--model", str(encoder_dirs["bert"]), "--pairs", "2", "--warmup", "1", "--labels", "5",
                 "--seq", "8", "--batch", "4", "--threads", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    first = report["first_loss"]
    assert first["ours"] == pytest.approx(first["transformers_peft"], abs=1e-5)
    assert report["ratio"]["min"] > 0 and report["pairs"] == 2


def test_a_tokenizer_that_pads_with_another_id_is_refused(tmp_path, encoder_dirs):
    import shutil

    from runtime.inputs import load_client_data

    path = tmp_path / "bert"
    shutil.copytree(encoder_dirs["bert"], path)
    hf = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**hf, "pad_token_id": 5}))
    cfg = build_config([f"--model.path={path}", "--data.task=classify", "--data.source=synthetic", SIX])
    with pytest.raises(ValueError, match="pads with id 0 but config.json's pad_token_id is 5"):
        load_client_data(cfg, 0, 1)
