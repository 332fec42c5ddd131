"""FFA-LoRA (Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024;
a baseline of LoRA-A2, arXiv 2410.22815): A frozen for ever at its random init, only B
trained and averaged.

Every rank builds the same model from the same seed, so A (r, in) is identical on all
clients and stays so; the weighted average of B (out, r) then gives the exact average of
the products: sum_k w_k B_k A = (sum_k w_k B_k) A.

Ignores ``fed.client_ranks``: every client trains and uploads all r_G ranks of B.
Accounting: up = down = every B, r_G·out per module.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from models.lora import iter_lora_adapters, set_lora_trainable
from runtime.strategies.base import ClientContext, CommStats, Strategy, average_in_place


def aggregate_ffa(Bs: list[list[Tensor]], weights: list[float]) -> list[Tensor]:
    """Reference maths: per module m, sum_k w_k Bs[k][m] (A is shared and untouched)."""
    return [sum(w * client[m] for w, client in zip(weights, Bs)) for m in range(len(Bs[0]))]


class FFA(Strategy):
    """FFA-LoRA: train and aggregate B only; A keeps the shared init."""

    name = "ffa"

    def param_groups(self, module: nn.Module, lr: float) -> list[dict[str, Any]]:
        return [{"params": [a.lora_B for _, a in iter_lora_adapters(module)], "lr": lr}]

    def setup(self, ctx: ClientContext) -> None:
        set_lora_trainable(ctx.module, A=False, B=True)

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        return average_in_place([a.lora_B for _, a in ctx.adapters()], ctx)
