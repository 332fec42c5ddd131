"""Evaluate a finished run on E2E: beam search per unique MR, then BLEU/NIST/METEOR/ROUGE_L/CIDEr.

    python -m launch.evaluate --run runs/splitlora-20261123-120000
    python -m launch.evaluate --run DIR --refs-style tokenized --split valid --max-mrs 50
    python -m launch.evaluate --run DIR --refs-style tokenized --predictions DIR/eval-raw/predictions.txt \
        --out DIR/eval-tokenized      # score earlier texts against other references: no decoding

Writes ``predictions.txt``, ``references.txt`` (official format) and ``scores.json``
into the run directory (or ``--out``). Decoding defaults are the E2E recipe (beam 10,
length penalty 0.8, no-repeat 4-grams, stop on 50256 or "\\n\\n", 64 new tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.config import ConfigError
from runtime.config.parse import config_from_dict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run directory (holds config.json and model/)")
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
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="output directory (default: the run directory)")
    a = ap.parse_args(argv)
    try:
        import torch

        from models.generate import DecodeConfig
        from runtime.evaluation import evaluate_model, format_scores, load_trained_model

        run = Path(a.run)
        if not (run / "config.json").is_file():
            raise FileNotFoundError(f"{run}/config.json not found: --run must be a training run directory")
        saved = json.loads((run / "config.json").read_text())
        cfg = config_from_dict({k: v for k, v in saved.items() if k != "launch"})
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
        model = None if predictions is not None else load_trained_model(cfg, run)
        record = evaluate_model(
            model, cfg, Path(a.out) if a.out else run, split=a.split or e.split,
            refs_style=a.refs_style or e.refs_style, decode=decode, batch_size=a.batch_size or e.batch_size,
            max_mrs=e.max_mrs if a.max_mrs is None else a.max_mrs, data_dir=a.data_dir,
            meteor=e.meteor and not a.no_meteor, device=torch.device(a.device), predictions=predictions)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"splitlora-evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(format_scores(record))
    if "warning" in record:
        print(f"splitlora-evaluate: {record['warning']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
