"""HetLoRA (Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation
Models", 2024; the LoRA-A2 paper's baseline, arXiv 2410.22815): heterogeneous ranks.

Client k trains only the first r_k ranks of the r_G-rank allocation (``rank_mask`` switches
the others off; their rows of A and columns of B are kept at zero). Aggregation zero-pads
every client to r_G and takes the weighted sum per entry,

    B_G = sum_k w_k pad(B_k),   A_G = sum_k w_k pad(A_k)      (B (out, r_G), A (r_G, in))

so rank i is averaged with zeros from clients with r_k <= i (not re-normalised), and each
client receives the first r_k ranks of (B_G, A_G). The paper's self-pruning of tail ranks
(a client shrinking its own r_k during training when the tail's norm is small) is not
implemented: r_k stays fixed for the whole run. Factors are averaged like FedAvg, so the
product is inexact in the same way.

Accounting: up and down are each the client's r_k ranks, r_k·(out + in) per module. The
collective sums the zero-padded r_G-rank factors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.lora import iter_lora_adapters
from runtime.strategies.base import ClientContext, CommStats, Strategy, flat_allreduce_sum


def first_ranks(r_alloc: int, r_k: int, device: torch.device | None = None, dtype: torch.dtype | None = None
                ) -> Tensor:
    """(r_alloc,) mask with ones on the first r_k ranks."""
    mask = torch.zeros(r_alloc, device=device, dtype=dtype)
    mask[:r_k] = 1
    return mask


@torch.no_grad()
def use_first_ranks(module: nn.Module, r_k: int) -> None:
    """Let every adapter of ``module`` use only ranks 0..r_k-1 and zero the rest of A and B."""
    for _, a in iter_lora_adapters(module):
        keep = first_ranks(a.r, r_k, a.rank_mask.device, a.rank_mask.dtype)
        a.rank_mask.copy_(keep)
        a.lora_A.mul_(keep[:, None])  # A (r, in): rows
        a.lora_B.mul_(keep[None, :])  # B (out, r): columns


def pad_rank(B: Tensor, A: Tensor, r_alloc: int) -> tuple[Tensor, Tensor]:
    """Zero-pad B (out, r_k) and A (r_k, in) to rank r_alloc."""
    r_k = A.shape[0]
    Bp = torch.zeros(B.shape[0], r_alloc, dtype=B.dtype, device=B.device)
    Ap = torch.zeros(r_alloc, A.shape[1], dtype=A.dtype, device=A.device)
    Bp[:, :r_k], Ap[:r_k] = B, A
    return Bp, Ap


def aggregate_hetlora(factors: list[tuple[Tensor, Tensor]], weights: list[float], r_alloc: int
                      ) -> tuple[Tensor, Tensor]:
    """Reference maths for one module: (sum_k w_k pad(B_k), sum_k w_k pad(A_k)).

    factors[k] = (B_k (out, r_k), A_k (r_k, in)), r_k <= r_alloc.
    """
    padded = [pad_rank(B, A, r_alloc) for B, A in factors]
    B = sum(w * Bp for w, (Bp, _) in zip(weights, padded))
    A = sum(w * Ap for w, (_, Ap) in zip(weights, padded))
    return B, A


def factor_payload(ctx: ClientContext, ranks: int) -> tuple[int, int]:
    """(params, bytes) of ``ranks`` ranks of every adapter: ranks·(out + in) per module."""
    adapters = ctx.adapters()
    params = sum(ranks * (a.lora_B.shape[0] + a.lora_A.shape[1]) for _, a in adapters)
    size = adapters[0][1].lora_A.element_size() if adapters else 4
    return params, params * size


class HetLoRA(Strategy):
    """HetLoRA: zero-padded weighted averaging of heterogeneous ranks; client k keeps its first r_k."""

    name = "hetlora"
    uses_rank_budgets = True

    def setup(self, ctx: ClientContext) -> None:
        use_first_ranks(ctx.module, ctx.rank_budget)

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        adapters = [a for _, a in ctx.adapters()]
        keeps = [a.rank_mask.detach() for a in adapters]  # (r_G,): ones on the first r_k ranks
        # The client's ranks zero-padded to r_G (the tail is zero already: rank_mask gives it
        # zero gradients and AdamW's decay keeps zero at zero; the mask makes it explicit).
        tensors = [t for a, k in zip(adapters, keeps)
                   for t in (a.lora_B.detach() * k[None, :] * ctx.weight, a.lora_A.detach() * k[:, None] * ctx.weight)]
        summed = flat_allreduce_sum(tensors, ctx.group)
        with torch.no_grad():
            for i, (a, k) in enumerate(zip(adapters, keeps)):
                a.lora_B.copy_(summed[2 * i] * k[None, :])  # receive the first r_k ranks only
                a.lora_A.copy_(summed[2 * i + 1] * k[:, None])
        params, nbytes = factor_payload(ctx, ctx.rank_budget)
        return CommStats(up_params=params, up_bytes=nbytes, down_params=params, down_bytes=nbytes)
