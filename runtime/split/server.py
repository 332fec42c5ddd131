"""The SplitLoRA server: one shared server part, one server-owned optimizer.

Each client step is three calls into this module, all made by the client:

1. ``server_forward`` (rpc_sync, inside the client's distributed-autograd context):
   queues for the server (and, in ``round_robin`` order, for this client's turn) without
   holding an RPC thread (``runtime/split/admission.py``: the call returns a future, the
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

Batched serving (``Batching``; ``runtime/split/batching.py``) replaces the one-at-a-time
gate: a batch's forward, backward and update all run before its losses go back, so no
weight changes between a forward and its backward there either. ``SplitServer`` only
dispatches to its serving mode (``runtime/split/serving.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed.rpc as rpc

from runtime.split.batching import BatchedServing
from runtime.split.serving import SequentialServing, ServerTimings, ServingMode

_SERVER: SplitServer | None = None

# Test hook: a file to which the server appends, per forward call, what it received from
# the client (dtype and shape of every tensor argument); the privacy tests read it.
RECORD_ENV = "SPLITLORA_RECORD_SERVER_INPUTS"


@dataclass
class Batching:
    """Batched serving's settings (``split.server_batching``; see runtime/split/batching.py)."""

    window_s: float = 0.02
    max_clients: int = 0  # 0 = no cap
    on_batch: Any = None  # callback(record) after every batch (the run's metrics.jsonl)


def _record(call: str, *tensors: torch.Tensor, names: list[str] | None = None) -> None:
    path = os.environ.get(RECORD_ENV)
    if path:
        row = {"call": call, "tensors": [{"dtype": str(t.dtype), "shape": list(t.shape),
                                          "floating": t.is_floating_point()} for t in tensors]}
        if names is not None:
            row["names"] = names
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


class SplitServer:
    """The server part, its optimizer and schedule, served by one ``ServingMode`` (runtime/split/serving.py)."""

    def __init__(self, part: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, device: torch.device,
                 clients: list[int], order: str, label_smoothing: float, timeout: float,
                 cuts: dict[int, int] | None = None, batching: Batching | None = None) -> None:
        self.part = part
        self.device = device
        self.decoding: Any = None  # split inference's sessions (runtime/split/inference.py), made on first use
        self.batching = batching  # also batches split inference's decoding steps
        self.opt = optimizer
        self.sched = scheduler
        # Per-client cuts: the part holds blocks from the lowest cut on; client k's forward
        # starts at its own cut (blocks below it are that client's).
        self.cuts = cuts or {}
        common = {"device": device, "clients": list(clients), "order": order, "label_smoothing": label_smoothing,
                  "timeout": timeout}
        if batching is None:
            self.mode: ServingMode = SequentialServing(part, optimizer, scheduler, **common)
        else:
            if len(set(self.cuts.values())) > 1:
                raise ValueError("batched serving needs one cut for every client")
            self.mode = BatchedServing(part, optimizer, scheduler, **common,
                                       first_block=next(iter(self.cuts.values()), 0), window_s=batching.window_s,
                                       max_clients=batching.max_clients, on_batch=batching.on_batch)

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """The part for work other than training (validation, decoding): no step open meanwhile."""
        return self.mode.admission.hold()

    @property
    def steps(self) -> int:
        """Server optimizer steps (one per client step sequentially, one per batch batched)."""
        return self.mode.updates

    @steps.setter
    def steps(self, value: int) -> None:  # restored from a checkpoint
        self.mode.updates = value

    def forward(self, client: int, h: torch.Tensor, targets: torch.Tensor,
                loss_mask: torch.Tensor, update: bool = True) -> torch.futures.Future:
        """Vanilla shape: the server part's blocks, output end and loss; a future of the loss.
        ``update`` False: a probe step (batched mode needs to know it before the batch runs)."""
        return self.mode.forward_loss(client, h, targets, loss_mask, update, self.cuts.get(client, 0))

    def forward_hidden(self, client: int, h: torch.Tensor, real: torch.Tensor | None = None) -> torch.futures.Future:
        """The server part's output only (U: the middle blocks' hidden states (B, T, C)), in the cut's
        dtype. ``real``: an encoder's padding mask (B, T) float, 1 on real tokens (its attention is
        not causal)."""
        mask = None if real is None else real > 0
        return self.mode.forward_hidden(client, h, self.cuts.get(client, 0), mask)

    def step(self, client: int, context_id: int, apply: bool = True) -> ServerTimings:
        """Apply the gradients of ``context_id`` (``apply=False``: a client's probe step, discard them)."""
        return self.mode.step(client, context_id, apply)

    def retire(self, client: int) -> None:
        """Take a client that has finished (or died) out of the rotation."""
        self.mode.retire(client)

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The server part's adapters, and its classification head when it trains one (model.train_head)."""
        from models.lora import lora_state_dict

        head = {f"head.{n}": p for n, p in self.part.head.named_parameters() if p.requires_grad} \
            if getattr(self.part, "head", None) is not None else {}
        return {k: v.detach().cpu().clone() for k, v in {**lora_state_dict(self.part), **head}.items()}


# -- module-level RPC entry points (executed on the server) --------------------------


def install(server: SplitServer | None) -> None:
    global _SERVER
    if server is None and _SERVER is not None:
        _SERVER.mode.close()
    _SERVER = server


def current() -> SplitServer | None:
    """The server this worker runs, if any."""
    return _SERVER


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


def server_step(client: int, context_id: int, apply: bool = True) -> ServerTimings:
    return _get().step(client, context_id, apply)


def server_lora_state() -> dict[str, torch.Tensor]:
    server = _get()
    with server.hold():  # during training (eval.every): between steps, never mid-update
        return server.lora_state()
