"""Consume the random numbers of an initialisation without materialising its tensor.

A part built alone (``models/parts.py``) must end up with exactly the weights its modules
have in the whole model, so the modules it does not hold, built on the ``meta`` device,
must still advance the CPU generator exactly as their real initialisation would. Doing
that by initialising a throw-away tensor of the same size would allocate every module of
the model in turn; here the draws go through one small reusable buffer instead.

Why chunks are exact (checked bit for bit by tests/test_parts.py on every part):
``uniform_`` on a contiguous float32 CPU tensor takes one draw per element, whatever the
chunking; ``normal_`` fills the tensor with uniform draws and turns them into normals in
blocks of 16 (Box-Muller), redrawing the last 16 for a size that is not a multiple of 16.
So chunks whose sizes are multiples of 16, with the short tail folded into the last one,
take the same draws as one call on the whole tensor.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["replay_construction", "replay_draws"]

CHUNK = 1 << 16  # elements per draw; a multiple of 16 (normal_'s block)
_buffer: torch.Tensor | None = None


def replay_draws(kind: str, numel: int, dtype: torch.dtype = torch.float32) -> None:
    """Advance the CPU generator as ``kind_`` (uniform | normal) on ``numel`` contiguous elements would."""
    global _buffer
    if kind not in ("uniform", "normal"):
        raise ValueError(f"kind must be uniform|normal, got {kind!r}")
    if dtype != torch.float32:
        raise ValueError(f"replay is exact for float32 parameters only, got {dtype}")
    if _buffer is None:
        _buffer = torch.empty(CHUNK + 16)
    start = 0
    while start < numel:
        size = numel - start if numel - start < CHUNK + 16 else CHUNK  # last chunk: >= 16 unless numel < 16
        view = _buffer[:size]
        view.uniform_() if kind == "uniform" else view.normal_()
        start += size


def replay_construction(module: nn.Module) -> None:
    """The draws of ``module``'s construction (default ``reset_parameters`` of its layers), in order."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            replay_draws("uniform", m.weight.numel())  # kaiming_uniform_
            if m.bias is not None:
                replay_draws("uniform", m.bias.numel())
        elif isinstance(m, nn.Embedding):
            replay_draws("normal", m.weight.numel())
        elif any(True for _ in m.parameters(recurse=False)) and not isinstance(m, nn.LayerNorm):
            raise TypeError(f"no known initialisation to replay for {type(m).__name__}")

