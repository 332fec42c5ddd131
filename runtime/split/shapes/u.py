"""The U shape (split.shape=u): the client holds the embeddings, blocks ``0..cut-1`` and the
back end (blocks ``head_cut..``, the output end and the loss); the server the middle blocks
``cut..head_cut-1``. Only hidden states cross: no token id and no label reaches the server.

Up: the front's activations (B, T, C) and, in the backward, the gradient at the back end's
input; down: the middle's output and the gradient at the front's output. An encoder's
middle blocks also get the padding mask (B, T) float: their attention sees every position.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed.autograd as dist_autograd
import torch.distributed.rpc as rpc

from models.loss import model_loss
from models.split_u import UBack, UFront
from runtime.io.telemetry import now, stamp, sync, tensor_bytes
from runtime.split import inference
from runtime.split import server as split_server
from runtime.split.cut import CutCodec, decode
from runtime.split.shapes.base import SplitShape, backward_and_update, register_shape


@register_shape
class U(SplitShape):
    name: ClassVar[str] = "u"
    split_inference = True
    server_holds_head = False
    uses_head_cut = True
    gated_upload = 0.5  # the gradient at the back end's input goes up while the server waits

    def server_blocks(self, n_layer: int, cut: int, head_cut: int = 0) -> range:
        return range(cut, head_cut or n_layer)

    def problems(self, n_layer: int, cut: int, head_cut: int, client_cuts: bool) -> list[str]:
        out = super().problems(n_layer, cut, head_cut, client_cuts)
        if not cut < (head_cut or n_layer) <= n_layer:
            out.append(f"split.head_cut must be in [{cut + 1}, {n_layer}] (0 = {n_layer}): the server holds "
                       f"blocks cut..head_cut-1, at least one; got {head_cut}")
        return out

    def client_step(self, stepper: Any, rank: int, batch: dict[str, torch.Tensor], codec: CutCodec,
                    cut: int, head_cut: int) -> dict[str, Any]:
        """Front -> server middle -> back end + loss here. ``cut_up`` / ``cut_down`` are the forward /
        backward round trips to the server less its compute (each crossing twice in this shape)."""
        ids, targets, mask = (batch[k].to(stepper.device) for k in ("input_ids", "targets", "loss_mask"))
        t0 = now()
        with dist_autograd.context() as ctx:
            front_marks: list[float] = []
            h = stepper.module(ids, stop_block=cut)  # (B, T, C) activations at the first cut
            h = stamp(h, front_marks)  # front_marks[-1]: the gradient is back from the server
            send = codec.encode(h)
            sync(stepper.device)
            t1 = now()
            real = (batch["loss_mask"],) if getattr(stepper.module, "is_classifier", False) else ()
            mid = rpc.rpc_sync(stepper.server, split_server.server_forward_hidden, args=(rank, send, *real))
            t2 = now()
            back_marks: list[float] = []
            x = stamp(decode(mid, stepper.device), back_marks)  # back_marks[-1]: grad leaves for the server
            loss = model_loss(stepper.module, x, targets, mask, stepper.label_smoothing, from_hidden=True,
                              first_block=head_cut)
            sync(stepper.device)
            t3 = now()
            t4, server_times, t5, t6 = backward_and_update(stepper, rank, ctx, loss)
        sent_up = back_marks[-1] if back_marks else t3
        back = front_marks[-1] if front_marks else t4
        times = {
            "client_fwd": (t1 - t0) + (t3 - t2),
            "server_wait": server_times.server_wait,
            "cut_up": max(0.0, (t2 - t1) - server_times.server_wait - server_times.server_fwd),
            "server_fwd": server_times.server_fwd,
            "server_bwd": server_times.server_bwd,
            "cut_down": max(0.0, (back - sent_up) - server_times.server_bwd),
            "client_bwd": (sent_up - t3) + (t4 - back),
            "server_opt": t5 - t4,
            "client_opt": t6 - t5,
        }
        # Up: the front's activations + the gradient at the back end's input (mid's shape and
        # dtype); down: mid + the gradient at the front's output (send's). No integer tensor.
        return {"loss": float(loss.item()), "time": times, "step_time": t6 - t0,
                "server_opt_compute": server_times.server_opt,
                "bytes_up": tensor_bytes(send, mid, *real), "bytes_down": tensor_bytes(mid, send),
                "activation_bytes": tensor_bytes(send)}

    def eval_forward(self, part: torch.nn.Module, server: str, rank: int, batch: dict[str, torch.Tensor],
                     codec: CutCodec, cut: int, head_cut: int) -> torch.Tensor:
        device = next(part.parameters()).device
        ids, targets, mask = (batch[k].to(device) for k in ("input_ids", "targets", "loss_mask"))
        classifier = getattr(part, "is_classifier", False)
        send = codec.encode(part(ids, stop_block=cut))  # (B, T, C) the front's output
        real = (batch["loss_mask"],) if classifier else ()
        x = decode(rpc.rpc_sync(server, inference.server_eval_output, args=(rank, send, *real)), device)
        if classifier:
            return part(x, attn_mask=mask > 0, from_hidden=True, first_block=head_cut)  # (B, labels)
        return model_loss(part, x, targets, mask, 0.0, from_hidden=True, first_block=head_cut)

    def decode_stages(self, part: torch.nn.Module, remote: Any, cut: int, head_cut: int) -> list[Any]:
        return [UFront(part, cut), remote, UBack(part, head_cut)]
