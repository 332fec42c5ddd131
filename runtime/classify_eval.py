"""Test-split scores of a classifier (``data.task=classify``): loss, accuracy, macro-F1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from metrics.classification import classification_scores


@torch.no_grad()
def classify_scores(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]],
                    device: torch.device) -> dict[str, float] | None:
    """Mean cross-entropy (no smoothing), accuracy and macro-F1 of ``model`` (a whole classifier)
    over ``batches`` (input_ids (B, T), targets (B,), loss_mask (B, T)); None without batches."""
    if not batches:
        return None
    was_training = model.training
    model.eval()
    preds, labels, loss_sum = [], [], 0.0
    for b in batches:
        logits = model(b["input_ids"].to(device), attn_mask=b["loss_mask"].to(device) > 0)  # (B, num_labels)
        y = b["targets"].to(device)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        preds.append(logits.argmax(-1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    y_true, y_pred = torch.cat(labels).tolist(), torch.cat(preds).tolist()
    return {"loss": loss_sum / len(y_true), **classification_scores(y_true, y_pred)}


def write_scores(run_dir: Path, scores: dict[str, Any], tensorboard: bool) -> None:
    """scores.json, a line on stderr, and the TensorBoard mirror's scores."""
    (run_dir / "scores.json").write_text(json.dumps({"task": "classify", "split": "test", "scores": scores},
                                                    indent=2) + "\n")
    print(f"splitlora: test: accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}, loss "
          f"{scores['loss']:.4f} ({scores['n']} examples)", file=sys.stderr, flush=True)
    from runtime.io.tensorboard import open_mirror

    mirror = open_mirror(run_dir, tensorboard)
    if mirror is not None:
        mirror.add({"kind": "scores", "scores": {k: v for k, v in scores.items() if k != "n"}})
        mirror.close()
