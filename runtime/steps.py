"""One training step, per method, with its phase timings.

``local_step`` is a whole model in one process (CenLoRA, FedLoRA clients);
``split_step`` is the client side of SplitLoRA: forward to the cut, RPC to the
server, distributed backward, then both optimizers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed.autograd as dist_autograd
import torch.distributed.rpc as rpc

from models.loss import model_loss
from runtime import split_server
from runtime.dist import SERVER
from runtime.optim import apply_gradients
from runtime.telemetry import now, stamp, sync, tensor_bytes

CUT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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

    def _apply(self) -> None:
        apply_gradients(self.opt, self.sched, self.params, grad_clip=self.grad_clip, before=self.before_step,
                        after=self.after_step)

    @staticmethod
    def _to_cut(h: torch.Tensor, cut_dtype: str, via_host: bool) -> torch.Tensor:
        """What crosses the cut: a differentiable cast (gradients come back in this dtype),
        staged through host memory for CUDA (CUDA RPC is not compatible with dist autograd)."""
        send = h.to(CUT_DTYPES[cut_dtype])
        return send.cpu() if via_host and send.is_cuda else send

    def _server_step(self, rank: int, ctx: int) -> dict[str, float]:
        """The server applies this context's gradients; this client collects its own."""
        server_times = rpc.rpc_sync(SERVER, split_server.server_step, args=(rank, ctx, self.update_server))
        grads = dist_autograd.get_gradients(ctx)
        # Parameters a strategy froze for this round (requires_grad False) get no gradient.
        for p in self.params:
            p.grad = grads.get(p)
        return server_times

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
        self._apply()
        sync(self.device)
        t3 = now()
        return {"loss": loss.item(), "time": {"fwd": t1 - t0, "bwd": t2 - t1, "opt": t3 - t2}}

    def split_step(self, rank: int, batch: dict[str, torch.Tensor], cut_dtype: str,
                   via_host: bool) -> dict[str, Any]:
        """Client side of one SplitLoRA step; returns the loss, phase times and cut bytes."""
        ids, targets, mask = (batch[k] for k in ("input_ids", "targets", "loss_mask"))
        t0 = now()
        with dist_autograd.context() as ctx:
            marks: list[float] = []
            h = self.module(ids.to(self.device))  # (B, T, C) activations at the cut
            h = stamp(h, marks)  # marks[-1]: the gradient is back across the cut
            send = self._to_cut(h, cut_dtype, via_host)
            sync(self.device)
            t1 = now()
            loss = rpc.rpc_sync(SERVER, split_server.server_forward,
                                args=(rank, send, targets, mask, self.update_server))
            t2 = now()
            dist_autograd.backward(ctx, [loss])
            sync(self.device)
            t3 = now()
            server_times = self._server_step(rank, ctx)
            t4 = now()
        self._apply()
        sync(self.device)
        t5 = now()
        back = marks[-1] if marks else t3
        # Sequential: the server's backward runs inside the client's distributed backward;
        # batched: its forward, backward and update all run before the loss comes back.
        batched = bool(server_times.get("batched"))
        before_reply = server_times["server_fwd"] + (server_times["server_bwd"] + server_times["server_opt"]
                                                      if batched else 0.0)
        times = {
            "client_fwd": t1 - t0,
            "server_wait": server_times["server_wait"],
            "cut_up": max(0.0, (t2 - t1) - server_times["server_wait"] - before_reply),
            "server_fwd": server_times["server_fwd"],
            "server_bwd": server_times["server_bwd"],
            "cut_down": max(0.0, (back - t2) - (0.0 if batched else server_times["server_bwd"])),
            "client_bwd": t3 - back,
            "server_opt": t4 - t3,  # the server_step round trip (incl. the server's own optimizer)
            "client_opt": t5 - t4,
        }
        # Up: activations + targets + mask; down: the activation gradient (same dtype/shape as `send`).
        up = tensor_bytes(send, targets, mask)
        down = tensor_bytes(send)
        return {"loss": float(loss.item()), "time": times, "step_time": t5 - t0,
                "server_opt_compute": server_times["server_opt"],  # inside server_opt: not a phase of its own
                "bytes_up": up, "bytes_down": down, "activation_bytes": tensor_bytes(send)}

    def split_step_u(self, rank: int, batch: dict[str, torch.Tensor], cut_dtype: str, via_host: bool,
                     cut: int, head_cut: int) -> dict[str, Any]:
        """Client side of one U-shaped step: front -> server middle -> back end + loss here.

        Only hidden states cross: up = the front's activations (B, T, C) and, in the backward,
        the gradient at the back end's input; down = the middle's output and the gradient at
        the front's output. ``cut_up`` / ``cut_down`` are the forward / backward round trips
        to the server less its compute (each crossing twice in this shape).
        """
        ids, targets, mask = (batch[k].to(self.device) for k in ("input_ids", "targets", "loss_mask"))
        t0 = now()
        with dist_autograd.context() as ctx:
            front_marks: list[float] = []
            h = self.module(ids, stop_block=cut)  # (B, T, C) activations at the first cut
            h = stamp(h, front_marks)  # front_marks[-1]: the gradient is back from the server
            send = self._to_cut(h, cut_dtype, via_host)
            sync(self.device)
            t1 = now()
            # An encoder's middle blocks need the padding mask (B, T) float: its attention sees every position.
            real = (batch["loss_mask"],) if getattr(self.module, "is_classifier", False) else ()
            mid = rpc.rpc_sync(SERVER, split_server.server_forward_hidden, args=(rank, send, *real))  # (B, T, C)
            t2 = now()
            back_marks: list[float] = []
            x = stamp(mid.to(self.device, dtype=torch.float32), back_marks)  # back_marks[-1]: grad leaves for server
            loss = model_loss(self.module, x, targets, mask, self.label_smoothing, from_hidden=True,
                              first_block=head_cut)
            sync(self.device)
            t3 = now()
            dist_autograd.backward(ctx, [loss])
            sync(self.device)
            t4 = now()
            server_times = self._server_step(rank, ctx)
            t5 = now()
        self._apply()
        sync(self.device)
        t6 = now()
        sent_up = back_marks[-1] if back_marks else t3
        back = front_marks[-1] if front_marks else t4
        times = {
            "client_fwd": (t1 - t0) + (t3 - t2),
            "server_wait": server_times["server_wait"],
            "cut_up": max(0.0, (t2 - t1) - server_times["server_wait"] - server_times["server_fwd"]),
            "server_fwd": server_times["server_fwd"],
            "server_bwd": server_times["server_bwd"],
            "cut_down": max(0.0, (back - sent_up) - server_times["server_bwd"]),
            "client_bwd": (sent_up - t3) + (t4 - back),
            "server_opt": t5 - t4,
            "client_opt": t6 - t5,
        }
        # Up: the front's activations + the gradient at the back end's input (mid's shape and
        # dtype); down: mid + the gradient at the front's output (send's). No integer tensor.
        return {"loss": float(loss.item()), "time": times, "step_time": t6 - t0,
                "server_opt_compute": server_times["server_opt"],
                "bytes_up": tensor_bytes(send, mid, *real), "bytes_down": tensor_bytes(mid, send),
                "activation_bytes": tensor_bytes(send)}
