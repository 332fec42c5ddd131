"""The vanilla split (SplitLoRA, arXiv 2407.00952): the client holds the embeddings and blocks
``0..cut-1``; the server the rest, the output end and the loss, so it receives the targets.

Up: activations (B, T, C) in the cut's dtype, targets (B, T) and the loss mask (B, T);
down: the loss, then the activations' gradient (B, T, C).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed.autograd as dist_autograd
import torch.distributed.rpc as rpc

from runtime.io.telemetry import now, stamp, sync, tensor_bytes
from runtime.split import inference
from runtime.split import server as split_server
from runtime.split.cut import CutCodec
from runtime.split.shapes.base import SplitShape, backward_and_update, register_shape


@register_shape
class Vanilla(SplitShape):
    name: ClassVar[str] = "vanilla"
    split_inference = True
    server_holds_head = True
    batched_serving = True
    per_client_cuts = True

    def client_step(self, stepper: Any, rank: int, batch: dict[str, torch.Tensor], codec: CutCodec,
                    cut: int, head_cut: int) -> dict[str, Any]:
        ids, targets, mask = (batch[k] for k in ("input_ids", "targets", "loss_mask"))
        t0 = now()
        with dist_autograd.context() as ctx:
            marks: list[float] = []
            h = stepper.module(ids.to(stepper.device))  # (B, T, C) activations at the cut
            h = stamp(h, marks)  # marks[-1]: the gradient is back across the cut
            send = codec.encode(h)
            sync(stepper.device)
            t1 = now()
            loss = rpc.rpc_sync(stepper.server, split_server.server_forward,
                                args=(rank, send, targets, mask, stepper.update_server))
            t2 = now()
            t3, server_times, t4, t5 = backward_and_update(stepper, rank, ctx, loss)
        back = marks[-1] if marks else t3
        # Sequential: the server's backward runs inside the client's distributed backward;
        # batched: its forward, backward and update all run before the loss comes back.
        batched = server_times.batched
        before_reply = server_times.server_fwd + (server_times.server_bwd + server_times.server_opt
                                                      if batched else 0.0)
        times = {
            "client_fwd": t1 - t0,
            "server_wait": server_times.server_wait,
            "cut_up": max(0.0, (t2 - t1) - server_times.server_wait - before_reply),
            "server_fwd": server_times.server_fwd,
            "server_bwd": server_times.server_bwd,
            "cut_down": max(0.0, (back - t2) - (0.0 if batched else server_times.server_bwd)),
            "client_bwd": t3 - back,
            "server_opt": t4 - t3,  # the server_step round trip (incl. the server's own optimizer)
            "client_opt": t5 - t4,
        }
        # Up: activations + targets + mask; down: the activation gradient (same dtype/shape as `send`).
        return {"loss": float(loss.item()), "time": times, "step_time": t5 - t0,
                "server_opt_compute": server_times.server_opt,  # inside server_opt: not a phase of its own
                "bytes_up": tensor_bytes(send, targets, mask), "bytes_down": tensor_bytes(send),
                "activation_bytes": tensor_bytes(send)}

    def eval_forward(self, part: torch.nn.Module, server: str, rank: int, batch: dict[str, torch.Tensor],
                     codec: CutCodec, cut: int, head_cut: int) -> torch.Tensor:
        ids = batch["input_ids"].to(next(part.parameters()).device)
        send = codec.encode(part(ids))  # (B, T, C)
        if getattr(part, "is_classifier", False):  # the server's head: logits (B, labels)
            return rpc.rpc_sync(server, inference.server_eval_output, args=(rank, send, batch["loss_mask"]))
        return rpc.rpc_sync(server, inference.server_eval_loss,
                            args=(rank, send, batch["targets"], batch["loss_mask"]))

    def decode_stages(self, part: torch.nn.Module, remote: Any, cut: int, head_cut: int) -> list[Any]:
        return [part, remote]  # the server's stage ends in the head: it selects the candidates
