"""Batched serving (``split.server_batching``): one server forward, backward and update for
the activations of all the clients that are waiting at once.

Semantics, beside the sequential server (``runtime/split/server.py``):

- sequential: one server update per client step (SFL-V2, the public SplitLoRA loop);
- batched: one server update per *batch* of client steps. The waiting clients' activations
  (B_k, T_k, C) are right-padded to the longest T and concatenated along the batch (causal
  attention and the loss mask keep every real token exact), the server part runs one forward
  and one backward over the union and takes one optimizer step. The server's loss is the mean
  over all the union's loss tokens (it sees one larger batch); each client gets back its *own*
  loss (its tokens' mean, as in sequential mode) and the gradient of that loss at the batch's
  pre-update server weights, so a client's update does not shrink with the number of clients
  beside it. The schedule advances once per client step in the batch, so the server's
  learning rate spans the same range as in sequential mode.

The backward runs before the losses go back. Each client's loss is returned through
``_HandBack``, an autograd node in that client's distributed-autograd context whose backward
hands back the client's slice of the batched backward: the client's step and its
``dist_autograd.backward`` are the same in both modes.

When a batch closes: ``round_robin`` — when the next ``max_batch_clients`` clients of the
rotation (default: every live client) are all waiting, in rank order: a fixed composition,
so runs are reproducible; ``arrival`` — when every live client is waiting, the cap is reached,
or ``batch_window_ms`` has passed since the batch's first request, so a straggler or a dead
client delays the others by at most the window. A strategy's probe steps (the server must not
update) are batched apart from training steps, probes first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from models.loss import model_loss_groups
from runtime.io.telemetry import now, sync
from runtime.optim import apply_gradients
from runtime.split.admission import Admission, _Request
from runtime.split.cut import decode, reply_like
from runtime.split.serving import ServerTimings, ServingMode


@dataclass
class Work:
    """One client's request to a batched server. h (B, T, C) as received; targets, mask (B, T)."""

    h: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    update: bool  # False: a probe step (gradients only; the server's weights stay)


class _HandBack(torch.autograd.Function):
    """Client k's loss out of a batch; its backward returns that client's activation gradient,
    computed in advance by the batched backward (scaled by the incoming gradient)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, loss: torch.Tensor, grad_h: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad_h)
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad_h,) = ctx.saved_tensors
        return grad_out.to(grad_h.dtype) * grad_h, None, None


class BatchRunner:
    """The server part's batched forward + backward + update (runs on the admission thread)."""

    def __init__(self, part: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
                 label_smoothing: float, first_block: int = 0) -> None:
        self.part = part
        self.opt = optimizer
        self.sched = scheduler
        self.device = device
        self.label_smoothing = label_smoothing
        self.first_block = first_block
        self.params = [p for p in part.parameters() if p.requires_grad]
        self.updates = 0  # optimizer steps taken

    def __call__(self, works: list[Work]) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Returns each client's loss (a node over its ``h``) and the batch's record."""
        t0 = now()
        # Leaves of the local graph (B_k, T_k, C) fp32; the received h keeps its own graph.
        xs = [decode(w.h.detach(), self.device).requires_grad_() for w in works]
        sums, counts = model_loss_groups(self.part, xs, [w.targets.to(self.device) for w in works],
                                         [w.loss_mask.to(self.device) for w in works], self.label_smoothing,
                                         first_block=self.first_block)
        total = counts.sum().clamp_min(1.0)
        sync(self.device)
        t1 = now()
        (sums.sum() / total).backward()  # the union's mean: the server's gradient
        sync(self.device)
        t2 = now()
        update = works[0].update
        # The schedule counts client steps, as in sequential mode.
        apply_gradients(self.opt, self.sched, self.params, update=update, schedule_steps=len(works))
        self.updates += int(update)
        sync(self.device)
        t3 = now()
        losses = (sums / counts.clamp_min(1.0)).detach()  # (K,) each client's own mean
        # x.grad holds d(union mean)/dx = (n_k / N) d(own loss)/dx: rescale to the client's own.
        scale = (total / counts.clamp_min(1.0)).tolist()
        out = []
        for w, x, loss, s in zip(works, xs, losses, scale):
            grad_h = reply_like(x.grad * s, w.h)  # (B_k, T_k, C)
            out.append(_HandBack.apply(w.h, loss.to(w.h.device), grad_h))
        record = {"update": update, "rows": [w.h.shape[0] for w in works], "seq_len": max(x.shape[1] for x in xs),
                  "tokens": [int(c) for c in counts.tolist()],
                  "time": {"server_fwd": t1 - t0, "server_bwd": t2 - t1, "server_opt": t3 - t2}}
        return out, record


class BatchAdmission(Admission):
    """Admission that closes batches of waiting clients (see the module docstring)."""

    def __init__(self, clients: list[int], order: str, timeout: float, runner: Any, *,
                 window_s: float, max_clients: int = 0, on_batch: Any = None) -> None:
        self.runner = runner  # runner(list[Work]) -> (losses, record)
        self.window_s = window_s
        self.max_clients = max_clients  # 0 = no cap
        self.on_batch = on_batch  # callback(record) after every batch
        self.batches = 0
        self.timings: dict[int, dict[str, float]] = {}  # per client: its last batch's phases
        super().__init__(clients, order, timeout)

    def submit_work(self, client: int, work: Work) -> torch.futures.Future:
        return self.submit(client, None, work)

    # -- which requests form the next batch (under the lock) -----------------------------
    def _cap(self) -> int:
        return self.max_clients or len(self.active) or 1

    def _group(self) -> list[int]:
        if not self.waiting:
            return []
        if self.order == "round_robin":
            n = len(self.active)
            turn = [self.active[(self.turn + i) % n] for i in range(min(self._cap(), n))]
            if not turn or any(c not in self.waiting for c in turn):
                return []
            probes = [c for c in turn if not self.waiting[c].payload.update]
            return probes or turn
        oldest = min(self.waiting, key=lambda c: self.waiting[c].since)
        kind = self.waiting[oldest].payload.update
        same = sorted((c for c, r in self.waiting.items() if r.payload.update == kind),
                      key=lambda c: self.waiting[c].since)[:self._cap()]
        everyone = all(c in self.waiting for c in self.active)
        due = now() - self.waiting[oldest].since >= self.window_s
        return sorted(same) if everyone or due or len(same) >= self._cap() else []

    def _take_ready(self) -> bool:
        return bool(self._group())

    def _wait_s(self) -> float:
        if self.order == "arrival" and self.waiting:
            oldest = min(r.since for r in self.waiting.values())
            return max(1e-3, min(super()._wait_s(), oldest + self.window_s - now()))
        return super()._wait_s()

    def _take(self) -> list[tuple[int, _Request]]:
        group = self._group()
        if self.order == "round_robin" and group and all(self.waiting[c].payload.update for c in group):
            self.turn = (self.turn + len(group)) % len(self.active)
        return [(c, self.waiting.pop(c)) for c in group]

    # -- one batch (outside the lock) --------------------------------------------------
    def _run(self, taken: list[tuple[int, _Request]]) -> None:
        start = now()
        clients = [c for c, _ in taken]
        try:
            losses, record = self.runner([r.payload for _, r in taken])
        except BaseException as exc:  # noqa: BLE001 - every member gets the error through its future
            for _, request in taken:
                request.future.set_exception(exc)
            return
        self.batches += 1
        waits = [start - r.since for _, r in taken]
        record = {"kind": "server_batch", "batch": self.batches, "clients": clients, "t": time.time(),
                  "wait": [round(w, 6) for w in waits], **record}
        for (client, _), wait in zip(taken, waits):
            self.timings[client] = {"server_wait": wait, **record["time"]}
        if self.on_batch is not None:
            self.on_batch(record)
        for (_, request), loss in zip(taken, losses):
            request.future.set_result(loss)


class BatchedServing(ServingMode):
    """The serving mode over ``BatchRunner`` + ``BatchAdmission`` (vanilla shape, one cut for all)."""

    name = "batched"

    def __init__(self, part: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, device: torch.device, clients: list[int],
                 order: str, label_smoothing: float, timeout: float, first_block: int, window_s: float,
                 max_clients: int = 0, on_batch: Any = None) -> None:
        self.runner = BatchRunner(part, optimizer, scheduler, device, label_smoothing, first_block=first_block)
        self.on_batch = on_batch  # callback(record) after every batch (the run's metrics.jsonl)
        self.admission = BatchAdmission(list(clients), order, timeout, self.runner, window_s=window_s,
                                        max_clients=max_clients, on_batch=self._batch_done)
        self.updates = 0

    def _batch_done(self, record: dict[str, Any]) -> None:
        self.updates += int(record["update"])
        if self.on_batch is not None:
            self.on_batch(record)

    def forward_loss(self, client: int, h: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor,
                     update: bool, first_block: int) -> torch.futures.Future:
        return self.admission.submit_work(client, Work(h, targets, loss_mask, update))

    def step(self, client: int, context_id: int, apply: bool) -> ServerTimings:
        """The batch has already updated the server; only its timings are returned."""
        t = self.admission.timings.pop(client)
        return ServerTimings(t["server_wait"], t["server_fwd"], t["server_bwd"], t["server_opt"], batched=True)

    def retire(self, client: int) -> None:
        self.admission.retire(client)
        self.admission.timings.pop(client, None)

    def close(self) -> None:
        self.admission.close()
