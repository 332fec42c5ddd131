"""The SplitLoRA server: one shared server part, one server-owned optimizer.

Each client step is three calls into this module, all made by the client:

1. ``server_forward`` (rpc_sync, inside the client's distributed-autograd context):
   queues for the server (and, in ``round_robin`` order, for this client's turn) without
   holding an RPC thread (``runtime/server_queue.py``: the call returns a future, the
   admission thread runs the forward), runs blocks ``cut..``, ``ln_f``, ``lm_head`` and
   the loss, returns the loss.
   U shape (``split.shape=u``): ``server_forward_hidden`` runs the middle blocks only
   and returns their hidden states; the client finishes the forward and the loss.
2. the client's ``dist_autograd.backward`` runs the server part's backward here (in
   RPC threads) and brings d(loss)/d(activations) back across the cut.
3. ``server_step``: applies the gradients of that context with the one AdamW, steps
   the schedule and frees the server for the next client.

Why one client at a time (a gate held from forward to step) rather than concurrent
server forwards: another client's in-place optimizer step between a forward and its
backward either fails ("modified by an inplace operation") or silently uses stale
weights, and TorchScript-based ``DistributedOptimizer`` loses updates under concurrent
steps (both reproduced here on torch 2.13's RPC). The server's compute is the bottleneck anyway; the gate keeps
the math equal to the sequential SplitLoRA algorithm, and ``round_robin`` makes the
order — hence the result — reproducible. Clients still overlap their own forward,
backward and optimizer with the server serving others.

Batched serving (``Batching``; ``runtime/server_batching.py``) replaces the one-at-a-time
gate: a batch's forward, backward and update all run before its losses go back, so no
weight changes between a forward and its backward there either.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed.autograd as dist_autograd
import torch.distributed.rpc as rpc

from models.loss import model_loss
from runtime.cut import decode, reply_like
from runtime.optim import apply_gradients
from runtime.server_batching import BatchAdmission, BatchRunner, Work
from runtime.server_queue import Admission
from runtime.telemetry import now, stamp, sync

_SERVER: SplitServer | None = None

# Test hook: a file to which the server appends, per forward call, what it received from
# the client (dtype and shape of every tensor argument); the privacy tests read it.
RECORD_ENV = "SPLITLORA_RECORD_SERVER_INPUTS"


@dataclass
class Batching:
    """Batched serving's settings (``split.server_batching``; see runtime/server_batching.py)."""

    window_s: float = 0.02
    max_clients: int = 0  # 0 = no cap
    on_batch: Any = None  # callback(record) after every batch (the run's metrics.jsonl)


def _record(call: str, *tensors: torch.Tensor) -> None:
    path = os.environ.get(RECORD_ENV)
    if path:
        row = {"call": call, "tensors": [{"dtype": str(t.dtype), "shape": list(t.shape),
                                          "floating": t.is_floating_point()} for t in tensors]}
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


class SplitServer:
    def __init__(self, part: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, device: torch.device,
                 clients: list[int], order: str, label_smoothing: float, timeout: float,
                 on_step: Any = None, cuts: dict[int, int] | None = None,
                 batching: Batching | None = None) -> None:
        self.part = part
        self.opt = optimizer
        self.sched = scheduler
        self.device = device
        self.order = order
        self.label_smoothing = label_smoothing
        self.timeout = timeout
        self.on_step = on_step  # callback(client_rank, record) after every server step
        self.params = [p for p in part.parameters() if p.requires_grad]
        # Per-client cuts: the part holds blocks from the lowest cut on; client k's forward
        # starts at its own cut (blocks below it are that client's).
        self.cuts = cuts or {}
        self.batching = batching
        self.steps = 0  # server optimizer steps
        if batching is None:
            self.admission: Admission = Admission(list(clients), order, timeout)
        else:
            if len(set(self.cuts.values())) > 1:
                raise ValueError("batched serving needs one cut for every client")
            runner = BatchRunner(part, optimizer, scheduler, device, label_smoothing,
                                 first_block=next(iter(self.cuts.values()), 0))
            self.admission = BatchAdmission(list(clients), order, timeout, runner, window_s=batching.window_s,
                                            max_clients=batching.max_clients, on_batch=self._batch_done)
        self._pending: dict[int, dict[str, Any]] = {}  # per client: timings of the open step

    # -- the three calls --------------------------------------------------------------
    def forward(self, client: int, h: torch.Tensor, targets: torch.Tensor,
                loss_mask: torch.Tensor, update: bool = True) -> torch.futures.Future:
        """Vanilla shape: the server part's blocks, ``ln_f``, head and loss; a future of the loss.
        ``update`` False: a probe step (batched mode needs to know it before the batch runs)."""
        if self.batching is not None:
            return self.admission.submit_work(client, Work(h, targets, loss_mask, update))

        def run(x: torch.Tensor) -> torch.Tensor:
            return model_loss(self.part, x, targets.to(self.device), loss_mask.to(self.device),
                              self.label_smoothing, first_block=self.cuts.get(client, 0))

        return self._forward(client, h, run)

    def forward_hidden(self, client: int, h: torch.Tensor, real: torch.Tensor | None = None) -> torch.futures.Future:
        """U shape: the middle blocks only; a future of their hidden states (B, T, C) in the
        cut's dtype. No token ids or labels reach the server in this shape. ``real``: an
        encoder's padding mask (B, T) float, 1 on real tokens (its attention is not causal)."""
        if self.batching is not None:
            raise RuntimeError("batched serving supports split.shape=vanilla only")
        extra = {} if real is None else {"attn_mask": real.to(self.device) > 0}
        return self._forward(client, h,
                             lambda x: reply_like(self.part(x, first_block=self.cuts.get(client, 0), **extra), h))

    def _forward(self, client: int, h: torch.Tensor, run: Any) -> torch.futures.Future:
        return self.admission.submit(client, lambda wait: self._forward_admitted(client, h, run, wait))

    def _forward_admitted(self, client: int, h: torch.Tensor, run: Any, wait: float) -> torch.Tensor:
        """Runs on the admission thread once ``client`` holds the server."""
        t0 = now()
        marks: list[float] = []
        x = decode(h, self.device)  # cut tensors may arrive in a compressed dtype or through host memory
        x = stamp(x, marks)  # marks[-1] = when the gradient has crossed the server part
        out = run(x)  # the loss (vanilla) or hidden states (u)
        end_marks: list[float] = []
        out = stamp(out, end_marks)  # end_marks[-1] = server backward starts
        sync(self.device)
        self._pending[client] = {"wait": wait, "server_fwd": now() - t0, "marks": marks, "end_marks": end_marks}
        return out.to(h.device)  # a loss (vanilla) or already reply_like(h) (u)

    def _batch_done(self, record: dict[str, Any]) -> None:
        if record["update"]:
            self.steps += 1
        if self.batching.on_batch is not None:
            self.batching.on_batch(record)

    def step(self, client: int, context_id: int, apply: bool = True) -> dict[str, float]:
        """Apply the gradients of ``context_id`` (``apply=False``: a client's probe step, discard them).
        Batched: the batch has already updated the server; only its timings are returned."""
        if self.batching is not None:
            timings = {**self.admission.timings.pop(client), "batched": 1.0}
            if self.on_step is not None and apply:
                self.on_step(client, timings)
            return timings
        try:
            pending = self._pending.pop(client)
            t0 = now()
            if apply:
                grads = dist_autograd.get_gradients(context_id)
                for p in self.params:
                    p.grad = grads.get(p)
                apply_gradients(self.opt, self.sched, self.params)
                sync(self.device)
                self.steps += 1
            marks, end_marks = pending["marks"], pending["end_marks"]
            bwd = (marks[-1] - end_marks[-1]) if marks and end_marks else 0.0
            timings = {"server_wait": pending["wait"], "server_fwd": pending["server_fwd"],
                       "server_bwd": bwd, "server_opt": now() - t0}
        finally:
            self.admission.leave(client)
        if self.on_step is not None and apply:
            self.on_step(client, timings)
        return timings

    def retire(self, client: int) -> None:
        """Take a client that has finished (or died) out of the rotation."""
        if self.admission.retire(client):  # it died holding the server: drop its open step
            self._pending.pop(client, None)
        if self.batching is not None:
            self.admission.timings.pop(client, None)

    def lora_state(self) -> dict[str, torch.Tensor]:
        from models.lora import lora_state_dict

        return {k: v.detach().cpu().clone() for k, v in lora_state_dict(self.part).items()}


# -- module-level RPC entry points (executed on the server) --------------------------


def install(server: SplitServer | None) -> None:
    global _SERVER
    if server is None and _SERVER is not None:
        _SERVER.admission.close()
    _SERVER = server


def _get() -> SplitServer:
    if _SERVER is None:
        raise RuntimeError("no SplitLoRA server is running on this worker")
    return _SERVER


@rpc.functions.async_execution
def server_forward(client: int, h: torch.Tensor, targets: torch.Tensor,
                   loss_mask: torch.Tensor, update: bool = True) -> torch.futures.Future:
    _record("server_forward", h, targets, loss_mask)
    return _get().forward(client, h, targets, loss_mask, update)


@rpc.functions.async_execution
def server_forward_hidden(client: int, h: torch.Tensor, real: torch.Tensor | None = None) -> torch.futures.Future:
    _record("server_forward_hidden", h, *([] if real is None else [real]))
    return _get().forward_hidden(client, h, real)


def server_step(client: int, context_id: int, apply: bool = True) -> dict[str, float]:
    return _get().step(client, context_id, apply)


def server_lora_state() -> dict[str, torch.Tensor]:
    return _get().lora_state()
