"""Client-side aggregation over the client-only process group.

The maths is a plain function of tensors; the collective is one ``all_reduce`` of a
single flat buffer (one call instead of one per tensor). With an NCCL client group the
buffer stays on the GPU; with gloo (CPU runs, or clients sharing a GPU, which NCCL
refuses) it is reduced in host memory. The server is not a member of the group and
never sees client adapters.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def client_weights(counts: list[int], weighting: str = "samples") -> list[float]:
    """FedAvg weights w_k: |D_k| / sum |D| (``samples``) or 1/K (``uniform``)."""
    if not counts:
        raise ValueError("no clients to weight")
    if weighting == "uniform":
        return [1.0 / len(counts)] * len(counts)
    total = sum(counts)
    if total <= 0:
        raise ValueError(f"sample counts must sum to > 0, got {counts}")
    return [c / total for c in counts]


def on_backend_device(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``tensor`` where the group's backend reduces it: host memory for gloo, as it is for NCCL."""
    return tensor.cpu() if tensor.is_cuda and dist.get_backend(group) == "gloo" else tensor
