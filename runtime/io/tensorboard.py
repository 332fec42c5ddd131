"""TensorBoard event files beside ``metrics.jsonl`` (optional: only when ``tensorboard`` is installed).

Every record the run writes to ``metrics.jsonl`` is mirrored as scalars, keyed by the
client's own step: ``loss/client<k>``, ``lr/client<k>``, ``tokens_per_s/client<k>``,
``phase_s/<phase>/client<k>``, ``cut_bytes/{up,down}/client<k>``,
``aggregation/{up,down}_bytes/client<k>``, ``eval/val_loss`` and, with ``--eval.at_end``,
``eval/BLEU`` ... ``eval/CIDEr``; ``val/loss`` during training (``eval.every``); a classifier's
``test/{accuracy,macro_f1,loss}`` during training (``eval.every``) and
``eval/{accuracy,macro_f1,loss}`` at the end. ``tensorboard --logdir runs`` then shows every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["open_mirror"]


class _Mirror:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def add(self, rec: dict[str, Any]) -> None:
        kind, who, step = rec.get("kind"), f"client{rec.get('client', 0)}", int(rec.get("step", 0))
        scalars: dict[str, float] = {}
        if kind == "step":
            scalars = {f"loss/{who}": rec.get("loss"), f"lr/{who}": rec.get("lr"),
                       f"tokens_per_s/{who}": rec.get("tokens_per_s"), f"step_s/{who}": rec.get("step_time"),
                       f"cut_bytes/up/{who}": rec.get("bytes_up"), f"cut_bytes/down/{who}": rec.get("bytes_down")}
            scalars.update({f"phase_s/{k}/{who}": v for k, v in rec.get("time", {}).items()})
        elif kind == "aggregate":
            scalars = {f"aggregation/up_bytes/{who}": rec.get("up_bytes"),
                       f"aggregation/down_bytes/{who}": rec.get("down_bytes"), f"aggregation/s/{who}": rec.get("time")}
        elif kind == "eval":
            scalars = {"eval/val_loss": rec.get("val_loss")}
        elif kind == "val":  # a language model's validation loss during training (eval.every)
            scalars = {"val/loss": rec.get("val_loss")}
        elif kind == "test":  # a classifier's test scores during training (eval.every)
            scalars = {f"test/{k}": rec.get(k) for k in ("accuracy", "macro_f1", "loss")}
        elif kind == "scores":  # E2E metrics of --eval.at_end; a classifier's test scores at the end
            scalars = {f"eval/{k}": v for k, v in rec.get("scores", {}).items()}
        for tag, value in scalars.items():
            if isinstance(value, int | float):
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


def open_mirror(log_dir: Path, enabled: bool = True) -> _Mirror | None:
    """A TensorBoard writer for ``log_dir``, or None when disabled or tensorboard is absent."""
    if not enabled:
        return None
    try:
        return _Mirror(log_dir)
    except ImportError:  # torch.utils.tensorboard needs the tensorboard package
        return None
