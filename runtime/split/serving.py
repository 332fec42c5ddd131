"""How the SplitLoRA server serves its clients: a serving mode behind one interface.

``SplitServer`` (``runtime/split/server.py``) only dispatches to its mode:

- ``SequentialServing`` (here): one client at a time, one server update per client step.
  A client holds the server from its forward to its step (admission: ``runtime/split/admission.py``).
- ``BatchedServing`` (``runtime/split/batching.py``): the waiting clients' activations in one
  forward, backward and update.

Every mode answers the same calls — ``forward_loss`` (vanilla shape), ``forward_hidden`` (shapes
whose client finishes the forward), ``step`` (after the client's distributed backward),
``retire`` and ``close`` — and returns the server's share of a step as ``ServerTimings``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed.autograd as dist_autograd

from models.loss import model_loss
from runtime.io.telemetry import now, stamp, sync
from runtime.optim import apply_gradients
from runtime.split.admission import Admission
from runtime.split.cut import decode, reply_like


@dataclass
class ServerTimings:
    """The server's part of one client step (seconds), as the client's step record uses it."""

    server_wait: float  # queued for the server (admission)
    server_fwd: float
    server_bwd: float
    server_opt: float
    batched: bool = False  # the forward, backward and update all ran before the reply

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class ServingMode:
    """The interface; see the module docstring. ``updates``: server optimizer steps so far."""

    name = ""
    updates = 0
    admission: Admission  # who is served next; ``hold()`` lends the part to validation and decoding

    def forward_loss(self, client: int, h: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor,
                     update: bool, first_block: int) -> torch.futures.Future:
        raise NotImplementedError

    def forward_hidden(self, client: int, h: torch.Tensor, first_block: int,
                       attn_mask: torch.Tensor | None) -> torch.futures.Future:
        raise RuntimeError(f"{self.name} serving supports the vanilla split shape only")

    def step(self, client: int, context_id: int, apply: bool) -> ServerTimings:
        raise NotImplementedError

    def retire(self, client: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SequentialServing(ServingMode):
    """One client at a time: forward (on the admission thread), the client's distributed
    backward (in RPC threads), then ``step`` applies that context's gradients and frees the server."""

    name = "sequential"

    def __init__(self, part: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, device: torch.device, clients: list[int],
                 order: str, label_smoothing: float, timeout: float) -> None:
        self.part, self.opt, self.sched, self.device = part, optimizer, scheduler, device
        self.label_smoothing = label_smoothing
        self.params = [p for p in part.parameters() if p.requires_grad]
        self.admission = Admission(list(clients), order, timeout)
        self._pending: dict[int, dict[str, Any]] = {}  # per client: timings of the open step
        self.updates = 0

    def forward_loss(self, client: int, h: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor,
                     update: bool, first_block: int) -> torch.futures.Future:
        def run(x: torch.Tensor) -> torch.Tensor:
            return model_loss(self.part, x, targets.to(self.device), loss_mask.to(self.device),
                              self.label_smoothing, first_block=first_block)

        return self._submit(client, h, run)

    def forward_hidden(self, client: int, h: torch.Tensor, first_block: int,
                       attn_mask: torch.Tensor | None) -> torch.futures.Future:
        extra = {} if attn_mask is None else {"attn_mask": attn_mask.to(self.device)}
        return self._submit(client, h, lambda x: reply_like(self.part(x, first_block=first_block, **extra), h))

    def _submit(self, client: int, h: torch.Tensor, run: Any) -> torch.futures.Future:
        return self.admission.submit(client, lambda wait: self._forward_admitted(client, h, run, wait))

    def _forward_admitted(self, client: int, h: torch.Tensor, run: Any, wait: float) -> torch.Tensor:
        """Runs on the admission thread once ``client`` holds the server."""
        t0 = now()
        marks: list[float] = []
        x = stamp(decode(h, self.device), marks)  # marks[-1] = when the gradient has crossed the server part
        out = run(x)  # the loss, or the part's output (B, T, ·)
        end_marks: list[float] = []
        out = stamp(out, end_marks)  # end_marks[-1] = server backward starts
        sync(self.device)
        self._pending[client] = {"wait": wait, "server_fwd": now() - t0, "marks": marks, "end_marks": end_marks}
        return out.to(h.device)

    def step(self, client: int, context_id: int, apply: bool) -> ServerTimings:
        try:
            pending = self._pending.pop(client)
            t0 = now()
            if apply:
                grads = dist_autograd.get_gradients(context_id)
                for p in self.params:
                    p.grad = grads.get(p)
                apply_gradients(self.opt, self.sched, self.params)
                sync(self.device)
                self.updates += 1
            marks, end_marks = pending["marks"], pending["end_marks"]
            bwd = (marks[-1] - end_marks[-1]) if marks and end_marks else 0.0
            return ServerTimings(pending["wait"], pending["server_fwd"], bwd, now() - t0)
        finally:
            self.admission.leave(client)

    def retire(self, client: int) -> None:
        if self.admission.retire(client):  # it died holding the server: drop its open step
            self._pending.pop(client, None)

    def close(self) -> None:
        self.admission.close()
