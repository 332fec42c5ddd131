"""One training step with its phase timings.

``Stepper.local_step`` is a whole model in one process (CenLoRA, FedLoRA clients). A
SplitLoRA client's step belongs to its split shape (``runtime/split/shapes/``:
``shape.client_step(stepper, ...)``), which uses the same ``Stepper`` for its part,
optimizer and schedule.
"""

from __future__ import annotations

from typing import Any

import torch

from models.loss import model_loss
from runtime.control.dist import SERVER
from runtime.io.telemetry import now, sync
from runtime.optim import apply_gradients


class Stepper:
    """Holds what a training step needs: the part/model, its optimizer and schedule."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
                 label_smoothing: float, grad_clip: float = 0.0, before_step=None, after_step=None) -> None:
        self.module = module
        self.opt = optimizer
        self.sched = scheduler
        self.device = device
        self.label_smoothing = label_smoothing
        self.grad_clip = grad_clip
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.before_step = before_step  # strategy hooks (e.g. LoRA-A2's masked updates)
        self.after_step = after_step
        self.update_server = True  # False during a strategy's probe: the server only computes gradients
        self.server = SERVER  # the RPC name split steps call

    def apply(self) -> None:
        """Apply this step's gradients (the strategy's hooks around the optimizer step)."""
        apply_gradients(self.opt, self.sched, self.params, grad_clip=self.grad_clip, before=self.before_step,
                        after=self.after_step)

    def local_step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Forward, backward and update of a whole model in this process."""
        ids, targets, mask = (batch[k].to(self.device) for k in ("input_ids", "targets", "loss_mask"))
        t0 = now()
        loss = model_loss(self.module, ids, targets, mask, self.label_smoothing)
        sync(self.device)
        t1 = now()
        loss.backward()
        sync(self.device)
        t2 = now()
        self.apply()
        sync(self.device)
        t3 = now()
        return {"loss": loss.item(), "time": {"fwd": t1 - t0, "bwd": t2 - t1, "opt": t3 - t2}}
