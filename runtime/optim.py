"""The optimizer, its schedule and the one way every role applies gradients.

CenLoRA, FedLoRA and SplitLoRA clients (``runtime/steps.py``), the sequential server
(``runtime/split/server.py``) and the batched server (``runtime/split/batching.py``) all
update through ``apply_gradients``, so clipping, strategy hooks and the schedule happen in
one order everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # the schema imports the shapes, whose server imports this module
    from runtime.config import Config


def build_optimizer(cfg: Config, params: Iterable[nn.Parameter] | list[dict[str, Any]],
                    lr: float | None = None) -> torch.optim.AdamW:
    """AdamW with ``train``'s settings over ``params`` (tensors or a strategy's param groups)."""
    t = cfg.train
    # foreach=False keeps the update order per tensor fixed: bitwise resume and bitwise-equal
    # split vs centralized runs depend on it.
    return torch.optim.AdamW(params, lr=t.lr if lr is None else lr, betas=(t.beta1, t.beta2), eps=t.eps,
                             weight_decay=t.weight_decay, foreach=False)


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup to the base lr over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if total <= warmup:
            return 1.0
        return max(0.0, (total - step) / (total - warmup))

    return factor


def build_scheduler(cfg: Config, opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(cfg.train.warmup_steps, total_steps))


def apply_gradients(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                    params: list[nn.Parameter], *, update: bool = True, schedule_steps: int = 1,
                    grad_clip: float = 0.0, before: Callable[[], None] | None = None,
                    after: Callable[[], None] | None = None) -> None:
    """Clip, ``before`` (a strategy's hook), step, ``after``, advance the schedule ``schedule_steps``
    times, then drop the gradients. ``update`` False (a probe) only drops them."""
    if update:
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
        if before is not None:
            before()
        opt.step()
        if after is not None:
            after()
        for _ in range(schedule_steps):
            sched.step()
    for p in params:
        p.grad = None
