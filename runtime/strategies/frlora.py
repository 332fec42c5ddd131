"""FRLoRA (Yan et al., "Federated Residual Low-Rank Adaption of Large Language Models",
ICLR 2025): the aggregated weight change goes into the global weights each round, and the
local adapters restart from the principal singular vectors of the pre-trained weights.

Per module with pre-trained weight W0 (out, in), s = scaling and U S V^T = svd(W0):

    B0 = U_r sqrt(S_r / s)  (out, r),   A0 = sqrt(S_r / s) V_r^T  (r, in)   so s·B0·A0 = U_r S_r V_r^T

Set-up (once, every client alike): the adapter starts at (B0, A0) and the frozen base holds
the rest, W0 − s·B0·A0, so the model is unchanged. Each round, client k trains (B_k, A_k);
every client then adds the weighted residual product (the weight change)

    dW = sum_k w_k · s·(B_k A_k − B0 A0)                    (out, in)

to its frozen base and restarts its adapter at (B0, A0), with the optimizer state of the
LoRA parameters dropped (as FLoRA does). The global model afterwards is
base + dW + s·B0·A0 = the weighted average of the clients' models: exact, and over the
rounds the global update is a sum of rank-(K·r) changes, not one rank-r adapter.

What is the paper's and what is a choice here: the abstract states the global update sums
the global weights with the residual low-rank product and that the local matrices are
re-initialised every round "with the principal singular values and vectors of the
pre-trained weights". The full text was not available when this was written, so the split
of S_r between the factors (sqrt on each, divided by s so that s·B0·A0 is the rank-r
truncation) and keeping the model unchanged by subtracting s·B0·A0 from the base are
PiSSA's rule, chosen here. The SVD is of the pre-trained W0 (not of the updated weight), so
(B0, A0) is computed once (float64, on CPU: the same on every client) and kept in the
strategy state. Note the principal part then passes through the LoRA path, including
``lora.dropout``; ``--lora.dropout=0`` keeps the forward of the base part as in training
without dropout.

Ignores ``fed.client_ranks``: every client trains all r_G ranks. ``modifies_base`` is True.
Accounting: up = A_k and B_k, r·(out + in) per module; down = dW as one dense (out, in)
matrix per module (the collective here is one all_reduce of w_k·s·(B_k A_k − B0 A0)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from runtime.strategies.base import ClientContext, CommStats, Strategy, flat_allreduce_sum
from runtime.strategies.fedex import adapters_with_base


def principal_factors(weight: Tensor, r: int, scaling: float) -> tuple[Tensor, Tensor]:
    """(B0 (out, r), A0 (r, in)) with scaling·B0·A0 = the top-r SVD truncation of weight (out, in).

    Computed in float64 on CPU (device- and thread-independent), returned in weight's dtype and device.
    """
    U, S, Vh = torch.linalg.svd(weight.detach().double().cpu(), full_matrices=False)  # (out, q), (q,), (q, in)
    root = (S[:r] / scaling).sqrt()  # (r,)
    B0, A0 = U[:, :r] * root[None, :], root[:, None] * Vh[:r]
    return B0.to(weight.device, weight.dtype), A0.to(weight.device, weight.dtype)


def frlora_update(factors: list[tuple[Tensor, Tensor]], weights: list[float], init: tuple[Tensor, Tensor],
                  scaling: float) -> Tensor:
    """Reference maths for one module: dW = sum_k w_k·scaling·(B_k A_k − B0 A0), (out, in).

    factors[k] = (B_k (out, r), A_k (r, in)); init = (B0, A0); weights sum to 1.
    """
    B0, A0 = init
    return sum(w * scaling * (Bk @ Ak - B0 @ A0) for w, (Bk, Ak) in zip(weights, factors))


class FRLoRA(Strategy):
    """FRLoRA: merge the weighted residual product into the base, restart at the principal factors."""

    name = "frlora"
    modifies_base = True

    def __init__(self) -> None:
        self.init: list[tuple[Tensor, Tensor]] = []  # (B0, A0) per adapter, in module order
        self._device = torch.device("cpu")

    def setup(self, ctx: ClientContext) -> None:
        self._device = ctx.device
        self.init = []
        with torch.no_grad():
            for a, base in adapters_with_base(ctx.module):
                B0, A0 = principal_factors(base, a.r, a.scaling)
                self.init.append((B0, A0))
                a.lora_B.copy_(B0)
                a.lora_A.copy_(A0)
                # The adapter is fresh (B = 0) here, so base = W0 − s·B0·A0 leaves the model unchanged.
                base.sub_(a.delta_weight().to(base.dtype))

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        pairs = adapters_with_base(ctx.module)
        # w_k·(s·B_k·A_k − s·B0·A0) per module, (out, in); delta_weight includes rank_mask (all ones here).
        contrib = [ctx.weight * (a.delta_weight().detach() - _product(a.scaling, a.rank_mask, B0, A0))
                   for (a, _), (B0, A0) in zip(pairs, self.init)]
        summed = flat_allreduce_sum(contrib, ctx.group)
        with torch.no_grad():
            for (a, base), dW, (B0, A0) in zip(pairs, summed, self.init):
                base.add_(dW.to(base.dtype))
                a.lora_B.copy_(B0)  # restart at the principal factors
                a.lora_A.copy_(A0)
                for p in (a.lora_A, a.lora_B):
                    ctx.optimizer.state.pop(p, None)
        n_factors = sum(a.lora_A.numel() + a.lora_B.numel() for a, _ in pairs)
        n_dense = sum(base.numel() for _, base in pairs)
        size = pairs[0][0].lora_A.element_size() if pairs else 4
        return CommStats(up_params=n_factors, up_bytes=n_factors * size, down_params=n_dense,
                         down_bytes=n_dense * size)

    def state_dict(self) -> dict[str, Any]:
        return {"init": [t.cpu() for pair in self.init for t in pair]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        flat = [t.to(self._device) for t in state["init"]]
        self.init = list(zip(flat[0::2], flat[1::2]))


def _product(scaling: float, rank_mask: Tensor, B0: Tensor, A0: Tensor) -> Tensor:
    """s·B0·(A0 masked), (out, in): the same expression as ``LoRAAdapter.delta_weight``."""
    return (B0 @ (A0 * rank_mask[:, None])) * scaling
