"""Masked language-model loss with label smoothing."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["lm_loss", "model_loss"]


def lm_loss(logits: Tensor, targets: Tensor, loss_mask: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean per-token loss over the masked tokens of the whole batch.

    Per token: ``(1 - eps) * NLL + eps * mean over V of (-log p)``, with eps =
    ``label_smoothing``; tokens are weighted by ``loss_mask`` and the sum is divided by
    the number of masked tokens in the batch (not per sequence). Computed in fp32.

    logits (B, T, V); targets (B, T) long; loss_mask (B, T), 1 where the loss counts.
    Returns a scalar; 0 (with a zero gradient) when the mask is empty.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if logits.dim() != 3 or targets.shape != logits.shape[:2] or loss_mask.shape != targets.shape:
        raise ValueError(
            f"expected logits (B, T, V), targets and loss_mask (B, T); got {tuple(logits.shape)}, "
            f"{tuple(targets.shape)}, {tuple(loss_mask.shape)}"
        )
    V = logits.shape[-1]
    # cross_entropy's label smoothing is exactly (1 - eps) * NLL + eps / V * sum(-log p).
    per_token = F.cross_entropy(
        logits.float().reshape(-1, V), targets.reshape(-1), reduction="none", label_smoothing=label_smoothing
    )  # (B * T,)
    mask = loss_mask.reshape(-1).float()
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def model_loss(model: nn.Module, x: Tensor, targets: Tensor, loss_mask: Tensor, label_smoothing: float = 0.0,
               **forward_kwargs: object) -> Tensor:
    """Run ``model`` (a part that owns ``lm_head``) and return :func:`lm_loss`'s value.

    Logits are computed only at positions where ``loss_mask`` is non-zero (``select``),
    which gives the same loss as :func:`lm_loss` on full logits at about half the cost
    of the LM head. x: token ids (B, T) or hidden states (B, T, C).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    select = loss_mask > 0  # (B, T)
    logits = model(x, select=select, **forward_kwargs)  # (N, V)
    per_token = F.cross_entropy(logits.float(), targets[select], reduction="none",
                                label_smoothing=label_smoothing)  # (N,)
    weights = loss_mask[select].float()
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)
