"""RoLoRA (Chen et al., "Robust Federated Finetuning of LLMs via Alternating Optimization of
LoRA", arXiv 2502.01755): alternating optimisation of the two factors.

Each round trains and aggregates one factor F while the other stays frozen and shared:
odd rounds B (A frozen), even rounds A (B frozen). Only F is uploaded and averaged with
the sample weights, so the aggregate of the product is exact,

    B-round:  sum_k w_k B_k A = (sum_k w_k B_k) A,   A-round:  sum_k w_k B A_k = B (sum_k w_k A_k),

and, unlike FFA-LoRA (A frozen for ever), both factors learn. This is LoRA-A2's alternating
freeze without its rank selection and masks, and with one learning rate for both factors.

B goes first: LoRA starts with B = 0, so in an A-round from the initial adapter the
gradient of A (proportional to B^T) is zero and the round would train nothing; after one
B-round both factors carry signal. The frozen factor is identical on every client (the
same seeded init, then the previous round's aggregate), which is what makes the update
exact. Its optimizer state is kept and used again when it next trains.

Ignores ``fed.client_ranks``: every client trains and uploads all r_G ranks of F.
Accounting: up = down = F, r·out (B-round) or r·in (A-round) per module.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from models.lora import set_lora_trainable
from runtime.strategies.base import ClientContext, CommStats, Strategy, average_in_place
from runtime.strategies.lora_a2 import round_factor


def aggregate_rolora(trained: list[list[Tensor]], weights: list[float]) -> list[Tensor]:
    """Reference maths of one round: per module m, sum_k w_k trained[k][m] (the round's factor F)."""
    return [sum(w * client[m] for w, client in zip(weights, trained)) for m in range(len(trained[0]))]


class RoLoRA(Strategy):
    """RoLoRA: odd rounds train and average B (A frozen), even rounds A (B frozen)."""

    name = "rolora"

    def __init__(self) -> None:
        self.factor = "B"
        self._module: nn.Module | None = None

    def setup(self, ctx: ClientContext) -> None:
        self._module = ctx.module

    def _freeze_other(self, module: nn.Module) -> None:
        set_lora_trainable(module, A=self.factor == "A", B=self.factor == "B")

    def begin_round(self, ctx: ClientContext, round_idx: int) -> None:
        self.factor = round_factor(round_idx)
        self._freeze_other(ctx.module)

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        return average_in_place([a.lora_B if self.factor == "B" else a.lora_A for _, a in ctx.adapters()], ctx)

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.factor = state["factor"]
        if self._module is not None:  # resumed mid-round: begin_round will not run again for it
            self._freeze_other(self._module)
