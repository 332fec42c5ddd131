"""Matmul FLOPs per token of a GPT-2 part with LoRA, forward and backward, from the config alone.

Convention: a multiply-add counts 2 FLOPs and only matrix products are counted (linear
layers, LoRA factors, attention scores and values) — the convention of
``torch.utils.flop_counter.FlopCounterMode``, so the two can be checked against each
other. Layer norms, GELU, softmax, dropout, residual adds and the embedding lookups are
O(d) per token and left out (for GPT-2 S at T = 64 they are < 0.5 % of the total).

Notation: d = n_embd, T = sequence length (keys each query attends to), r = LoRA rank,
V = vocabulary. Per token, forward, one block:

    attention in-projection c_attn (d -> 3d)   6 d^2
    attention scores Q K^T and values P V      4 T d   (2 T d each, all heads together)
    attention out-projection c_proj (d -> d)   2 d^2
    MLP c_fc (d -> 4d) and c_proj (4d -> d)    16 d^2
    LoRA on a target (in -> out): x A^T, z B^T  2 r (in + out)   (q, k, v: in = out = d)

so a block with LoRA on q and v does 24 d^2 + 4 T d + 8 d r. Embeddings: 0 (a lookup).
LM head (server only): 2 d V. The attention term is the dense count (every query against
all T keys, as FlopCounterMode counts it); a causal kernel that skips masked tiles does
about half of it.

Backward. Base weights are frozen, so a frozen linear costs only its input gradient
(same FLOPs as its forward), and only when its input requires grad. A LoRA adapter costs
dz = dy B and dB = dy^T z (2 r out each), dA = dz^T x (2 r in), and dx = dz A (2 r in)
when its input requires grad. Attention backward is 4 products (dP, dV, dQ, dK: 8 T d)
when q, k or v requires grad, as autograd does through the math SDPA backend; flash and
memory-efficient kernels recompute the scores first (``attention="recompute"``:
10 T d, FlopCounterMode's formula for those kernels). Which inputs require grad follows
the data: a client's first block reads frozen embeddings, so it skips the input gradient
of c_attn and of its q/v adapters; every later block (and a server's first block, whose
input gradient goes back across the cut) pays it. With LoRA on q and v, a client holding
``cut`` blocks therefore costs per token

    forward   cut (24 d^2 + 4 T d + 8 d r)
    backward  cut (24 d^2 + 8 T d + 16 d r) - 6 d^2 - 4 d r.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .gpt2 import GPT2Config

__all__ = ["Flops", "ATTENTION_MODES", "block_flops", "part_flops", "client_flops", "server_flops",
           "lora_parameters"]

ATTENTION_MODES = ("math", "recompute")
_ATTN_TARGETS = ("q", "k", "v")


@dataclass(frozen=True)
class Flops:
    """FLOPs per token: ``forward`` and ``backward``; ``train`` is one training step's worth."""

    forward: int
    backward: int

    @property
    def train(self) -> int:
        return self.forward + self.backward

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.forward + other.forward, self.backward + other.backward)

    def scale(self, n: int) -> Flops:
        return Flops(self.forward * n, self.backward * n)


def _lora(r: int, d_in: int, d_out: int, input_grad: bool) -> Flops:
    """One adapter x -> scaling * (x A^T) B^T, A (r, in), B (out, r), both trained."""
    fwd = 2 * r * d_in + 2 * r * d_out
    bwd = 2 * r * d_out * 2 + 2 * r * d_in + (2 * r * d_in if input_grad else 0)
    return Flops(fwd, bwd)


def _frozen_linear(d_in: int, d_out: int, input_grad: bool) -> Flops:
    return Flops(2 * d_in * d_out, 2 * d_in * d_out if input_grad else 0)


def _targets(targets: Iterable[str]) -> frozenset[str]:
    known = {"q", "k", "v", "attn_proj", "mlp_fc", "mlp_proj"}
    out = frozenset(t.strip() for t in targets if t.strip())
    bad = sorted(out - known)
    if bad:
        raise ValueError(f"unknown LoRA target(s) {bad}; known: {sorted(known)}")
    return out


def block_flops(d: int, seq_len: int, r: int, targets: Iterable[str], input_requires_grad: bool,
                attention: str = "math") -> tuple[Flops, bool]:
    """FLOPs per token of one block, and whether its output requires grad.

    ``r`` = 0 means no LoRA. ``input_requires_grad`` says whether the residual stream
    entering the block carries a gradient (False only where nothing trainable precedes it).
    """
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if d < 1 or seq_len < 1 or r < 0:
        raise ValueError(f"need d >= 1, seq_len >= 1, r >= 0; got d={d}, seq_len={seq_len}, r={r}")
    tg = _targets(targets) if r else frozenset()
    g = input_requires_grad
    total = _frozen_linear(d, 3 * d, g)
    for t in _ATTN_TARGETS:
        if t in tg:
            total += _lora(r, d, d, g)
    # q, k and v come out of one fused projection (split after a cat), so one adapter on
    # any of them makes all three require grad.
    qkv_grad = g or any(t in tg for t in _ATTN_TARGETS)
    attn_bwd = (8 if attention == "math" else 10) * seq_len * d
    total += Flops(4 * seq_len * d, attn_bwd if qkv_grad else 0)
    total += _frozen_linear(d, d, qkv_grad)
    if "attn_proj" in tg:
        total += _lora(r, d, d, qkv_grad)
    g_mlp = qkv_grad or "attn_proj" in tg  # the residual after attention
    total += _frozen_linear(d, 4 * d, g_mlp)
    if "mlp_fc" in tg:
        total += _lora(r, d, 4 * d, g_mlp)
    g_hidden = g_mlp or "mlp_fc" in tg
    total += _frozen_linear(4 * d, d, g_hidden)
    if "mlp_proj" in tg:
        total += _lora(r, 4 * d, d, g_hidden)
    return total, g_hidden or "mlp_proj" in tg


def part_flops(config: GPT2Config, n_blocks: int, seq_len: int, r: int, targets: Iterable[str] = ("q", "v"), *,
               input_requires_grad: bool = False, head: bool = False, attention: str = "math") -> Flops:
    """FLOPs per token of ``n_blocks`` consecutive blocks, plus the LM head if ``head``.

    ``input_requires_grad``: False for a part that starts at the (frozen) embeddings,
    True for a server part (the gradient of its input is sent back across the cut).
    """
    if not 0 <= n_blocks <= config.n_layer:
        raise ValueError(f"n_blocks must be in [0, {config.n_layer}], got {n_blocks}")
    if seq_len > config.n_positions:
        raise ValueError(f"seq_len {seq_len} exceeds n_positions={config.n_positions}")
    targets = tuple(targets)
    total, g = Flops(0, 0), input_requires_grad
    for _ in range(n_blocks):
        f, g = block_flops(config.n_embd, seq_len, r, targets, g, attention)
        total += f
    if head:
        # The head's weight is frozen (tied to wte): backward costs only its input gradient.
        total += _frozen_linear(config.n_embd, config.vocab_size, g)
    return total


def client_flops(config: GPT2Config, cut: int, seq_len: int, r: int, targets: Iterable[str] = ("q", "v"),
                 attention: str = "math") -> Flops:
    """A SplitLoRA client: embeddings + blocks 0..cut-1 (it sends h, gets dL/dh back)."""
    return part_flops(config, cut, seq_len, r, targets, input_requires_grad=False, attention=attention)


def server_flops(config: GPT2Config, cut: int, seq_len: int, r: int, targets: Iterable[str] = ("q", "v"),
                 attention: str = "math") -> Flops:
    """A SplitLoRA server: blocks cut..n-1 + LM head on every position, input gradient included.

    Training computes logits only on completion positions (about half): scale the head
    term yourself if you need that; this counts the head on every token.
    """
    return part_flops(config, config.n_layer - cut, seq_len, r, targets, input_requires_grad=True, head=True,
                      attention=attention)


def lora_parameters(config: GPT2Config, n_blocks: int, r: int, targets: Iterable[str] = ("q", "v")) -> int:
    """Closed-form LoRA parameter count of ``n_blocks`` blocks: r (in + out) per target."""
    d = config.n_embd
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "attn_proj": (d, d), "mlp_fc": (d, 4 * d),
              "mlp_proj": (4 * d, d)}
    return n_blocks * sum(r * sum(shapes[t]) for t in _targets(targets))


def forward_flops_shares(config: GPT2Config, seq_len: int = 64) -> dict[str, float]:
    """Shares of the forward FLOPs per token (no LoRA) spent in the blocks and in the LM head.

    What decides whether a small model's cost structure resembles GPT-2's: GPT-2 S at 64
    tokens spends about 31 % in its 50,257-row head, a 64-wide model with that head ~94 %.
    """
    blocks = part_flops(config, config.n_layer, min(seq_len, config.n_positions), 0, ()).forward
    head = _frozen_linear(config.n_embd, config.vocab_size, False).forward
    total = blocks + head
    return {"blocks": blocks / total, "lm_head": head / total, "seq_len": min(seq_len, config.n_positions)}
