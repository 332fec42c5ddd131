"""What every role shares: evaluation at the end and during training, the run summary, the
fault-injection test hook."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.loss import model_loss
from runtime.build import (
    model_config,
)
from runtime.config import Config
from runtime.decode_share import DecodeShare
from runtime.inputs import RunPlan
from runtime.io.telemetry import now, summarize
from runtime.split.inference import SplitModel

LOG_FLUSH = 10  # client step records per rpc to the coordinator
FAULT_ENV = "SPLITLORA_INJECT_FAULT"  # test hook: "<raise|kill>:<rank>:<step>"


def maybe_inject_fault(rank: int, step: int) -> None:
    """Fault injection for the reliability tests: raise or SIGKILL this rank at a step."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    kind, r, s = spec.split(":")
    if int(r) == rank and int(s) == step:
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault on rank {rank} at step {step} ({FAULT_ENV}={spec})")


@torch.no_grad()
def eval_loss(model: torch.nn.Module | SplitModel, batches: list[dict[str, torch.Tensor]],
              device: torch.device) -> float | None:
    """Mean masked token NLL (no label smoothing) over the evaluation batches, of a whole model
    or through the split (``SplitModel``)."""
    if not batches:
        return None
    if isinstance(model, SplitModel):
        return _mean_loss(model.loss, batches)
    was_training = model.training
    model.eval()
    try:
        return _mean_loss(lambda b: model_loss(model, b["input_ids"].to(device), b["targets"].to(device),
                                               b["loss_mask"].to(device), 0.0).item(), batches)
    finally:
        model.train(was_training)


def _mean_loss(batch_loss: Callable[[dict[str, torch.Tensor]], float], batches: list[dict[str, torch.Tensor]]) -> float:
    total, count = 0.0, 0.0
    for b in batches:
        n = float(b["loss_mask"].sum())
        total += batch_loss(b) * n
        count += n
    return total / max(count, 1.0)


def final_eval(cfg: Config, model: torch.nn.Module | SplitModel, batches: list[dict[str, torch.Tensor]],
               run_dir: Path, device: torch.device,
               share: DecodeShare | None = None) -> tuple[float | None, dict | None]:
    """The trained model's validation loss and scores: a classifier's test loss, accuracy and
    macro-F1 (always); a language model's masked NLL and, with ``--eval.at_end``, its E2E scores.
    ``model``: the whole model, or a client's ``SplitModel`` (each party runs its own part).
    ``share``: the decoding is shared with other client ranks (``ShareOverGroup``)."""
    if getattr(model, "is_classifier", False):
        from runtime.classify_eval import classify_scores, write_scores

        scores = classify_scores(model.classifier() if isinstance(model, SplitModel) else model, batches, device)
        if scores is not None:
            write_scores(run_dir, scores, cfg.out.tensorboard)
        return (scores or {}).get("loss"), scores
    scores = evaluate_at_end(cfg, model, run_dir, device, share)  # first: the other shares decode meanwhile
    return eval_loss(model, batches, device), scores


def evaluate_at_end(cfg: Config, model: torch.nn.Module | SplitModel, run_dir: Path,
                    device: torch.device, share: DecodeShare | None = None) -> dict | None:
    """``--eval.at_end``: decode and score the trained model into the run directory;
    ``--eval.samples N``: print N greedy texts of validation MRs. ``share``: decode this rank's
    share of the MRs; only share 0 prints samples, scores and returns the scores."""
    if cfg.eval.samples and (share is None or share.scores):
        from runtime.evaluation import sample_texts

        samples = sample_texts(model.decodable() if isinstance(model, SplitModel) else model, cfg,
                               cfg.eval.samples, device)
        (run_dir / "samples.txt").write_text("".join(f"{s['mr']}\n  -> {s['text']}\n" for s in samples))
        print("splitlora: samples (greedy, validation MRs):", file=sys.stderr)
        for s in samples:
            print(f"  MR:   {s['mr']}\n  text: {s['text']}", file=sys.stderr)
        sys.stderr.flush()
    if not cfg.eval.at_end:
        return None
    from models.generate import DecodeConfig
    from runtime.evaluation import evaluate_model, format_scores

    e = cfg.eval
    decode = DecodeConfig(num_beams=e.num_beams, length_penalty=e.length_penalty,
                          no_repeat_ngram_size=e.no_repeat_ngram_size, max_new_tokens=e.max_new_tokens,
                          repeat_scope=e.repeat_scope)
    record = evaluate_model(decodable(model), cfg, run_dir, split=e.split, refs_style=e.refs_style,
                            decode=decode, batch_size=e.batch_size, max_mrs=e.max_mrs, meteor=e.meteor,
                            device=device, share=share, show_progress=share is None or share.scores)
    if record is None:  # another rank scores
        return None
    print(f"splitlora: eval: {format_scores(record)}", file=sys.stderr, flush=True)
    from runtime.io.tensorboard import open_mirror

    mirror = open_mirror(run_dir, cfg.out.tensorboard)
    if mirror is not None:
        mirror.add({"kind": "scores", "scores": record["scores"]})
        mirror.close()
    return record["scores"]


def decodable(model: torch.nn.Module | SplitModel) -> torch.nn.Module | list:
    """What decoding runs: a copy of the whole model (decoding merges its adapters), or the split's
    chain of stages (``runtime/split/inference.py``)."""
    if isinstance(model, SplitModel):
        return model.decodable()
    import copy

    return copy.deepcopy(model)


def eval_due(cfg: Config, step: int) -> bool:
    """``eval.every``: a classifier's test scores or a language model's validation loss are recorded
    every so many steps (after that step's aggregation)."""
    return cfg.eval.every > 0 and step % cfg.eval.every == 0


def eval_record(model: torch.nn.Module | SplitModel, data: Any, device: torch.device, step: int,
                rounds: int = 0, client: int = 0) -> dict[str, Any]:
    """The metrics record of ``eval.every`` at ``step``, scored by ``client`` (0: cenlora): ``test``
    (a whole classifier's test loss, accuracy, macro-F1) or ``val`` (the masked NLL on the validation
    examples; ``model`` may be a client's ``SplitModel``). ``eval_s``: the seconds it took, so that
    training time can be told from evaluation time."""
    t0 = now()
    if getattr(model, "is_classifier", False):
        from runtime.classify_eval import classify_scores

        kind, scores = "test", classify_scores(model, data.eval_batches(), device) or {}
    else:
        kind, scores = "val", {"val_loss": eval_loss(model, data.eval_batches(), device)}
    return {"kind": kind, "client": client, "step": step, "round": rounds, "t": time.time(), "eval_s": now() - t0,
            **scores}


def phase_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for r in records for k in r.get("time", {})})
    return {k: summarize([r["time"][k] for r in records if k in r.get("time", {})]) for k in keys}


# ------------------------------------------------------------------------- summary


def run_summary(cfg: Config, plan: RunPlan, records: list[dict[str, Any]], wall: float, val: float | None,
             clients: dict[str, Any]) -> dict[str, Any]:
    steps = [r for r in records if r.get("kind") == "step"]
    first = [r["loss"] for r in steps[: max(1, len(steps) // 10)]]
    last = [r["loss"] for r in steps[-max(1, len(steps) // 10):]]
    tokens = sum(r["tokens"] for r in steps)
    return {
        "method": cfg.method, "model": cfg.model.name, "n_layer": model_config(cfg).n_layer,
        "cut": cfg.split.cut if cfg.method == "splitlora" else None,
        "n_clients": len(plan.counts), "local_steps": plan.local_steps, "order": cfg.runtime.order,
        "data_source": plan.source, "loss_first": sum(first) / len(first) if first else None,
        "loss_last": sum(last) / len(last) if last else None, "val_loss": val,
        "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall if wall > 0 else None,
        "bytes_up": sum(r.get("bytes_up", 0) for r in steps),
        "bytes_down": sum(r.get("bytes_down", 0) for r in steps),
        "phases_s": phase_summary(steps), "clients": clients,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
