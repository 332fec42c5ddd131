"""Write a GPT-2 in Hugging Face transformers' own layout, so ``GPT2LMHeadModel.from_pretrained``
(and our ``GPT2.from_pretrained`` / ``--model.path``) loads the directory as it is.

transformers' GPT-2 keeps the four projections as Conv1D, weight (in, out): ours are
``nn.Linear`` (out, in), so those four are transposed back here. The LM head is tied to
``wte`` and not stored (transformers re-ties it on load).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from models.gpt2 import GPT2Config
from models.hf_checkpoint import _CONV1D_SUFFIXES  # the four weights transformers keeps as Conv1D
from models.lora import iter_lora_linears
from runtime.data.vocab import VocabMap

__all__ = ["hf_config_dict", "save_hf_model", "save_hf_base"]


def hf_config_dict(cfg: GPT2Config, vocab: VocabMap | None = None) -> dict:
    """transformers' ``config.json`` for this shape (tanh GELU, tied head, no dropout changes)."""
    eos = vocab.eos_id if vocab is not None else 50256
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.n_positions, "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "layer_norm_epsilon": cfg.layer_norm_epsilon, "embd_pdrop": cfg.embd_pdrop, "attn_pdrop": cfg.attn_pdrop,
        "resid_pdrop": cfg.resid_pdrop, "initializer_range": 0.02, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "tie_word_embeddings": True,
        "bos_token_id": eos, "eos_token_id": eos, "summary_type": "cls_index", "summary_use_proj": True,
        "summary_activation": None, "summary_proj_to_labels": True, "summary_first_dropout": 0.1,
    }


def save_hf_model(directory: str | Path, model: nn.Module, vocab: VocabMap | None = None) -> Path:
    """Save a whole GPT-2 without LoRA layers (full fine-tuning, pretraining)."""
    if any(True for _ in iter_lora_linears(model)):
        raise ValueError("save_hf_model takes a model without LoRA layers (use save_hf_base for a LoRA model)")
    return save_hf_base(directory, model, vocab)


def save_hf_base(directory: str | Path, model: nn.Module, vocab: VocabMap | None = None) -> Path:
    """Save the base weights of ``model`` (its LoRA layers' frozen weights, adapters left out)
    in transformers' layout, with transformers' ``config.json`` and the tokenizer: the
    vocabulary map of a compact model, else GPT-2's BPE files (``vocab.json`` + ``merges.txt``)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" or ".adapters." in key:
            continue  # tied to transformer.wte.weight / the adapters go to the peft files
        t = value.detach().cpu()
        if key.endswith(_CONV1D_SUFFIXES):
            t = t.t()  # Linear (out, in) -> Conv1D (in, out)
        tensors[key] = t.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config_dict(model.config, vocab), indent=2) + "\n")
    if vocab is not None:
        vocab.save(out)
    else:
        import shutil

        from runtime.data.tokenizer import bundled_bpe_files

        encoder, merges = bundled_bpe_files()
        shutil.copyfile(encoder, out / "vocab.json")
        shutil.copyfile(merges, out / "merges.txt")
    return out
