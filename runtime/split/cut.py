"""The cut's codec: how a tensor is put on the wire between a client and the server, and how
the receiving side takes it off.

One place for both sides, so a future compression or noise scheme is one change here.
Today: a differentiable dtype cast (``split.cut_dtype``; gradients come back in that dtype)
and, for CUDA tensors with ``runtime.cuda_cut=host``, staging through host memory (CUDA RPC
is not compatible with distributed autograd). Receivers compute in fp32 on their device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CUT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class CutCodec:
    dtype: str = "fp32"  # a key of CUT_DTYPES
    via_host: bool = False  # stage CUDA tensors through host memory

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` (B, T, C) as it crosses the cut (autograd flows through the cast)."""
        send = h.to(CUT_DTYPES[self.dtype])
        return send.cpu() if self.via_host and send.is_cuda else send


def decode(received: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A received cut tensor as its receiver computes with it: fp32 on ``device`` (differentiable)."""
    return received.to(device, dtype=torch.float32)


def reply_like(out: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
    """A server's answer in the dtype and on the device the request came in (differentiable)."""
    return out.to(received.device, dtype=received.dtype)
