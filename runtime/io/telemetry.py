"""Timers, byte accounting and the metrics.jsonl writer.

Phase times come from timers inside the runtime, never from estimates. Where a phase
happens inside the distributed backward (server backward, gradient down the cut), an
identity autograd function stamps the moment the gradient passes a point.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import torch


def now() -> float:
    return time.perf_counter()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so a host timer measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GradStamp(torch.autograd.Function):
    """Identity in forward; records ``perf_counter()`` when the gradient flows back through it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, box: list) -> torch.Tensor:  # noqa: D102
        ctx.box = box
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        ctx.box.append(now())
        return grad, None


def stamp(x: torch.Tensor, box: list) -> torch.Tensor:
    return GradStamp.apply(x, box)


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Payload bytes of tensors (what crosses the wire, excluding framing)."""
    return sum(t.numel() * t.element_size() for t in tensors)


class MetricsWriter:
    """Appends one JSON object per line; thread-safe (RPC handlers log concurrently)."""

    def __init__(self, path: Path, tensorboard: bool = True) -> None:
        from runtime.io.tensorboard import open_mirror

        self.path = path
        self._lock = threading.Lock()
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = open_mirror(path.parent, tensorboard)  # event files beside metrics.jsonl, if installed

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()
            if self._tb is not None:
                self._tb.add(record)

    def close(self) -> None:
        with self._lock:
            self._fh.close()
            if self._tb is not None:
                self._tb.close()


def summarize(values: list[float]) -> dict[str, float]:
    """Median and p90 of a list (empty → zeros)."""
    if not values:
        return {"median": 0.0, "p90": 0.0, "mean": 0.0}
    s = sorted(values)
    return {"median": s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2]),
            "p90": s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))],
            "mean": sum(s) / len(s)}


def peak_memory(device: torch.device, part: torch.nn.Module | None = None) -> dict[str, float]:
    """Peak resident memory of this process so far (MiB), peak CUDA allocation when on GPU, and
    (with ``part``) the bytes of the model part this process holds (parameters + buffers)."""
    import resource

    out = {"cpu_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}  # Linux: KiB
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if part is not None:
        tensors = {id(t): t for t in (*part.parameters(), *part.buffers())}.values()  # a tied weight once
        out["part_params"] = sum(t.numel() for t in part.parameters())
        out["part_mib"] = sum(t.numel() * t.element_size() for t in tensors) / 2**20
    return out
