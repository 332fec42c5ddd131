"""FedAvg-LoRA: average A and B separately, weighted by samples (McMahan et al.; the SplitLoRA
paper's client-side aggregation). The product of averages is not the average of products:
sum_k w_k B_k A_k != (sum_k w_k B_k)(sum_k w_k A_k) in general.

Ignores ``fed.client_ranks``: every client trains and averages all r_G ranks.
"""

from __future__ import annotations

import torch

from runtime.strategies.base import ClientContext, CommStats, Strategy, flat_allreduce_sum


def aggregate_fedavg(factors: list[list[torch.Tensor]], weights: list[float]) -> list[torch.Tensor]:
    """Per tensor: sum_k w_k · factors[k][i] (the reference maths of one round)."""
    return [sum(w * f[i] for w, f in zip(weights, factors)) for i in range(len(factors[0]))]


class FedAvg(Strategy):
    name = "fedavg"

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        params = [p for _, a in ctx.adapters() for p in (a.lora_A, a.lora_B)]
        summed = flat_allreduce_sum([p.detach() * ctx.weight for p in params], ctx.group)
        with torch.no_grad():
            for p, s in zip(params, summed):
                p.copy_(s)
        n = sum(p.numel() for p in params)
        size = params[0].element_size() if params else 4
        return CommStats(up_params=n, up_bytes=n * size, down_params=n, down_bytes=n * size)
