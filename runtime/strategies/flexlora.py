"""FlexLoRA (Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous
Tasks and Client Resources", NeurIPS 2024; a baseline of LoRA-A2, arXiv 2410.22815).

Per module the server forms the weighted full-size update and hands every client a rank-r_k
truncation of it:

    dW = sum_k w_k dW_k                       (out, in)
    U S V^T = svd(dW);  B_k = U_r S_r / scaling,  A_k = V_r^T      (r = r_k)

Here dW_k is the update client k's adapter actually applies, ``scaling·B_k·diag(rank_mask)·A_k``:
every adapter is allocated at r_G with scaling alpha/r_G and client k switches ranks >= r_k
off with ``rank_mask`` (the paper's rank-r_k adapter with its alpha/r_k is the same update
in another parametrisation). B_k and A_k are zero-padded into the r_G allocation. When
r_k >= rank(dW) the client's new adapter reproduces dW exactly.

The factors after aggregation are a new basis (a rotation of the old ones), so Adam's
moments no longer refer to the same coordinates: the optimizer state of the LoRA
parameters is reset each round.

Accounting (protocol payload): up = the client's factors, r_k·(out + in) per module; down
= the truncated factors, the same size. The collective here sums the dense weighted dW
(out·in floats per module, ~56 MB fp32 per round for GPT-2 S with q, v) and every client
computes the same SVD, which is the same as the server doing it once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from runtime.strategies.base import ClientContext, CommStats, Strategy, flat_allreduce_sum
from runtime.strategies.hetlora import factor_payload, use_first_ranks


def aggregate_flexlora(deltas: list[Tensor], weights: list[float]) -> Tensor:
    """Reference maths for one module: sum_k w_k dW_k, each (out, in)."""
    return sum(w * d for w, d in zip(weights, deltas))


def truncate_flexlora(delta_w: Tensor, rank: int, scaling: float, r_alloc: int) -> tuple[Tensor, Tensor]:
    """(B (out, r_alloc), A (r_alloc, in)) with scaling·B·A = the best rank-``rank`` approximation of delta_w.

    B = U_r S_r / scaling, A = V_r^T; ranks >= ``rank`` are zero.
    """
    U, S, Vh = torch.linalg.svd(delta_w.float(), full_matrices=False)  # (out, q), (q,), (q, in)
    r = min(rank, S.numel())
    B = torch.zeros(delta_w.shape[0], r_alloc, dtype=delta_w.dtype, device=delta_w.device)
    A = torch.zeros(r_alloc, delta_w.shape[1], dtype=delta_w.dtype, device=delta_w.device)
    B[:, :r] = (U[:, :r] * S[:r] / scaling).to(delta_w.dtype)
    A[:r] = Vh[:r].to(delta_w.dtype)
    return B, A


class FlexLoRA(Strategy):
    """FlexLoRA: weighted sum of full-size updates, SVD, rank-r_k truncation per client."""

    name = "flexlora"
    uses_rank_budgets = True

    def setup(self, ctx: ClientContext) -> None:
        use_first_ranks(ctx.module, ctx.rank_budget)

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        adapters = [a for _, a in ctx.adapters()]
        summed = flat_allreduce_sum([a.delta_weight().detach() * ctx.weight for a in adapters], ctx.group)
        with torch.no_grad():
            for a, dw in zip(adapters, summed):
                B, A = truncate_flexlora(dw, ctx.rank_budget, a.scaling, a.r)
                a.lora_B.copy_(B)
                a.lora_A.copy_(A)
                for p in (a.lora_A, a.lora_B):
                    ctx.optimizer.state.pop(p, None)
        params, nbytes = factor_payload(ctx, ctx.rank_budget)
        return CommStats(up_params=params, up_bytes=nbytes, down_params=params, down_bytes=nbytes)
