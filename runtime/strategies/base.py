"""The strategy interface: how client adapters are trained between and merged at rounds.

A strategy is a small class; the runtime calls its hooks at fixed points of every
client's loop and never changes per method:

    setup(ctx)                      once, after the model and optimizer exist
    begin_round(ctx, round)         before the first local step of each round (1-based)
    before_step(ctx) / after_step(ctx)   around every optimizer step (grads are set)
    aggregate(ctx, round) -> CommStats   at the end of each round: a collective over the
                                    client-only group (every client calls it, same round)

Aggregation maths lives in plain typed functions next to each strategy (tested with
tiny tensors); the collectives move flat tensors only (no pickled objects).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from models.lora import LoRAAdapter, iter_lora_adapters
from runtime.aggregate import on_backend_device
from runtime.fed.local_round import Seat


@dataclass
class ClientContext:
    module: nn.Module  # this client's trainable part: the client part (SplitLoRA) or whole model (FedLoRA)
    optimizer: torch.optim.Optimizer
    client_index: int  # 0-based logical client (rank - 1 with one client per rank)
    n_clients: int
    weights: list[float]  # w_k of every client, sum 1
    group: dist.ProcessGroup | Seat | None  # the client-only group (a Seat when a rank hosts several)
    device: torch.device
    rank_budget: int  # r_k: this client's rank / communication budget
    global_rank: int  # r_G: the adapters' allocated rank
    seed: int
    # Run n local training steps (forward, backward, optimizer) on this client's data; in
    # SplitLoRA the server computes gradients but does not update its weights (probes).
    probe: Callable[[int], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    cuts: list[int] | None = None  # SplitLoRA: every client's cut (per-client cuts differ)
    # SplitLoRA in round_robin order: the server admits clients in turn, so every client must make
    # the same number of server calls per round (a probe that only some clients run would deadlock).
    lockstep: bool = False

    @property
    def weight(self) -> float:
        return self.weights[self.client_index]

    def adapters(self) -> list[tuple[str, LoRAAdapter]]:
        return list(iter_lora_adapters(self.module))


@dataclass
class CommStats:
    """What one client sent and received in one aggregation round (payload, not framing)."""

    up_params: int = 0
    up_bytes: int = 0
    down_params: int = 0
    down_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"up_params": self.up_params, "up_bytes": self.up_bytes,
                "down_params": self.down_params, "down_bytes": self.down_bytes}


class Strategy:
    """Base: plain local training, no aggregation. Subclasses override what they change."""

    name = "none"
    modifies_base = False  # True if aggregation merges updates into the frozen base weights
    uses_rank_budgets = False  # True if fed.client_ranks (r_k) changes what a client trains or sends
    options: tuple[str, ...] = ()  # FedConfig fields the constructor takes by name (see build_strategy)

    def param_groups(self, module: nn.Module, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in module.parameters() if p.requires_grad], "lr": lr}]

    def setup(self, ctx: ClientContext) -> None:  # noqa: B027 - optional hook
        pass

    def begin_round(self, ctx: ClientContext, round_idx: int) -> None:  # noqa: B027 - optional hook
        pass

    def before_step(self, ctx: ClientContext) -> None:  # noqa: B027 - optional hook
        pass

    def after_step(self, ctx: ClientContext) -> None:  # noqa: B027 - optional hook
        pass

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        return CommStats()

    def state_dict(self) -> dict[str, Any]:
        """Strategy state a checkpoint must carry (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass

    def global_parameters(self, ctx: ClientContext) -> list[torch.Tensor]:
        """What aggregation makes equal on every client: a sampled client that missed rounds copies
        these from its rank's copy of the global state before it trains (its rank budget then
        applies, ``runtime/fed/hosted.py``). Default: both factors of every adapter."""
        params = [p for _, a in ctx.adapters() for p in (a.lora_A, a.lora_B)]
        return params or [p for p in ctx.module.parameters() if p.requires_grad]  # full fine-tuning


def average_in_place(params: list[torch.Tensor], ctx: ClientContext) -> CommStats:
    """Replace each tensor by its sample-weighted mean over the clients, sum_k w_k p_k, with one
    collective; what every client sent and received is all of them (up = down)."""
    summed = flat_allreduce_sum([p.detach() * ctx.weight for p in params], ctx.group)
    with torch.no_grad():
        for p, s in zip(params, summed):
            p.copy_(s)
    n = sum(p.numel() for p in params)
    nbytes = n * (params[0].element_size() if params else 4)
    return CommStats(up_params=n, up_bytes=nbytes, down_params=n, down_bytes=nbytes)


def flat_allreduce_sum(tensors: list[torch.Tensor], group: dist.ProcessGroup | Seat | None) -> list[torch.Tensor]:
    """Sum each tensor over the group with one collective on one flat fp32 buffer."""
    if not tensors:
        return []
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])  # (sum numel,)
    if isinstance(group, Seat):  # one of several clients a rank hosts: runtime/fed/local_round.py
        flat = group.allreduce_sum(flat)
    else:
        flat = on_backend_device(flat, group)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat = flat.to(tensors[0].device)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
    return out
