"""GPT-2 in plain torch, with module names that match the Hugging Face checkpoint.

Loading a checkpoint is a key-by-key copy: only the four Conv1D weights (stored as
(in, out)) are transposed once, at load time, into ``nn.Linear`` layout (out, in).

The model is written so that it can be cut in two (see ``models/split.py``): the
blocks live in an ``nn.ModuleDict`` keyed "0".."n-1", and ``forward`` passes its input
through whichever ends (embeddings, final norm, LM head) this part still owns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .init_replay import replay_construction, replay_draws

__all__ = ["GPT2Config", "PRESETS", "build_config", "GPT2", "KVCache", "position_ids_from_mask"]


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024  # longest sequence the position embedding covers
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    # Dropout probabilities of the released GPT-2 checkpoints.
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPT2Config.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPT2Config.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"GPT2Config.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"GPT2Config.{name} must be in [0, 1), got {value!r}")


PRESETS: dict[str, GPT2Config] = {
    # A debug model that trains on a laptop CPU in seconds; real vocabulary so the
    # real tokenizer and data pipeline can be used unchanged.
    "tiny": GPT2Config(n_layer=4, n_head=4, n_embd=64, n_positions=512),
    # Small bases that learn on a CPU, meant for a compact vocabulary (~3.3k ids on E2E; the
    # run sets vocab_size from its vocabulary map): micro builds in about a minute, mini is the
    # quality base for comparing methods (launch.pretrain).
    "micro": GPT2Config(n_layer=4, n_head=4, n_embd=128, n_positions=256),
    "mini": GPT2Config(n_layer=4, n_head=4, n_embd=256, n_positions=256),
    "gpt2": GPT2Config(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPT2Config(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPT2Config(n_layer=36, n_head=20, n_embd=1280),
}


def build_config(name: str, **overrides: object) -> GPT2Config:
    """Return a copy of preset ``name`` with ``overrides`` applied (and validated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown GPT-2 preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return _override(PRESETS[name], overrides)


def _override(cfg: GPT2Config, overrides: dict[str, object]) -> GPT2Config:
    known = {f.name for f in fields(GPT2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown GPT2Config field(s) {unknown}; valid fields: {sorted(known)}")
    return replace(cfg, **overrides)


class KVCache:
    """Keys and values of past positions, one ``(k, v)`` pair per block name.

    Each tensor has shape (B, nh, T_past, hs). ``length`` is the number of positions
    already processed; ``GPT2.forward`` appends to every block it owns and then
    advances ``length`` by the new T. Use one cache per model part: a client part and
    a server part each keep their own (sharing one would count positions twice, which
    ``update`` detects and reports).

    Beam search: after choosing which hypotheses survive, call ``reorder(index)`` with
    the (B_new,) batch indices they come from; the same call with
    ``arange(B).repeat_interleave(n_beams)`` expands a prompt cache to n_beams per row.
    """

    def __init__(self) -> None:
        self.layers: dict[str, tuple[Tensor, Tensor]] = {}
        self.length: int = 0

    def update(self, name: str, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k``, ``v`` (B, nh, T, hs) for block ``name``; return all of its (k, v)."""
        past = self.layers.get(name)
        past_len = 0 if past is None else past[0].shape[2]
        if past_len != self.length:
            raise ValueError(
                f"KVCache holds {past_len} positions for block {name!r} but cache.length is "
                f"{self.length}; use a separate KVCache for each model part"
            )
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nh, T_past + T, hs)
            v = torch.cat([past[1], v], dim=2)
        self.layers[name] = (k, v)
        return k, v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (LongTensor (B_new,)), in that order, for every block."""
        self.layers = {
            name: (k.index_select(0, index), v.index_select(0, index)) for name, (k, v) in self.layers.items()
        }


def position_ids_from_mask(attn_mask: Tensor, past_length: int = 0) -> Tensor:
    """Positions (B, T) for a left-padded batch, from its (B, T_past + T) padding mask.

    Real tokens count from 0 at the first real token of their row; padding gets 0
    (its value does not matter: no real token attends to it).
    """
    pos = attn_mask.long().cumsum(-1) - 1  # (B, T_past + T)
    return pos.clamp_min(0)[:, past_length:]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.attn_pdrop = cfg.attn_pdrop
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # fused q, k, v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x: Tensor, mask: Tensor | None, is_causal: bool, kv_cache: KVCache | None, name: str) -> Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        dropout_p = self.attn_pdrop if self.training else 0.0
        attend = getattr(kv_cache, "attend", None)
        if attend is not None:  # several decoding sessions' caches (models/decode_batch.py)
            y = attend(name, q, k, v, dropout_p)  # (B, nh, T, hs)
        else:
            if kv_cache is not None:
                k, v = kv_cache.update(name, k, v)  # (B, nh, T_past + T, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               is_causal=is_causal)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.act = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, mask: Tensor | None, is_causal: bool, kv_cache: KVCache | None, name: str) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask, is_causal, kv_cache, name)
        return x + self.mlp(self.ln_2(x))


def init_normal_(p: Tensor, std: float, replay: bool = True) -> None:
    """``normal_(0, std)`` in place; on a meta tensor (a piece this part does not hold),
    draw the same random numbers without a tensor when ``replay``, so that the generator
    ends where the whole model's init leaves it."""
    with torch.no_grad():
        if not p.is_meta:
            p.normal_(0.0, std)
        elif replay:
            replay_draws("normal", p.numel(), p.dtype)


def _attention_mask(
    B: int, T: int, past: int, attn_mask: Tensor | None, device: torch.device
) -> tuple[Tensor | None, bool]:
    """Boolean SDPA mask (True = may attend) and the is_causal flag for T new queries."""
    T_k = past + T
    if attn_mask is None:
        if past == 0:
            return None, True  # plain causal: SDPA's fast path
        if T == 1:
            return None, False  # one new query sees every cached position
    q_pos = torch.arange(past, T_k, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(T_k, device=device)[None, :]  # (1, T_k)
    causal = k_pos <= q_pos  # (T, T_k); offset by the cached length
    if attn_mask is None:
        return causal[None, None], False  # (1, 1, T, T_k)
    if attn_mask.shape != (B, T_k):
        raise ValueError(f"attn_mask must have shape (B, T_past + T) = {(B, T_k)}, got {tuple(attn_mask.shape)}")
    keep = causal[None] & attn_mask.to(device=device, dtype=torch.bool)[:, None, :]  # (B, T, T_k)
    # A padding query would see no key at all; some SDPA backends return NaN for such a
    # row, which later layers would spread through 0 * NaN. Letting it see itself keeps
    # every row finite; no real token ever sees a padding key.
    keep = keep | (k_pos == q_pos)[None]
    return keep[:, None], False  # (B, 1, T, T_k)


class GPT2(nn.Module):
    """GPT-2 language model, or a contiguous part of one (see ``models/split.py``)."""

    def __init__(self, config: GPT2Config, keep: Callable[[str], bool] | None = None) -> None:
        """``keep``: which top-level pieces (``transformer.wte``, ``transformer.wpe``,
        ``transformer.h.<i>``, ``transformer.ln_f``, ``lm_head``) get real tensors; the
        others are built on the ``meta`` device and only draw their initialisation's random
        numbers, exactly as in the whole model (``models/init_replay.py``, ``models/parts.py``).
        So a kept piece has, bit for bit, the weights the same piece has in the whole model
        built from the same seed. None = keep everything.
        Built under ``torch.device("meta")`` (checkpoint loading) nothing draws random numbers.
        """
        super().__init__()
        self.config = config
        # A real build: pieces left on meta must still consume the generator like real ones.
        replay = torch.empty(0).device.type != "meta"

        def piece(name: str, make: Callable[[], nn.Module]) -> nn.Module:
            if keep is None or keep(name):
                return make()  # constructed (and default-initialised) as in the whole model
            with torch.device("meta"):
                module = make()
            if replay:
                replay_construction(module)
            return module

        # Construction order = the whole model's (the order of their random draws).
        wte = piece("transformer.wte", lambda: nn.Embedding(config.vocab_size, config.n_embd))
        wpe = piece("transformer.wpe", lambda: nn.Embedding(config.n_positions, config.n_embd))
        drop = nn.Dropout(config.embd_pdrop)
        h = nn.ModuleDict({str(i): piece(f"transformer.h.{i}", lambda: Block(config)) for i in range(config.n_layer)})
        ln_f = piece("transformer.ln_f", lambda: nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon))
        self.transformer = nn.ModuleDict(dict(wte=wte, wpe=wpe, drop=drop, h=h, ln_f=ln_f))
        # The head's own (V, C) weight is replaced by the tie at once: never materialise it.
        self.lm_head: nn.Linear | None = piece("lm_head (untied weight, discarded)",
                                               lambda: nn.Linear(config.n_embd, config.vocab_size, bias=False))
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in the released checkpoints
        self.apply(lambda m: self._init_weights(m, replay))
        # GPT-2 scales the init of the projections that write into the residual stream
        # by 1/sqrt(2 * n_layer): each block adds two of them.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                init_normal_(p, 0.02 / math.sqrt(2 * config.n_layer), replay)

    @staticmethod
    def _init_weights(module: nn.Module, replay: bool = True) -> None:
        if isinstance(module, nn.Linear):
            init_normal_(module.weight, 0.02, replay)
            if module.bias is not None and not module.bias.is_meta:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init_normal_(module.weight, 0.02, replay)

    @property
    def owns_embeddings(self) -> bool:
        return "wte" in self.transformer

    @property
    def block_names(self) -> list[str]:
        return list(self.transformer["h"].keys())

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of distinct parameters (a tied weight counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def forward(
        self,
        x: Tensor,
        *,
        position_ids: Tensor | None = None,
        attn_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        select: Tensor | None = None,
        first_block: int = 0,
        stop_block: int | None = None,
        from_hidden: bool = False,
    ) -> Tensor:
        """Run the parts of GPT-2 this module owns.

        x: token ids (B, T) if this part owns ``wte``, else hidden states (B, T, C).
        position_ids: (B, T) or (T,); default ``kv_cache.length + arange(T)``.
        attn_mask: optional boolean padding mask (B, T_past + T), True on real tokens,
            for left-padded batches; combined with causality here. Pass matching
            ``position_ids`` (see ``position_ids_from_mask``).
        kv_cache: appended to for every block owned, then advanced by T.
        first_block: skip the blocks this part owns whose index is below it. A server that
            serves clients cut at different layers holds blocks from the lowest cut on and
            starts each client's forward at that client's cut.
        stop_block: run only the owned blocks whose index is below it and return their hidden
            states (B, T, C): no ``ln_f``, no head. The front of a U-shaped client part.
        from_hidden: x is hidden states (B, T, C) although this part owns ``wte``: skip the
            embeddings. The back end of a U-shaped client part (with ``first_block``).
        select: optional bool (B, T); with ``lm_head``, only those positions get logits,
            returned as (N, V) in row-major order. Training needs logits only where the
            loss counts (the completion): the (·, C) x (C, V) head is most of a small
            model's cost, and the context and padding are about half of the positions.
        Returns logits (B, T, V) if this part owns ``lm_head``, else hidden states (B, T, C).
        """
        past = kv_cache.length if kv_cache is not None else 0
        tr = self.transformer
        if self.owns_embeddings and not from_hidden:
            B, T = x.shape
            if position_ids is None:
                if past + T > self.config.n_positions:
                    raise ValueError(f"sequence of {past + T} positions exceeds n_positions={self.config.n_positions}")
                position_ids = torch.arange(past, past + T, device=x.device)  # (T,)
            h = tr["wte"](x) + tr["wpe"](position_ids)  # (B, T, C)
            if "drop" in tr:
                h = tr["drop"](h)
        else:
            h = x
            B, T = h.shape[:2]
        if len(tr["h"]) > 0:
            mask, is_causal = _attention_mask(B, T, past, attn_mask, h.device)
            for name, block in tr["h"].items():
                if int(name) < first_block:
                    continue
                if stop_block is not None and int(name) >= stop_block:
                    break
                h = block(h, mask, is_causal, kv_cache, name)
        if stop_block is not None:
            if kv_cache is not None:
                kv_cache.length = past + T
            return h
        if "ln_f" in tr:
            h = tr["ln_f"](h)
        if kv_cache is not None:
            kv_cache.length = past + T
        if self.lm_head is not None:
            if select is not None:
                return self.lm_head(h[select])  # (N, V)
            return self.lm_head(h)  # (B, T, V)
        return h

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path,
        *,
        cache_dir: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        keep: Callable[[str], bool] | None = None,
        **config_overrides: object,
    ) -> GPT2:
        """Load a Hugging Face GPT-2 checkpoint without downloading anything.

        ``name_or_dir`` is a directory holding ``config.json`` and ``model.safetensors``
        or ``pytorch_model.bin``, or a model name (``gpt2``, ``gpt2-medium``, ...) already
        in the local Hugging Face cache (``cache_dir``, or huggingface_hub's default).
        ``config_overrides`` replace config fields, e.g. ``embd_pdrop=0.0``. ``keep``: only
        these pieces are read and materialised, the rest stays on ``meta`` (``models/parts.py``).
        """
        from .hf_checkpoint import _config_from_hf, _convert_hf_state_dict, _read_weights, _resolve_checkpoint_dir

        ckpt_dir = _resolve_checkpoint_dir(name_or_dir, cache_dir)
        cfg = _config_from_hf(json.loads((ckpt_dir / "config.json").read_text()), GPT2Config)
        cfg = _override(cfg, config_overrides)
        from .pieces import piece_of

        want = None if keep is None else (lambda key: keep(piece_of(key)))
        state = _convert_hf_state_dict(_read_weights(ckpt_dir, want), dtype)
        with torch.device("meta"):
            model = cls(cfg, keep=keep)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in missing if k != "lm_head.weight" and (want is None or want(k))]
        if missing or unexpected:
            raise ValueError(f"{ckpt_dir}: checkpoint does not fit GPT-2: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        model.lm_head.weight = model.transformer.wte.weight  # assign=True broke the tie
        return model
