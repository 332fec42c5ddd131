"""Reading transformers' BERT / RoBERTa checkpoints into ``models/encoder.py``'s names.

transformers keeps query, key and value as three Linear layers; ours is one fused
``attn.c_attn`` (as GPT-2's), so the three are concatenated along the output at load time.
A ``*ForSequenceClassification`` checkpoint's ``bert.`` / ``roberta.`` prefix is dropped;
its classifier and the pooler are not read (the head is ours). Old checkpoints' LayerNorm
``gamma`` / ``beta`` are read as ``weight`` / ``bias``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["read_encoder_weights", "our_key", "hf_key_map"]

_PREFIXES = ("bert.", "roberta.")
_BLOCK = {
    "attention.output.dense": "attn.c_proj",
    "attention.output.LayerNorm": "ln_1",
    "intermediate.dense": "mlp.c_fc",
    "output.dense": "mlp.c_proj",
    "output.LayerNorm": "ln_2",
}
_EMB = {"word_embeddings": "word", "position_embeddings": "position", "token_type_embeddings": "token_type",
        "LayerNorm": "ln"}
_QKV = ("query", "key", "value")
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$")
_EMBED = re.compile(r"embeddings\.(\w+)\.(weight|bias|gamma|beta)$")


def _strip(key: str) -> str:
    for p in _PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def our_key(hf_key: str) -> tuple[str, str | None] | None:
    """(our key, q/k/v slot or None) for a checkpoint key; None for keys not read (pooler, classifier,
    position-id buffers)."""
    key = _strip(hf_key)
    kind = {"gamma": "weight", "beta": "bias"}
    m = _EMBED.fullmatch(key)
    if m and m.group(1) in _EMB:
        return f"transformer.emb.{_EMB[m.group(1)]}.{kind.get(m.group(2), m.group(2))}", None
    m = _LAYER.fullmatch(key)
    if not m:
        return None
    i, path, leaf = m.group(1), m.group(2), kind.get(m.group(3), m.group(3))
    for slot in _QKV:
        if path == f"attention.self.{slot}":
            return f"transformer.h.{i}.attn.c_attn.{leaf}", slot
    if path in _BLOCK:
        return f"transformer.h.{i}.{_BLOCK[path]}.{leaf}", None
    return None


def hf_key_map(n_layer: int) -> dict[str, str]:
    """transformers' module name (``encoder.layer.3.attention.self.query``) of each of our
    adapted Linear layers (``transformer.h.3.attn.c_attn.q``): the peft export's names."""
    out = {}
    for i in range(n_layer):
        base = f"encoder.layer.{i}"
        for slot, key in zip(_QKV, "qkv"):
            out[f"transformer.h.{i}.attn.c_attn.{key}"] = f"{base}.attention.self.{slot}"
        for hf, ours in _BLOCK.items():
            if "LayerNorm" not in hf:
                out[f"transformer.h.{i}.{ours}"] = f"{base}.{hf}"
    return out


def _piece(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[:3]) if parts[1] == "h" else ".".join(parts[:2])


def read_encoder_weights(ckpt_dir: Path, n_layer: int, keep: set[str] | None,
                         dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Our state dict for the held pieces (``keep``; None = all): safetensors tensors are read
    one by one, a ``pytorch_model.bin`` whole and then filtered."""
    def wanted(hf_key: str) -> tuple[str, str | None] | None:
        mapped = our_key(hf_key)
        return mapped if mapped is not None and (keep is None or _piece(mapped[0]) in keep) else None

    raw: dict[str, Tensor] = {}
    st = ckpt_dir / "model.safetensors"
    if st.is_file():
        from safetensors import safe_open

        with safe_open(str(st), framework="pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys() if wanted(k)}
    elif (ckpt_dir / "pytorch_model.bin").is_file():
        state = torch.load(ckpt_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
        raw = {k: v for k, v in state.items() if wanted(k)}
    else:
        raise FileNotFoundError(f"{ckpt_dir} holds neither model.safetensors nor pytorch_model.bin")
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[str, Tensor]] = {}
    for hf_key, value in raw.items():
        key, slot = wanted(hf_key)
        if slot is None:
            out[key] = value.to(dtype).contiguous()
        else:
            fused.setdefault(key, {})[slot] = value
    for key, slots in fused.items():
        if set(slots) != set(_QKV):
            raise ValueError(f"{ckpt_dir}: {key} needs query, key and value; found {sorted(slots)}")
        out[key] = torch.cat([slots[s] for s in _QKV]).to(dtype).contiguous()  # (3C, C) or (3C,)
    return out
