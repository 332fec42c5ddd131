"""Factories shared by every role: model (+ LoRA, + split), optimizer, schedule, threads."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.encoder import ENCODER_TYPES, EncoderClassifier, EncoderConfig, encoder_config_from_hf
from models.gpt2 import GPT2, GPT2Config, build_config
from models.lora import LoRAConfig, apply_lora, iter_lora_adapters, load_lora_state_dict, lora_state_dict
from runtime.config import Config, ConfigError
from runtime.data.vocab import VocabMap, load_vocab_map


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


SUPPORTED_TYPES = ("gpt2", *ENCODER_TYPES)  # transformers' model_type values a model.path may have


def _hf_config(cfg: Config) -> dict | None:
    """model.path's transformers config.json, or None without a path."""
    if not cfg.model.path:
        return None
    cfg_file = Path(cfg.model.path) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"model.path {cfg.model.path!r} has no config.json (expected a Hugging Face "
                                f"model directory saved with save_pretrained; supported: {', '.join(SUPPORTED_TYPES)})")
    hf = json.loads(cfg_file.read_text())
    model_type = hf.get("model_type", "gpt2" if "n_embd" in hf else None)
    if model_type not in SUPPORTED_TYPES:
        raise ConfigError(f"model.path {cfg.model.path!r} is a {model_type!r} model; supported architectures: "
                          f"{', '.join(SUPPORTED_TYPES)} (GPT-2 for generation; BERT and RoBERTa encoders for "
                          f"classification, data.task=classify)")
    return {**hf, "model_type": model_type}


def model_arch(cfg: Config) -> str:
    """``gpt2`` or ``encoder`` (a BERT-family classifier, models/encoder.py)."""
    hf = _hf_config(cfg)
    return "encoder" if hf is not None and hf["model_type"] in ENCODER_TYPES else "gpt2"


def check_model_fits_task(cfg: Config) -> None:
    """An encoder classifies (data.task=classify); GPT-2 generates: a clear error otherwise."""
    arch = model_arch(cfg)
    if cfg.data.task == "classify" and arch != "encoder":
        raise ConfigError("data.task=classify needs a BERT or RoBERTa encoder: --model.path DIR (a transformers "
                          "directory with config.json, the weights and tokenizer.json)")
    if cfg.data.task != "classify" and arch == "encoder":
        raise ConfigError(f"model.path {cfg.model.path!r} is an encoder: it classifies (--data.task=classify); "
                          f"data.task={cfg.data.task} needs GPT-2")


def model_config(cfg: Config) -> GPT2Config | EncoderConfig:
    """The model shape this run uses (from the preset, or from model.path's config.json)."""
    drop = cfg.model.dropout
    overrides = dict(embd_pdrop=drop, attn_pdrop=drop, resid_pdrop=drop)
    hf = _hf_config(cfg)
    if hf is not None and hf["model_type"] in ENCODER_TYPES:
        return encoder_config_from_hf(hf, hidden_pdrop=drop, attn_pdrop=drop, num_labels=run_num_labels(cfg),
                                      pooling=cfg.model.pooling)
    if hf is not None:
        return GPT2Config(vocab_size=hf["vocab_size"], n_positions=hf["n_positions"], n_embd=hf["n_embd"],
                          n_layer=hf["n_layer"], n_head=hf["n_head"],
                          layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5), **overrides)
    vocab = run_vocab(cfg)
    if vocab is not None:
        overrides["vocab_size"] = vocab.size
    return build_config(cfg.model.name, **overrides)


def run_vocab(cfg: Config) -> VocabMap | None:
    """The run's compact vocabulary: model.path's vocab_map.json, else model.vocab_map; None = GPT-2's."""
    vocab = load_vocab_map(cfg.model.path)
    if vocab is None and cfg.model.vocab_map:
        vocab = VocabMap.load(cfg.model.vocab_map)
    return vocab


def run_num_labels(cfg: Config) -> int:
    """model.num_labels, else the number of labels in the classification data's training split."""
    if cfg.model.num_labels:
        return cfg.model.num_labels
    from runtime.data.classify import load_classification

    return len(load_classification(cfg.data.dir, cfg.data.source, seed=cfg.train.seed).labels)


def build_full_model(cfg: Config) -> GPT2:
    """The whole GPT-2 with LoRA applied (``train.finetune=full``: no LoRA, every weight trainable)."""
    return build_part(cfg, "whole")


def build_part(cfg: Config, role: str, cut: int | None = None) -> GPT2:
    """The part ``role`` (whole | client | server) holds, built alone (``models/parts.py``).

    Each rank materialises only its own modules (from a checkpoint: reads only their
    tensors), yet gets exactly the weights and LoRA init the same modules have in the whole
    model for this seed: the init's random draws of the pieces it does not hold are replayed,
    not skipped. So the parts agree across ranks with no transfer, and a one-client split
    run equals CenLoRA. ``cut``: the client's cut (client), the lowest cut (server).
    """
    from models.parts import build_keep, finish_part
    from runtime.split.shapes import part_pieces

    mc = model_config(cfg)
    n_layer, arch = mc.n_layer, model_arch(cfg)
    cut = cfg.split.cut if cut is None else cut
    pieces = part_pieces(n_layer, role, cfg.split.shape, cut, head_cut(cfg, n_layer), arch=arch)
    keep = build_keep(pieces)
    seed_everything(cfg.train.seed)
    if arch == "encoder":
        # The head: random from the run seed (its own generator: equal on every party), frozen by
        # apply_lora like every non-LoRA weight (LoRA-A2, FFA-LoRA).
        model = EncoderClassifier.from_pretrained(cfg.model.path, num_labels=mc.num_labels, head_seed=cfg.train.seed,
                                                  keep=keep, hidden_pdrop=mc.hidden_pdrop, attn_pdrop=mc.attn_pdrop,
                                                  pooling=mc.pooling)
    elif cfg.model.path:
        drop = cfg.model.dropout
        model = GPT2.from_pretrained(cfg.model.path, keep=keep.__contains__, embd_pdrop=drop, attn_pdrop=drop,
                                     resid_pdrop=drop)
    else:
        model = GPT2(model_config(cfg), keep=keep.__contains__)
    if cfg.train.finetune != "full":
        apply_lora(model, lora_config(cfg))
    part = finish_part(model, pieces)
    for p in head_parameters(part, cfg):
        p.requires_grad_(True)  # model.train_head: apply_lora froze it with the base
    return part


def lora_config(cfg: Config) -> LoRAConfig:
    targets = tuple(t.strip() for t in cfg.lora.targets.split(",") if t.strip())
    return LoRAConfig(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, targets=targets,
                      layers=cfg.lora.layer_list())


def adapters_skeleton(cfg: Config, adapters: dict[str, torch.Tensor]) -> GPT2:
    """The whole GPT-2 with LoRA on the ``meta`` device, holding only ``adapters`` (real tensors,
    keyed as in the whole model: lora_A, lora_B and rank_mask; an adapter given no mask gets all
    ones, as built). No base weight is materialised: enough to export the trained adapters of a
    split run whose base is the unchanged ``--model.path``, without assembling the whole model."""
    with torch.device("meta"):
        model = apply_lora(GPT2(model_config(cfg)), lora_config(cfg))
    missing, unexpected = model.load_state_dict(adapters, strict=False, assign=True)
    lost = [k for k in missing if k.endswith((".lora_A", ".lora_B"))]
    if unexpected or lost:
        raise ValueError(f"the adapters do not fit the model: missing {lost[:5]}, unexpected {unexpected[:5]}")
    for _, adapter in iter_lora_adapters(model):
        if adapter.rank_mask.is_meta:
            adapter.rank_mask = torch.ones(adapter.r, dtype=adapter.lora_A.dtype)
    return model


def head_parameters(model: nn.Module, cfg: Config) -> list[nn.Parameter]:
    """The encoder's classification head when ``model.train_head`` and this part holds it, else []."""
    head = getattr(model, "head", None)
    return list(head.parameters()) if cfg.model.train_head and head is not None else []


def trained_state(model: nn.Module, cfg: Config) -> dict[str, torch.Tensor]:
    """What a run trains, by name: the LoRA tensors (and a trained head), or (full fine-tuning) every weight."""
    if cfg.train.finetune == "full":
        return {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")} if head_parameters(model, cfg) else {}
    return {**lora_state_dict(model), **head}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor], cfg: Config) -> None:
    if cfg.train.finetune == "full":
        missing, unexpected = model.load_state_dict(state, strict=False)
        if [k for k in missing if k != "lm_head.weight"] or unexpected:
            raise ValueError(f"saved weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return
    head = {k: v for k, v in state.items() if k.startswith("head.")}
    if head:
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in head.items()})
    load_lora_state_dict(model, {k: v for k, v in state.items() if k not in head}, strict=True)


def head_cut(cfg: Config, n_layer: int) -> int:
    """U shape: the first block of the client's back end (split.head_cut, 0 = n_layer)."""
    return cfg.split.head_cut or n_layer


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def set_threads(n: int) -> int:
    """Set torch's intra-op threads (torchrun sets OMP_NUM_THREADS=1 everywhere)."""
    n = max(1, n)
    torch.set_num_threads(n)
    return n


def server_thread_count(cfg: Config) -> int:
    # Clients mostly wait on the server, which runs most of the model for all of them:
    # by default the server may use every core (clients compute only briefly, in turns).
    return cfg.runtime.server_threads or (os.cpu_count() or 1)
