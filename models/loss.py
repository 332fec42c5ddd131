"""Masked language-model loss with label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["lm_loss", "model_loss", "model_loss_groups", "classifier_losses"]


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


def _weighted_token_losses(model: nn.Module, x: Tensor, targets: Tensor, loss_mask: Tensor,
                           label_smoothing: float, **forward_kwargs: object) -> tuple[Tensor, Tensor, Tensor]:
    """Per selected token (row-major): weighted label-smoothed loss (N,), its weight (N,), and
    the selection (B, T). Logits only where ``loss_mask`` is non-zero."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    select = loss_mask > 0  # (B, T)
    logits = model(x, select=select, **forward_kwargs)  # (N, V)
    per_token = F.cross_entropy(logits.float(), targets[select], reduction="none",
                                label_smoothing=label_smoothing)  # (N,)
    weights = loss_mask[select].float()
    return per_token * weights, weights, select


def model_loss(model: nn.Module, x: Tensor, targets: Tensor, loss_mask: Tensor, label_smoothing: float = 0.0,
               **forward_kwargs: object) -> Tensor:
    """Run ``model`` (a part that owns ``lm_head``) and return :func:`lm_loss`'s value.

    Logits are computed only at positions where ``loss_mask`` is non-zero (``select``),
    which gives the same loss as :func:`lm_loss` on full logits at about half the cost
    of the LM head. x: token ids (B, T) or hidden states (B, T, C).
    """
    if getattr(model, "is_classifier", False):
        return classifier_losses(model, x, targets, loss_mask, label_smoothing, **forward_kwargs).mean()
    weighted, weights, _ = _weighted_token_losses(model, x, targets, loss_mask, label_smoothing, **forward_kwargs)
    return weighted.sum() / weights.sum().clamp_min(1.0)


def classifier_losses(model: nn.Module, x: Tensor, labels: Tensor, real: Tensor, label_smoothing: float = 0.0,
                      **forward_kwargs: object) -> Tensor:
    """Per-example label-smoothed cross-entropy (B,) of a classifier part (``models/encoder.py``).

    x: token ids (B, T) or hidden states (B, T, C); labels (B,) long; real (B, T), non-zero on
    real tokens: the attention and pooling mask (a batch's ``loss_mask`` in this task).
    """
    if labels.dim() != 1 or real.shape != x.shape[:2] or labels.shape[0] != x.shape[0]:
        raise ValueError(f"expected labels (B,) and a mask (B, T) for inputs {tuple(x.shape)}; got "
                         f"{tuple(labels.shape)}, {tuple(real.shape)}")
    logits = model(x, attn_mask=real > 0, **forward_kwargs)  # (B, num_labels)
    return F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=label_smoothing)


def model_loss_groups(model: nn.Module, xs: list[Tensor], targets: list[Tensor], loss_masks: list[Tensor],
                      label_smoothing: float = 0.0, **forward_kwargs: object) -> tuple[Tensor, Tensor]:
    """One forward of ``model`` over several groups' batches at once; each group's loss parts.

    xs[k]: hidden states (B_k, T_k, C) (or token ids (B_k, T_k)); targets[k], loss_masks[k]
    (B_k, T_k). The groups are right-padded to the longest T and concatenated along the batch:
    with causal attention a padded position changes no real token's value, and the mask
    keeps it out of the loss. Returns ``(sums, counts)``, both (K,) fp32: group k's summed
    weighted per-token loss and its mask weight, so its own loss (as :func:`model_loss` on
    its batch alone) is ``sums[k] / counts[k].clamp_min(1)`` and the loss of the union as one
    batch is ``sums.sum() / counts.sum().clamp_min(1)``.
    """
    if not xs or not len(xs) == len(targets) == len(loss_masks):
        raise ValueError(f"need one targets and loss_mask per group; got {len(xs)}, {len(targets)}, {len(loss_masks)}")
    T = max(x.shape[1] for x in xs)
    pad = [T - x.shape[1] for x in xs]
    x = torch.cat([F.pad(x, (0, 0, 0, p) if x.dim() == 3 else (0, p)) for x, p in zip(xs, pad)])
    if getattr(model, "is_classifier", False):
        # Padded positions are masked out of attention and pooling; each example counts once.
        real = torch.cat([F.pad(m, (0, p)) for m, p in zip(loss_masks, pad)])  # (sum B_k, T)
        losses = classifier_losses(model, x, torch.cat(targets), real, label_smoothing, **forward_kwargs)
        parts = losses.split([t.shape[0] for t in targets])
        return torch.stack([p.sum() for p in parts]), torch.tensor([float(p.numel()) for p in parts],
                                                                   device=losses.device)
    tgt = torch.cat([F.pad(t, (0, p)) for t, p in zip(targets, pad)])  # padded targets are never selected
    mask = torch.cat([F.pad(m, (0, p)) for m, p in zip(loss_masks, pad)])  # (sum B_k, T)
    weighted, weights, select = _weighted_token_losses(model, x, tgt, mask, label_smoothing, **forward_kwargs)
    # Row-major selection: group k's tokens are one contiguous run of the selected vector.
    sizes = [int(s.sum()) for s in select.split([m.shape[0] for m in loss_masks])]
    sums = torch.stack([part.sum() for part in weighted.split(sizes)])
    counts = torch.stack([part.sum() for part in weights.split(sizes)])
    return sums, counts
