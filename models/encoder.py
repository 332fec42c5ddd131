"""A BERT-family encoder with a classification head, in plain torch (BERT and RoBERTa).

Loads transformers' ``BertModel`` / ``RobertaModel`` checkpoint directories (and their
``*ForSequenceClassification`` wrappers, whose ``bert.`` / ``roberta.`` prefix is dropped)
and computes the same hidden states. Module names follow this project's GPT-2, not
transformers, so that LoRA, the parts of a split and every strategy work unchanged:

    transformer.emb         word + position + token-type embeddings, LayerNorm, dropout
    transformer.h.<i>       post-LN block: attn.c_attn (query|key|value fused along the output,
                            as GPT-2's c_attn), attn.c_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2
    head                    Linear(d, num_labels) on the pooled output (mean over real tokens,
                            or the first token)

So the LoRA targets q, k, v, attn_proj, mlp_fc, mlp_proj are the six linear modules per
layer of LoRA-A2 (arXiv 2410.22815) and FFA-LoRA: query, key, value, attention output,
intermediate, output. The checkpoint's pooler is not used (the head is on the pooled states).

The head is randomly initialised from its own generator seeded with ``head_seed``, so every
party that builds it gets the same values whatever else it built (LoRA-A2 and FFA-LoRA keep
it frozen at that random init).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EncoderConfig", "EncoderClassifier", "ENCODER_TYPES", "encoder_config_from_hf", "init_head"]

ENCODER_TYPES = ("bert", "roberta")  # transformers' model_type values this encoder loads
POOLINGS = ("mean", "cls")


@dataclass
class EncoderConfig:
    model_type: str = "bert"  # bert | roberta (RoBERTa: positions count from pad_token_id + 1)
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int = 3072
    layer_norm_epsilon: float = 1e-12
    pad_token_id: int = 0
    hidden_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    num_labels: int = 2
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.model_type not in ENCODER_TYPES:
            raise ValueError(f"EncoderConfig.model_type must be one of {ENCODER_TYPES}, got {self.model_type!r}")
        for name in ("vocab_size", "max_positions", "type_vocab_size", "n_embd", "n_layer", "n_head", "n_inner",
                     "num_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EncoderConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"EncoderConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pooling not in POOLINGS:
            raise ValueError(f"EncoderConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("hidden_pdrop", "attn_pdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"EncoderConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")


def encoder_config_from_hf(hf: dict, **overrides: object) -> EncoderConfig:
    """Our config from transformers' ``config.json`` of a BERT or RoBERTa model."""
    model_type = hf.get("model_type")
    if model_type not in ENCODER_TYPES:
        raise ValueError(f"not a BERT-family config: model_type={model_type!r} (supported: {ENCODER_TYPES})")
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"unsupported hidden_act {act!r}: this encoder uses the exact (erf) GELU")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"unsupported position_embedding_type {hf['position_embedding_type']!r} (absolute only)")
    values = dict(model_type=model_type, vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"],
                  type_vocab_size=hf.get("type_vocab_size", 2), n_embd=hf["hidden_size"],
                  n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_inner=hf["intermediate_size"],
                  layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12),
                  pad_token_id=hf.get("pad_token_id", 1 if model_type == "roberta" else 0),
                  hidden_pdrop=hf.get("hidden_dropout_prob", 0.1),
                  attn_pdrop=hf.get("attention_probs_dropout_prob", 0.1))
    values.update(overrides)
    return EncoderConfig(**values)


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.position = nn.Embedding(cfg.max_positions, cfg.n_embd)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        self.ln = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.drop = nn.Dropout(cfg.hidden_pdrop)

    def forward(self, ids: Tensor, real: Tensor) -> Tensor:
        """ids (B, T), real (B, T) bool -> (B, T, C)."""
        T = ids.shape[1]
        if self.cfg.model_type == "roberta":
            # RoBERTa counts positions from pad_token_id + 1 over real tokens; padding gets pad_token_id.
            pos = torch.cumsum(real.long(), dim=1) * real.long() + self.cfg.pad_token_id  # (B, T)
        else:
            pos = torch.arange(T, device=ids.device)[None]  # (1, T)
        if int(pos.max()) >= self.cfg.max_positions:
            raise ValueError(f"sequence of {T} positions exceeds max_positions={self.cfg.max_positions}")
        h = self.word(ids) + self.position(pos) + self.token_type.weight[0]  # one segment: type id 0
        return self.drop(self.ln(h))


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.attn_pdrop = cfg.attn_pdrop
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # query | key | value
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)  # attention output dense

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_pdrop if self.training else 0.0)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.n_inner)  # intermediate dense
        self.c_proj = nn.Linear(cfg.n_inner, cfg.n_embd)  # output dense

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Post-norm block (BERT): ln_1(x + attn(x)), then ln_2(h + mlp(h))."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.drop = nn.Dropout(cfg.hidden_pdrop)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = self.ln_1(x + self.drop(self.attn(x, mask)))
        return self.ln_2(h + self.drop(self.mlp(h)))


def init_head(head: nn.Linear, seed: int) -> None:
    """nn.Linear's default init (uniform ±1/sqrt(d)), drawn from a generator of its own."""
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(head.in_features)
    with torch.no_grad():
        head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=g))
        head.bias.copy_(torch.empty(head.bias.shape).uniform_(-bound, bound, generator=g))


class EncoderClassifier(nn.Module):
    """A BERT-family encoder + classification head, or a contiguous part of one.

    A part (``models/parts.py``) lacks some of ``transformer.emb``, blocks and ``head``;
    ``forward`` passes its input through whatever it owns, as ``GPT2.forward`` does.
    """

    is_classifier = True  # models.loss.model_loss: cross-entropy over labels, not tokens

    def __init__(self, config: EncoderConfig, head_seed: int = 0) -> None:
        super().__init__()
        self.config = config
        h = nn.ModuleDict({str(i): Block(config) for i in range(config.n_layer)})
        self.transformer = nn.ModuleDict(dict(emb=Embeddings(config), h=h))
        self.head: nn.Linear | None = nn.Linear(config.n_embd, config.num_labels)
        self.apply(self._init_weights)
        if not self.head.weight.is_meta:
            init_head(self.head, head_seed)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's init: N(0, 0.02) weights, zero biases, LayerNorm at identity.
        if isinstance(module, (nn.Linear, nn.Embedding)) and not module.weight.is_meta:
            nn.init.normal_(module.weight, 0.0, 0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def owns_embeddings(self) -> bool:
        return "emb" in self.transformer

    @property
    def block_names(self) -> list[str]:
        return list(self.transformer["h"].keys())

    def forward(self, x: Tensor, *, attn_mask: Tensor | None = None, first_block: int = 0,
                stop_block: int | None = None, from_hidden: bool = False) -> Tensor:
        """x: token ids (B, T) if this part owns the embeddings (and not ``from_hidden``), else
        hidden states (B, T, C). attn_mask: bool (B, T), True on real tokens; default for ids:
        ``x != pad_token_id``, for hidden states: every position. first_block / stop_block /
        from_hidden: as in ``GPT2.forward`` (per-client cuts; the U shape's front and back).
        Returns logits (B, num_labels) if this part owns ``head`` (and no ``stop_block``), else
        hidden states (B, T, C)."""
        if self.owns_embeddings and not from_hidden:
            real = x != self.config.pad_token_id if attn_mask is None else attn_mask.bool()
            h = self.transformer["emb"](x, real)
        else:
            h, real = x, None if attn_mask is None else attn_mask.bool()
        mask = None if real is None else real[:, None, None, :]  # (B, 1, 1, T): keys a query may see
        for name, block in self.transformer["h"].items():
            if int(name) < first_block:
                continue
            if stop_block is not None and int(name) >= stop_block:
                break
            h = block(h, mask)
        if stop_block is not None or self.head is None:
            return h
        return self.head(self.pool(h, real))

    def pool(self, h: Tensor, real: Tensor | None) -> Tensor:
        """(B, T, C) -> (B, C): the mean over real tokens (sentence-transformers' pooling), or the first token."""
        if self.config.pooling == "cls":
            return h[:, 0]
        if real is None:
            return h.mean(dim=1)
        w = real.to(h.dtype)[..., None]  # (B, T, 1)
        return (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path, *, num_labels: int, head_seed: int = 0,
                        keep: set[str] | None = None, dtype: torch.dtype = torch.float32,
                        **overrides: object) -> EncoderClassifier:
        """Load a transformers BERT/RoBERTa directory (config.json + model.safetensors or
        pytorch_model.bin). ``keep``: the pieces (``transformer.emb``, ``transformer.h.<i>``,
        ``head``) to materialise; only their tensors are read, the rest stays on ``meta``."""
        from .encoder_checkpoint import read_encoder_weights

        ckpt_dir = Path(ckpt_dir)
        cfg = encoder_config_from_hf(json.loads((ckpt_dir / "config.json").read_text()), num_labels=num_labels,
                                     **overrides)
        with torch.device("meta"):
            model = cls(cfg)
        state = read_encoder_weights(ckpt_dir, cfg.n_layer, keep, dtype)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in missing if not k.startswith("head.") and (keep is None or _piece(k) in keep)]
        if missing or unexpected:
            raise ValueError(f"{ckpt_dir}: checkpoint does not fit a {cfg.model_type} encoder: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
        if keep is None or "head" in keep:
            # Built on meta and filled by init_head alone: no draw from the global generator, so the
            # LoRA init after it is the same whether or not a part holds the head.
            model.head = nn.Linear(cfg.n_embd, cfg.num_labels, dtype=dtype, device="meta").to_empty(device="cpu")
            init_head(model.head, head_seed)
        return model


def _piece(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "head":
        return "head"
    return ".".join(parts[:3]) if parts[1] == "h" else ".".join(parts[:2])
