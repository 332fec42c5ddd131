"""FedSA-LoRA (Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated
Learning", ICLR 2025, arXiv 2410.01463): share A, keep B.

The paper finds that A learns what the clients have in common and B what is specific to
each; so only A is aggregated and every client keeps its own B (personalised):

    A_G = sum_k w_k A_k  (r, in)           client k's model: W + s·B_k·A_G

Both factors train every step. There is no single global model: the clients share the
base and A_G but each has its own B_k. The runtime evaluates and exports the model of the
first client, so **the reported validation loss, scores and the run's model/ are client 1's
personalised model: client 1's own B with the shared A** (not an average over clients).
The other clients' B_k are in their checkpoints (``ckpt/step_N/clientK.pt``).

Ignores ``fed.client_ranks``: every client trains and averages all r_G ranks of A.
Accounting: up = down = A, r·in per module (half of FedAvg's payload when out = in).
"""

from __future__ import annotations

from torch import Tensor

from runtime.strategies.base import ClientContext, CommStats, Strategy, average_in_place


def aggregate_fedsa(As: list[list[Tensor]], weights: list[float]) -> list[Tensor]:
    """Reference maths: per module m, sum_k w_k As[k][m] (each (r, in)); B is not aggregated."""
    return [sum(w * client[m] for w, client in zip(weights, As)) for m in range(len(As[0]))]


class FedSA(Strategy):
    """FedSA-LoRA: aggregate A only; each client keeps its own B."""

    name = "fedsa"

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        return average_in_place([a.lora_A for _, a in ctx.adapters()], ctx)

    def global_parameters(self, ctx: ClientContext) -> list[Tensor]:
        return [a.lora_A for _, a in ctx.adapters()]  # B stays the client's own
