"""What a run leaves on disk: config, summary, trained model, checkpoints.

Layout of a run directory::

    config.json            the whole config tree (+ launch facts)
    metrics.jsonl          one record per client step / aggregation / eval
    summary.json           final losses, bytes, times, data description
    model/lora.safetensors LoRA tensors of the whole model, our names
    model/base.safetensors base weights, only when they are random (no model.path)
    model/adapter_model.safetensors + adapter_config.json   Hugging Face peft layout
    ckpt/step_<n>/{server,client<k>}.pt   per-rank training state

Writes go to a temporary file, are fsynced, then renamed: a kill mid-write never
leaves a truncated file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.lora import iter_lora_adapters, lora_state_dict
from runtime.config import Config


def run_name(cfg: Config) -> str:
    return cfg.out.name or f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def torch_save(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# Our whole-module targets and the peft target_modules suffix that names the same Conv1D
# (GPT-2 has two ``c_proj``: the attention's and the MLP's, so the parent is part of the name).
_PEFT_SUFFIXES = {"attn.c_proj": "attn.c_proj", "mlp.c_fc": "c_fc", "mlp.c_proj": "mlp.c_proj"}


def peft_layout(model: torch.nn.Module, cfg: Config) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The LoRA of a whole model in Hugging Face peft's layout for GPT-2 (Conv1D modules).

    peft adapts the whole fused ``c_attn`` (out = 3d) with one rank-R pair; our q/k/v slice
    adapters are the same map at rank R = (#slices)·r: A stacks the slices' A (R, d), B
    places each slice's B in its rows of the 3d output and zeros elsewhere (3d, R). peft
    scales by lora_alpha / rank, so ``alpha_pattern`` gives c_attn alpha · R / r (same
    alpha / r). Whole-module targets (attn_proj, mlp_fc, mlp_proj) are exported as they are
    (peft's lora_A is (r, in), lora_B (out, r), whatever fan_in_fan_out says). Rank masks
    (HetLoRA/LoRA-A2) are applied to A. Every target is representable; none is dropped.
    """
    groups: dict[str, list[tuple[str, Any]]] = {}
    for name, adapter in iter_lora_adapters(model):
        linear_name, _, slice_name = name.rpartition(".adapters.")
        groups.setdefault(linear_name, []).append((slice_name, adapter))
    tensors: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    rank_pattern: dict[str, int] = {}
    r = cfg.lora.r
    order = {"q": 0, "k": 1, "v": 2}
    for linear_name, adapters in groups.items():
        prefix = "base_model.model." + linear_name
        if linear_name.endswith("attn.c_attn"):
            adapters.sort(key=lambda t: order[t[0]])
            d = adapters[0][1].lora_A.shape[1]
            rank = r * len(adapters)
            A = torch.cat([a.lora_A.detach().cpu() * a.rank_mask.cpu().view(-1, 1) for _, a in adapters])  # (R, d)
            B = torch.zeros(3 * d, rank, dtype=A.dtype)  # (3d, R)
            for i, (slice_name, a) in enumerate(adapters):
                s = order[slice_name] * d
                B[s:s + d, i * r:(i + 1) * r] = a.lora_B.detach().cpu()
            targets.add("c_attn")
            rank_pattern["c_attn"] = rank
        else:
            ((_, a),) = adapters
            A = a.lora_A.detach().cpu() * a.rank_mask.cpu().view(-1, 1)  # (r, in)
            B = a.lora_B.detach().cpu()  # (out, r)
            targets.add(next(v for k, v in _PEFT_SUFFIXES.items() if linear_name.endswith(k)))
        tensors[f"{prefix}.lora_A.weight"] = A.contiguous()
        tensors[f"{prefix}.lora_B.weight"] = B.contiguous()
    rank_pattern = {k: v for k, v in rank_pattern.items() if v != r}
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": cfg.lora.alpha,
        "rank_pattern": rank_pattern, "alpha_pattern": {k: cfg.lora.alpha * v / r for k, v in rank_pattern.items()},
        "lora_dropout": cfg.lora.dropout, "target_modules": sorted(targets), "fan_in_fan_out": True,
        "bias": "none", "base_model_name_or_path": cfg.model.path or cfg.model.name,
    }
    if cfg.lora.layer_list() is not None:  # peft finds block i as transformer.h.<i>
        config.update(layers_to_transform=list(cfg.lora.layer_list()), layers_pattern="h")
    return tensors, config


def save_model(run_dir: Path, model: torch.nn.Module, cfg: Config, with_base: bool = False) -> Path:
    """Save the whole trained model so that Hugging Face tools load ``run_dir/model`` offline.

    LoRA: our ``lora.safetensors`` (+ ``base.safetensors`` when the base is random or was
    changed, e.g. FLoRA) and the peft adapter. The adapter's base is the unchanged
    ``--model.path``; otherwise ``model/`` itself also holds the base in transformers'
    layout (``config.json``, ``model.safetensors``, tokenizer or vocabulary map) and the
    adapter points there, so ``AutoPeftModelForCausalLM.from_pretrained(run/"model")`` works.
    Full fine-tuning: the whole model in transformers' layout.
    """
    from runtime.build import run_vocab
    from runtime.io.hf_export import save_hf_base, save_hf_model

    out = run_dir / "model"
    if getattr(model, "is_classifier", False):
        return save_encoder_model(out, model, cfg, with_base)
    if cfg.train.finetune == "full":
        return save_hf_model(out, model, run_vocab(cfg))
    meta = {"method": cfg.method, "model": cfg.model.name}
    save_tensors(out / "lora.safetensors", lora_state_dict(model), meta)
    own_base = with_base or not cfg.model.path
    if own_base:
        base = {k: v for k, v in model.state_dict().items() if ".adapters." not in k and k != "lm_head.weight"}
        save_tensors(out / "base.safetensors", base, meta)
        save_hf_base(out, model, run_vocab(cfg))
    tensors, peft_cfg = peft_layout(model, cfg)
    if own_base:
        peft_cfg["base_model_name_or_path"] = str(out.resolve())
    save_tensors(out / "adapter_model.safetensors", tensors)
    write_json(out / "adapter_config.json", peft_cfg)
    return out


def load_model_tensors(model_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    lora = load_file(str(model_dir / "lora.safetensors"))
    base_path = model_dir / "base.safetensors"
    base = load_file(str(base_path)) if base_path.is_file() else None
    return lora, base


def save_encoder_model(out: Path, model: torch.nn.Module, cfg: Config, with_base: bool = False) -> Path:
    """A trained encoder classifier: our ``lora.safetensors``, the head (``head.safetensors``: the
    random frozen head is part of the model), and the adapter in peft's layout for transformers'
    ``BertModel`` / ``RobertaModel`` at ``--model.path`` (query, key and value are separate Linear
    layers there, so each of our slice adapters is one peft adapter as it is). ``with_base``: a
    strategy merged updates into the base (FLoRA, FedEx-LoRA, FRLoRA): ``base.safetensors`` holds
    the changed encoder in our names, and the peft adapter applies to it, not to ``--model.path``."""
    from models.encoder_checkpoint import hf_key_map

    meta = {"method": cfg.method, "model": cfg.model.path or ""}
    save_tensors(out / "lora.safetensors", lora_state_dict(model), meta)
    save_tensors(out / "head.safetensors", {f"head.{k}": v for k, v in model.head.state_dict().items()}, meta)
    if with_base:
        save_tensors(out / "base.safetensors", {k: v for k, v in model.state_dict().items()
                                                if ".adapters." not in k and not k.startswith("head.")}, meta)
    names = hf_key_map(model.config.n_layer)
    tensors: dict[str, torch.Tensor] = {}
    for name, adapter in iter_lora_adapters(model):
        linear, _, key = name.rpartition(".adapters.")
        prefix = "base_model.model." + names[linear + ("." + key if key in ("q", "k", "v") else "")]
        tensors[f"{prefix}.lora_A.weight"] = (adapter.lora_A.detach().cpu() * adapter.rank_mask.cpu()[:, None])
        tensors[f"{prefix}.lora_B.weight"] = adapter.lora_B.detach().cpu()
    leaves = sorted({k.split("base_model.model.encoder.layer.")[1].split(".", 1)[1].rsplit(".lora_", 1)[0]
                     for k in tensors})
    config = {"peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "r": cfg.lora.r, "lora_alpha": cfg.lora.alpha,
              "lora_dropout": cfg.lora.dropout, "bias": "none", "base_model_name_or_path": cfg.model.path,
              # full paths below the layer: "output.dense" alone would also match "attention.output.dense"
              "target_modules": r"(.*\.)?encoder\.layer\.\d+\.(" + "|".join(leaf.replace(".", r"\.")
                                                                          for leaf in leaves) + ")"}
    save_tensors(out / "adapter_model.safetensors", tensors)
    write_json(out / "adapter_config.json", config)
    return out
