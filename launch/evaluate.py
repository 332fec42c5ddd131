"""Evaluate a finished run on E2E: beam search per unique MR, then BLEU/NIST/METEOR/ROUGE_L/CIDEr.

    python -m launch.evaluate --run runs/splitlora-20261123-120000
    python -m launch.evaluate --run DIR --refs-style tokenized --split valid --max-mrs 50
    python -m launch.evaluate --run DIR --refs-style tokenized --predictions DIR/eval-raw/predictions.txt \
        --out DIR/eval-tokenized      # score earlier texts against other references: no decoding

A SplitLoRA run decodes **through the split** by default (``--through split``): a server rank
holding only the server's part and a client rank holding only the client's, each loading its
own tensors of ``model/`` (``runtime/split/run_eval.py``), the same path and arithmetic as
``--eval.at_end``. Run plainly, both ranks start on this machine; under
``torchrun --nnodes=2 --nproc_per_node=1 ... -m launch.evaluate --run DIR`` each runs where
torchrun puts it (node rank 0: the server), so no machine holds the whole model.
``--through whole`` decodes the whole model in one process (adapters merged).

Writes ``predictions.txt``, ``references.txt`` (official format) and ``scores.json``
into the run directory (or ``--out``). Decoding defaults are the E2E recipe (beam 10,
length penalty 0.8, no-repeat 4-grams, stop on 50256 or "\\n\\n", 64 new tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from runtime.config import ConfigError
from runtime.config.parse import config_from_dict


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        cfg, run = _run_config(a.run)
        through = a.through or ("split" if _splits(cfg) else "whole")
        if through == "split" and not _splits(cfg):
            raise ValueError(f"--through split needs a SplitLoRA run whose split shape decodes through the split "
                             f"(this run: method={cfg.method}, split.shape={cfg.split.shape})")
        if through == "split" and a.predictions is None:
            if not (run / "model" / "lora.safetensors").is_file():
                raise FileNotFoundError(f"{run}/model/lora.safetensors not found: was the run finished with "
                                        "out.save_model=true?")
            return _through_split(a, cfg, run)
        record = _evaluate(a, cfg, run, None)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"splitlora-evaluate: error: {exc}", file=sys.stderr)
        return 2
    return _report(record)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run directory (holds config.json and model/)")
    ap.add_argument("--through", choices=("split", "whole"), default=None,
                    help="decode through the split (server rank + client rank, each with its part) or the whole "
                         "model in one process; default: split for SplitLoRA runs, whole otherwise")
    ap.add_argument("--split", choices=("valid", "test"), default=None, help="default: the run's eval.split")
    ap.add_argument("--refs-style", choices=("raw", "tokenized"), default=None,
                    help="score against the official raw refs or the space-tokenised ones (default: raw)")
    ap.add_argument("--data-dir", default=None, help="E2E data directory (default: the run's data.dir)")
    ap.add_argument("--beams", type=int, default=None)
    ap.add_argument("--length-penalty", type=float, default=None, help="default: the run's eval.length_penalty")
    ap.add_argument("--no-repeat-ngram", type=int, default=None,
                    help="default: the run's eval.no_repeat_ngram_size (0 = off)")
    ap.add_argument("--repeat-scope", choices=("generated", "sequence"), default=None,
                    help="what the n-gram ban sees: the output only (recipe) or the prompt too (transformers); "
                         "default: the run's eval.repeat_scope")
    ap.add_argument("--predictions", default=None,
                    help="score this predictions.txt (one text per MR, in the split's MR order) instead of decoding")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-mrs", type=int, default=None, help="only the first N MRs (smoke tests)")
    ap.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs Java)")
    ap.add_argument("--device", default="cpu", help="--through whole: the device that decodes")
    ap.add_argument("--out", default=None, help="output directory (default: the run directory)")
    return ap


def _run_config(run_dir: str) -> tuple[Any, Path]:
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run}/config.json not found: --run must be a training run directory")
    saved = json.loads((run / "config.json").read_text())
    return config_from_dict({k: v for k, v in saved.items() if k != "launch"}), run


def _splits(cfg: Any) -> bool:
    from runtime.split.shapes import get_shape

    # A fully fine-tuned run saves the whole model only (model/ in the Hugging Face layout): decoded whole.
    return cfg.method == "splitlora" and cfg.train.finetune == "lora" and get_shape(cfg.split.shape).split_inference


def _evaluate(a: argparse.Namespace, cfg: Any, run: Path, model: Any, device: Any = None) -> dict[str, Any] | None:
    """Decode (``model``: a split's decoding chain; None: the run's whole model) or rescore, and score."""
    import torch

    from models.generate import DecodeConfig
    from runtime.evaluation import evaluate_model, load_trained_model

    e = cfg.eval
    decode = DecodeConfig(
        num_beams=a.beams or e.num_beams,
        length_penalty=e.length_penalty if a.length_penalty is None else a.length_penalty,
        no_repeat_ngram_size=e.no_repeat_ngram_size if a.no_repeat_ngram is None else a.no_repeat_ngram,
        max_new_tokens=e.max_new_tokens, repeat_scope=a.repeat_scope or e.repeat_scope)
    predictions = None
    if a.predictions:
        # predictions.txt: one line per MR; a text may be empty, so keep every line but the last newline's.
        pred_path = Path(a.predictions)
        predictions = pred_path.read_text(encoding="utf-8").split("\n")[:-1]
        source = pred_path.with_name("scores.json")  # how those texts were decoded, when known
        if source.is_file():
            made = json.loads(source.read_text())["decode"]
            made.setdefault("repeat_scope", "sequence")  # texts decoded before the option existed
            decode = DecodeConfig(**{**made, "stop_tokens": tuple(made["stop_tokens"])})
    if model is None and predictions is None:
        model = load_trained_model(cfg, run)
    return evaluate_model(
        model, cfg, Path(a.out) if a.out else run, split=a.split or e.split,
        refs_style=a.refs_style or e.refs_style, decode=decode, batch_size=a.batch_size or e.batch_size,
        max_mrs=e.max_mrs if a.max_mrs is None else a.max_mrs, data_dir=a.data_dir,
        meteor=e.meteor and not a.no_meteor, device=device or torch.device(a.device), predictions=predictions)


def _through_split(a: argparse.Namespace, cfg: Any, run: Path) -> int:
    """Both ranks here (spawned), or this rank of a torchrun launch; the client rank reports."""
    if "WORLD_SIZE" in os.environ:
        record = _split_rank(a, cfg, run)
        return 0 if record is None else _report(record)
    import torch.multiprocessing as mp

    from launch.spawn import free_port

    results = mp.Manager().dict()
    try:
        mp.spawn(_spawned_rank, args=(a, free_port(), results), nprocs=2, join=True)
    except mp.ProcessRaisedException as exc:  # the failing rank's traceback is in the message
        print(f"splitlora-evaluate: error: a rank failed:\n{exc}", file=sys.stderr)
        return 1
    return _report(results["record"])


def _spawned_rank(rank: int, a: argparse.Namespace, port: int, results: Any) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cfg, run = _run_config(a.run)
    record = _split_rank(a, cfg, run)
    if record is not None:
        results["record"] = record


def _split_rank(a: argparse.Namespace, cfg: Any, run: Path) -> dict[str, Any] | None:
    from runtime.split.run_eval import evaluate_through_split

    return evaluate_through_split(cfg, run, lambda model, device: _evaluate(a, cfg, run, model.decodable(), device))


def _report(record: dict[str, Any]) -> int:
    from runtime.evaluation import format_scores

    print(format_scores(record))
    if "warning" in record:
        print(f"splitlora-evaluate: {record['warning']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
