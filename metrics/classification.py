"""Classification scores: accuracy and macro-F1 (the mean of per-class F1 scores).

Macro-F1 averages over the classes that occur in the references or the predictions (as
scikit-learn's ``f1_score(average="macro")`` does); a class with no true and no predicted
example does not count. A class with precision + recall = 0 has F1 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["classification_scores"]


def classification_scores(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """{"accuracy", "macro_f1", "n"} of integer predictions against integer references."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and of one length, got {t.shape} and {p.shape}")
    if t.size == 0:
        raise ValueError("no examples to score")
    classes = np.union1d(t, p)
    tp = np.array([np.sum((t == c) & (p == c)) for c in classes], dtype=np.float64)
    pred = np.array([np.sum(p == c) for c in classes], dtype=np.float64)
    true = np.array([np.sum(t == c) for c in classes], dtype=np.float64)
    denom = pred + true  # F1 = 2 tp / (predicted + true)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"accuracy": float(np.mean(t == p)), "macro_f1": float(f1.mean()), "n": int(t.size)}
