"""FLoRA (Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
Low-Rank Adaptations", NeurIPS 2024; a baseline of LoRA-A2, arXiv 2410.22815): stacking.

Per module, the clients' factors are stacked — columns B_k, rows w_k·A_k —

    B_s = [B_1 | ... | B_K]  (out, sum r_k),   A_s = [w_1 A_1; ...; w_K A_K]  (sum r_k, in)

so that B_s A_s = sum_k w_k B_k A_k exactly, at rank sum r_k. Every client adds
scaling·B_s·A_s to its frozen base weight (in place, under no_grad) and restarts with fresh
adapters: A re-initialised from a seed shared by every client for that round
(``seed``, round), B = 0, and the optimizer state of the LoRA parameters dropped. Client k
uses its first r_k ranks (``rank_mask``).

The factors differ in shape between clients, so each is zero-padded to r_G and sent with
its real r_k in one flat buffer; ``all_gather`` of equal-sized tensors moves them (no
pickled objects). Accounting: up = the client's r_k·(out + in) per module + its r_k
(int32); down = the whole stack, sum_j r_j·(out + in) per module + the K ranks.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.lora import LoRAAdapter, iter_lora_linears
from runtime.aggregate import on_backend_device
from runtime.strategies.base import ClientContext, CommStats, Strategy
from runtime.strategies.hetlora import factor_payload, use_first_ranks

RANK_BYTES = 4  # the real r_k sent beside the padded factors (int32)


def stack_flora(factors: list[tuple[Tensor, Tensor]], weights: list[float]) -> tuple[Tensor, Tensor]:
    """(B_s (out, sum r_k), A_s (sum r_k, in)) with B_s @ A_s = sum_k w_k B_k A_k.

    factors[k] = (B_k (out, r_k), A_k (r_k, in)).
    """
    B_s = torch.cat([B for B, _ in factors], dim=1)
    A_s = torch.cat([w * A for w, (_, A) in zip(weights, factors)], dim=0)
    return B_s, A_s


def round_seed(seed: int, round_idx: int) -> int:
    """The seed every client uses for round ``round_idx``'s fresh A (same on all clients)."""
    return (seed * 1_000_003 + round_idx) % (2**63)


@torch.no_grad()
def restart_adapters(adapters: list[LoRAAdapter], seed: int) -> None:
    """A kaiming-uniform from ``seed`` (drawn on CPU, in adapter order: device-independent), B = 0."""
    g = torch.Generator().manual_seed(seed)
    for a in adapters:
        A = torch.empty(a.lora_A.shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=g)
        a.lora_A.copy_(A.to(a.lora_A.device, a.lora_A.dtype) * a.rank_mask[:, None])  # unused ranks stay 0
        a.lora_B.zero_()


def _adapters_with_base(module: nn.Module) -> list[tuple[LoRAAdapter, Tensor]]:
    """(adapter, the base-weight rows it adds to (out, in)) in module order."""
    return [(a, layer.base_rows(key)) for _, layer in iter_lora_linears(module) for key, a in layer.adapters.items()]


class FLoRA(Strategy):
    """FLoRA: gather every client's factors, merge the exact stacked product into the base, restart."""

    name = "flora"
    uses_rank_budgets = True
    modifies_base = True

    def setup(self, ctx: ClientContext) -> None:
        use_first_ranks(ctx.module, ctx.rank_budget)

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        pairs = _adapters_with_base(ctx.module)
        r_k, r_g = ctx.rank_budget, ctx.global_rank
        # Flat buffer: [r_k, then per module B_k padded (out, r_G), A_k padded (r_G, in)].
        parts = [torch.tensor([float(r_k)], device=ctx.device)]
        for a, _ in pairs:
            keep = a.rank_mask.detach()
            parts += [(a.lora_B.detach() * keep[None, :]).float().reshape(-1),
                      (a.lora_A.detach() * keep[:, None]).float().reshape(-1)]
        local = on_backend_device(torch.cat(parts), ctx.group)
        gathered = [torch.empty_like(local) for _ in range(ctx.n_clients)]
        dist.all_gather(gathered, local, group=ctx.group)
        gathered = [buf.to(ctx.device) for buf in gathered]
        ranks = [int(buf[0].item()) for buf in gathered]
        with torch.no_grad():
            offset = 1
            for a, base in pairs:
                out, inp = a.lora_B.shape[0], a.lora_A.shape[1]
                factors = []
                for buf, r in zip(gathered, ranks):
                    B = buf[offset:offset + out * r_g].view(out, r_g)[:, :r]
                    A = buf[offset + out * r_g:offset + out * r_g + r_g * inp].view(r_g, inp)[:r]
                    factors.append((B, A))
                offset += out * r_g + r_g * inp
                B_s, A_s = stack_flora(factors, ctx.weights)
                base.add_((a.scaling * (B_s @ A_s)).to(base.dtype))  # (out, in), into the frozen weight
            adapters = [a for a, _ in pairs]
            restart_adapters(adapters, round_seed(ctx.seed, round_idx))
            for a in adapters:
                for p in (a.lora_A, a.lora_B):
                    ctx.optimizer.state.pop(p, None)
        up_params, up_bytes = factor_payload(ctx, r_k)
        down_params = sum(factor_payload(ctx, r)[0] for r in ranks)
        down_bytes = sum(factor_payload(ctx, r)[1] for r in ranks) + RANK_BYTES * len(ranks)
        return CommStats(up_params=up_params, up_bytes=up_bytes + RANK_BYTES, down_params=down_params,
                         down_bytes=down_bytes)
