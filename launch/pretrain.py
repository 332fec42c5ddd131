"""Pretrain a small compact-vocabulary GPT-2 base from scratch, on a CPU.

    # the mini base (about 15-20 min on 2 cores), into DIR:
    python -m launch.pretrain --size mini --out DIR
    # continue an interrupted run from its last checkpoint:
    python -m launch.pretrain --size mini --out DIR --resume
    # then fine-tune it with any method:
    torchrun --standalone --nproc_per_node=4 -m launch.train --model.path DIR --lora.r 4

Training text: the E2E training references only (found as for launch.train: --data.dir,
$SPLITLORA_DATA, the user cache; else the synthetic set), made into plain, copy and
keyword-span documents (runtime/data/pretrain_docs.py). Every weight trains (AdamW, the
size's recipe in runtime/pretrain.py). DIR ends up holding config.json +
model.safetensors (transformers' layout), vocab_map.json, pretrain.json and README.md.

Any other ``--section.key=value`` overrides the recipe (e.g. --train.max_steps=500,
--ckpt.every=200, --data.source=synthetic).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from runtime.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    from runtime.config.help import config_help

    p = argparse.ArgumentParser(prog="launch.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Config keys (the recipe sets train.*, data.task=pretrain, "
                                       "train.finetune=full):\n\n" + config_help())
    p.add_argument("--size", default="mini", help="micro or mini (default mini)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint in OUT/train")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    args, overrides = p.parse_known_args(argv)
    from runtime.build import set_threads
    from runtime.pretrain import pretrain, pretrain_config

    try:
        cfg = pretrain_config(args.size, overrides)
    except (ConfigError, ValueError) as exc:
        print(f"splitlora: error: {exc}", file=sys.stderr)
        return 2
    set_threads(args.threads or os.cpu_count() or 1)
    cfg.runtime.server_threads = args.threads or os.cpu_count() or 1
    meta = pretrain(cfg, Path(args.out), resume=args.resume)
    print(f"splitlora: pretrained {args.size}: {meta['steps']} steps, {meta['wall_s']:.0f} s, "
          f"{meta['tokens_per_s']:.0f} tok/s; validation loss {meta['val_loss']:.4f}, "
          f"perplexity {meta['val_perplexity']:.2f}; model in {args.out}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
