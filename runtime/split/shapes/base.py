"""A split shape: which pieces each party holds, what crosses the cut, and the client's step.

Shapes are registered by name (``split.shape``), as strategies are. A shape is stateless:
every method takes the model depth and the cuts. A new shape is one module that subclasses
``SplitShape`` and decorates it with ``@register_shape`` (``runtime/split/shapes/vanilla.py`` and
``runtime/split/shapes/u.py`` are the two that ship); nothing else compares shape names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.distributed.autograd as dist_autograd
import torch.distributed.rpc as rpc

from models.parts import ENDS, ROLES
from runtime.io.telemetry import now, sync
from runtime.split import server as split_server
from runtime.split.cut import CutCodec
from runtime.split.serving import ServerTimings

SHAPES: dict[str, type[SplitShape]] = {}
DEFAULT_SHAPE = "vanilla"


def register_shape(cls: type[SplitShape]) -> type[SplitShape]:
    SHAPES[cls.name] = cls
    return cls


def get_shape(name: str) -> SplitShape:
    if name not in SHAPES:
        names = sorted(SHAPES, key=lambda n: (n != DEFAULT_SHAPE, n))
        raise ValueError(f"split.shape must be {'|'.join(names)}, got {name!r}")
    return SHAPES[name]()


def blocks(indices: Iterable[int]) -> set[str]:
    return {f"transformer.h.{i}" for i in indices}


class SplitShape:
    name: ClassVar[str]
    server_holds_head: ClassVar[bool] = True  # the model's output end (GPT-2: ln_f + LM head) is the server's
    batched_serving: ClassVar[bool] = False  # runtime/split/batching.py can serve it
    per_client_cuts: ClassVar[bool] = False  # split.client_cuts is implemented for it
    uses_head_cut: ClassVar[bool] = False  # split.head_cut applies
    # eval_forward and decode_stages are implemented: validation and decoding run through the split
    # (else the first client evaluates the assembled whole model)
    split_inference: ClassVar[bool] = False
    # Latency model (launch/bench/netsim.py): the share of a step's upload sent while the server waits
    # for it (the rest overlaps the client's own compute).
    gated_upload: ClassVar[float] = 0.0

    # -- geometry ----------------------------------------------------------------------
    def server_blocks(self, n_layer: int, cut: int, head_cut: int = 0) -> range:
        """The blocks the server holds for a client with this ``cut`` (``head_cut`` 0 = n_layer)."""
        return range(cut, n_layer)

    def pieces(self, role: str, n_layer: int, cut: int = 0, head_cut: int = 0, arch: str = "gpt2") -> set[str]:
        """The pieces ``role`` (whole | client | server) holds (names as in ``models/parts.py``)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if arch not in ENDS:
            raise ValueError(f"arch must be one of {sorted(ENDS)}, got {arch!r}")
        embeddings, ends = ENDS[arch]
        if role == "whole":
            return embeddings | blocks(range(n_layer)) | ends
        served = self.server_blocks(n_layer, cut, head_cut)
        if role == "server":
            return blocks(served) | (ends if self.server_holds_head else set())
        own = blocks(i for i in range(n_layer) if i not in served)
        return embeddings | own | (set() if self.server_holds_head else ends)

    def problems(self, n_layer: int, cut: int, head_cut: int, client_cuts: bool) -> list[str]:
        """What is wrong with these cuts for an ``n_layer``-block model (beyond split.cut's own range)."""
        out = []
        if client_cuts and not self.per_client_cuts:
            out.append(f"split.client_cuts (per-client cuts) is not implemented for split.shape={self.name}; "
                       "use one split.cut for every client")
        return out

    # -- the client's step -------------------------------------------------------------
    def client_step(self, stepper: Any, rank: int, batch: dict[str, torch.Tensor], codec: CutCodec,
                    cut: int, head_cut: int) -> dict[str, Any]:
        """One training step of client ``rank`` through the server (``runtime/steps.py`` ``Stepper``
        holds the part, optimizer and schedule). Returns the loss, phase times, step time and the
        bytes each way: ``{"loss", "time", "step_time", "server_opt_compute", "bytes_up", "bytes_down",
        "activation_bytes"}``."""
        raise NotImplementedError

    # -- inference through the split (runtime/split/inference.py) ----------------------
    def eval_forward(self, part: torch.nn.Module, server: str, rank: int, batch: dict[str, torch.Tensor],
                     codec: CutCodec, cut: int, head_cut: int) -> torch.Tensor:
        """The client step's forward without autograd or update (the caller holds inference mode):
        a language model's mean masked token loss, no label smoothing (a scalar); a classifier's
        logits (B, labels)."""
        raise NotImplementedError

    def decode_stages(self, part: torch.nn.Module, remote: Any, cut: int, head_cut: int) -> list[Any]:
        """The decoding chain (``models/decode_chain.py``) of a client holding ``part``, with the
        server's part as ``remote`` (a ``RemoteStage``)."""
        raise NotImplementedError


def backward_and_update(stepper: Any, rank: int, ctx: int,
                        loss: torch.Tensor) -> tuple[float, ServerTimings, float, float]:
    """The end of every split step: the distributed backward from ``loss``, the server's update of
    this context, then the client's own. Returns (backward end, the server's timings, server step
    end, client update end), times from ``now()``."""
    dist_autograd.backward(ctx, [loss])
    sync(stepper.device)
    t_bwd = now()
    server_times = server_step(stepper, rank, ctx)
    t_srv = now()
    stepper.apply()
    sync(stepper.device)
    return t_bwd, server_times, t_srv, now()


def server_step(stepper: Any, rank: int, ctx: int) -> ServerTimings:
    """The server applies this context's gradients; the client collects its own."""
    server_times = rpc.rpc_sync(stepper.server, split_server.server_step, args=(rank, ctx, stepper.update_server))
    grads = dist_autograd.get_gradients(ctx)
    # Parameters a strategy froze for this round (requires_grad False) get no gradient.
    for p in stepper.params:
        p.grad = grads.get(p)
    return server_times
