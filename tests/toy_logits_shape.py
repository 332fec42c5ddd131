"""A third split shape, registered from outside the runtime (the test of issue 31's registry):
the server keeps the output end but returns logits (B, T, V), so the loss and the labels stay
on the client. Run as ``python -m toy_logits_shape <launch.train args>`` (``tests/`` on the path).
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import torch
import torch.distributed.autograd as dist_autograd
import torch.distributed.rpc as rpc

from models.loss import lm_loss
from runtime.io.telemetry import now, tensor_bytes
from runtime.split import server as split_server
from runtime.split.cut import CutCodec, decode
from runtime.split.shapes.base import SplitShape, register_shape, server_step


@register_shape
class Logits(SplitShape):
    name: ClassVar[str] = "logits"
    server_holds_head = True  # the vanilla geometry; only what crosses the cut differs

    def client_step(self, stepper: Any, rank: int, batch: dict[str, torch.Tensor], codec: CutCodec,
                    cut: int, head_cut: int) -> dict[str, Any]:
        ids, targets, mask = (batch[k].to(stepper.device) for k in ("input_ids", "targets", "loss_mask"))
        t0 = now()
        with dist_autograd.context() as ctx:
            send = codec.encode(stepper.module(ids))  # (B, T, C)
            logits = rpc.rpc_sync(stepper.server, split_server.server_forward_hidden, args=(rank, send))  # (B, T, V)
            loss = lm_loss(decode(logits, stepper.device), targets, mask, stepper.label_smoothing)
            dist_autograd.backward(ctx, [loss])
            server_times = server_step(stepper, rank, ctx)
        stepper.apply()
        return {"loss": float(loss.item()), "time": {"server_fwd": server_times.server_fwd},
                "step_time": now() - t0, "server_opt_compute": server_times.server_opt,
                "bytes_up": tensor_bytes(send, logits), "bytes_down": tensor_bytes(logits, send),
                "activation_bytes": tensor_bytes(send)}


if __name__ == "__main__":
    from launch.train import main

    sys.exit(main())
