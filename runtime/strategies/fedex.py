"""FedEx-LoRA (Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient
Fine-Tuning of Foundation Models", arXiv 2410.09432): FedAvg of A and B plus the error it
makes, folded into the frozen base.

Per module, with sample weights w_k (sum 1) and s = scaling:

    B_G = sum_k w_k B_k  (out, r),   A_G = sum_k w_k A_k  (r, in)
    R   = s · (sum_k w_k B_k A_k − B_G A_G)                 (out, in), the residual
    W  <- W + R                                            on every client

so the global model W + R + s·B_G·A_G = W + s·sum_k w_k B_k A_k is exactly the weighted
average of the clients' models, where FedAvg alone keeps only s·B_G·A_G. The adapters
continue from (B_G, A_G) with their optimizer state (as in FedAvg); the base changes every
round, so ``modifies_base`` is True (checkpoints and the run's model/ carry it).

Ignores ``fed.client_ranks``: every client trains and averages all r_G ranks.

Accounting: up = the client's A and B, r·(out + in) per module; down = A_G and B_G plus
R as one dense (out, in) matrix per module. R has rank <= (K + 1)·r, so a server could send
the K clients' factors instead when that is smaller; this protocol sends it dense, and the
collective here is one all_reduce of [w_k·B_k, w_k·A_k, w_k·s·B_k·A_k] per module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.lora import LoRAAdapter, iter_lora_linears
from runtime.strategies.base import ClientContext, CommStats, Strategy, flat_allreduce_sum


def aggregate_fedex(factors: list[tuple[Tensor, Tensor]], weights: list[float], scaling: float
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Reference maths for one module: (B_G (out, r), A_G (r, in), residual R (out, in)).

    factors[k] = (B_k (out, r), A_k (r, in)); R = scaling·(sum_k w_k B_k A_k − B_G A_G).
    """
    B = sum(w * Bk for w, (Bk, _) in zip(weights, factors))
    A = sum(w * Ak for w, (_, Ak) in zip(weights, factors))
    exact = sum(w * Bk @ Ak for w, (Bk, Ak) in zip(weights, factors))
    return B, A, scaling * (exact - B @ A)


def adapters_with_base(module: nn.Module) -> list[tuple[LoRAAdapter, Tensor]]:
    """(adapter, the rows (out, in) of the frozen weight it adds to) for every adapter, in module order."""
    return [(a, layer.base_rows(key)) for _, layer in iter_lora_linears(module) for key, a in layer.adapters.items()]


class FedEx(Strategy):
    """FedEx-LoRA: FedAvg of A and B, and the exact residual merged into the frozen base."""

    name = "fedex"
    modifies_base = True

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        pairs = adapters_with_base(ctx.module)
        w = ctx.weight
        contrib = [t for a, _ in pairs for t in (a.lora_B.detach() * w, a.lora_A.detach() * w,
                                                   a.delta_weight().detach() * w)]  # (out, r), (r, in), (out, in)
        summed = flat_allreduce_sum(contrib, ctx.group)
        with torch.no_grad():
            for i, (a, base) in enumerate(pairs):
                B, A, exact = summed[3 * i:3 * i + 3]
                a.lora_B.copy_(B)
                a.lora_A.copy_(A)
                residual = exact.float() - a.delta_weight().float()  # s·(sum w B A − B_G A_G), rank_mask included
                base.add_(residual.to(base.dtype))
        n_factors = sum(a.lora_A.numel() + a.lora_B.numel() for a, _ in pairs)
        n_dense = sum(base.numel() for _, base in pairs)
        size = pairs[0][0].lora_A.element_size() if pairs else 4
        return CommStats(up_params=n_factors, up_bytes=n_factors * size, down_params=n_factors + n_dense,
                         down_bytes=(n_factors + n_dense) * size)
