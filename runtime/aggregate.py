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


def weighted_mean(tensor_sets: list[list[torch.Tensor]], weights: list[float]) -> list[torch.Tensor]:
    """Reference (single-process) weighted mean: out[i] = sum_k w_k · tensor_sets[k][i]."""
    out = [torch.zeros_like(t) for t in tensor_sets[0]]
    for w, tensors in zip(weights, tensor_sets):
        for o, t in zip(out, tensors):
            o.add_(t, alpha=w)
    return out


def on_backend_device(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """``tensor`` where the group's backend reduces it: host memory for gloo, as it is for NCCL."""
    return tensor.cpu() if tensor.is_cuda and dist.get_backend(group) == "gloo" else tensor


@torch.no_grad()
def allreduce_weighted_mean(tensors: list[torch.Tensor], weight: float, group: dist.ProcessGroup | None) -> int:
    """Replace every tensor by the weighted mean over the group, in place.

    Each member scales its flat buffer by its own w_k and the group sums: the result is
    sum_k w_k x_k on every member (weights must sum to 1 over the group). Returns the
    payload bytes this member contributed (its flat buffer).
    """
    if not tensors:
        return 0
    flat = on_backend_device(torch.cat([t.detach().reshape(-1).float() for t in tensors]) * weight, group)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t).to(t.dtype))
        offset += n
    return flat.numel() * tensors[0].element_size()
