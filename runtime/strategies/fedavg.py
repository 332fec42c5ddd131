"""FedAvg-LoRA: average A and B separately, weighted by samples (McMahan et al.; the SplitLoRA
paper's client-side aggregation). The product of averages is not the average of products:
sum_k w_k B_k A_k != (sum_k w_k B_k)(sum_k w_k A_k) in general.

Ignores ``fed.client_ranks``: every client trains and averages all r_G ranks.
"""

from __future__ import annotations

import torch

from models.pieces import block_of
from runtime.strategies.base import ClientContext, CommStats, Strategy, average_in_place, flat_allreduce_sum


def aggregate_fedavg(factors: list[list[torch.Tensor]], weights: list[float]) -> list[torch.Tensor]:
    """Per tensor: sum_k w_k · factors[k][i] (the reference maths of one round)."""
    return [sum(w * f[i] for w, f in zip(weights, factors)) for i in range(len(factors[0]))]


def aggregate_fedavg_by_holders(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Per-client cuts: each tensor is averaged over the clients that hold it, weighted by
    their samples renormalised among those holders (reference maths of one round)."""
    out: dict[str, torch.Tensor] = {}
    for name in sorted({n for s in states for n in s}):
        holders = [(w, s[name]) for w, s in zip(weights, states) if name in s]
        total = sum(w for w, _ in holders)
        out[name] = sum((w / total) * t for w, t in holders)
    return out


class FedAvg(Strategy):
    """Weighted FedAvg of A and B. Ignores fed.client_ranks (every client trains r_G ranks).

    With per-client cuts (SplitLoRA ``split.client_cuts``), blocks held by only some
    clients are averaged among those who hold them, weighted by their samples.
    """

    name = "fedavg"

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        if ctx.cuts and len(set(ctx.cuts)) > 1:
            return self._aggregate_by_holders(ctx)
        params = [p for _, a in ctx.adapters() for p in (a.lora_A, a.lora_B)]
        if not params:  # full fine-tuning (no LoRA): FedAvg of every trained weight
            params = [p for p in ctx.module.parameters() if p.requires_grad]
        return average_in_place(params, ctx)

    def _aggregate_by_holders(self, ctx: ClientContext) -> CommStats:
        """One all_reduce over the union of client blocks (0..max cut-1); zeros where not held."""
        cuts = ctx.cuts or []
        own = {f"{n}.{k}": p for n, a in ctx.adapters() for k, p in (("lora_A", a.lora_A), ("lora_B", a.lora_B))}
        prefix = next(iter(own)).split(".h.", 1)[0] + ".h."
        # Every block has the same adapter shapes: block 0 (every client holds it) is the template.
        template = {n[len(prefix) + 2:]: p for n, p in own.items() if block_of(n) == 0}  # "0." stripped
        names = [(b, f"{prefix}{b}.{suffix}", suffix) for b in range(max(cuts)) for suffix in template]
        contrib = [own[n].detach() * ctx.weight if n in own else torch.zeros_like(template[suffix])
                   for _, n, suffix in names]
        summed = flat_allreduce_sum(contrib, ctx.group)
        with torch.no_grad():
            for (b, n, _), total in zip(names, summed):
                if n in own:
                    holders = sum(w for w, c in zip(ctx.weights, cuts) if c > b)  # sum of w_j over holders
                    own[n].copy_(total / holders)
        n_up = sum(t.numel() for t in contrib)
        size = contrib[0].element_size() if contrib else 4
        n_own = sum(p.numel() for p in own.values())
        return CommStats(up_params=n_up, up_bytes=n_up * size, down_params=n_own, down_bytes=n_own * size)
