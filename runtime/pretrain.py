"""Pretraining a small compact-vocabulary GPT-2 from scratch, and the cached bases of the
``micro`` / ``mini`` presets.

``pretrain(cfg, out)`` is a CenLoRA-path run with every weight trainable
(``train.finetune=full``) on documents made from the training references
(``data.task=pretrain``, see ``runtime/data/pretrain_docs.py``): the same steps, metrics,
checkpoints and bitwise resume as any run. ``out`` becomes a model directory that
``--model.path`` and ``transformers.GPT2LMHeadModel.from_pretrained`` load:
``config.json`` + ``model.safetensors`` (transformers' layout), ``vocab_map.json``,
``pretrain.json`` (how it was made, final validation loss/perplexity) and ``README.md``;
the training run itself stays in ``out/train/``.

The vocabulary is every GPT-2 id of the training split's references and MR contexts
(fine-tuning reads both), plus the stop ids; dev/test text is never used to build it.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from runtime.config import Config
from runtime.config.parse import build_config

__all__ = ["RECIPES", "pretrain_config", "build_vocab", "pretrain", "cached_base", "base_cache_root"]

# Per size: the pretraining settings of its cached base (sized for a 2-core CPU; see docs/cpu-bases.md).
RECIPES: dict[str, dict[str, Any]] = {
    "micro": {"train.max_steps": 1200, "train.batch_size": 16, "train.lr": 3e-3, "train.warmup_steps": 50},
    "mini": {"train.max_steps": 3600, "train.batch_size": 16, "train.lr": 1.5e-3, "train.warmup_steps": 100},
}
FORMAT = "splitlora-pretrained/1"


def pretrain_config(size: str, overrides: list[str] | None = None) -> Config:
    """The config of a pretraining run of ``size``: its recipe, then CLI-style overrides."""
    if size not in RECIPES:
        raise ValueError(f"no pretraining recipe for size {size!r}; known: {', '.join(RECIPES)}")
    base = [f"--{k}={v}" for k, v in RECIPES[size].items()]
    fixed = ["--method=cenlora", "--train.finetune=full", "--data.task=pretrain", f"--model.name={size}",
             "--model.base=random", "--train.label_smoothing=0", "--data.max_eval_examples=1000",
             "--data.seq_len=256"]
    return build_config([*fixed, *base, *(overrides or [])])


def build_vocab(cfg: Config):
    """The compact vocabulary of the training split (references + MR contexts) + stop ids."""
    from runtime.data.dataset import _batch_encode
    from runtime.data.locate import load_splits
    from runtime.data.tokenizer import load_bpe
    from runtime.data.vocab import VocabMap

    splits = load_splits(cfg.data.dir, cfg.data.source, synthetic_seed=cfg.train.seed)
    tok = load_bpe()
    texts = [" " + it.completion for it in splits.train] + list(dict.fromkeys(it.context for it in splits.train))
    return VocabMap.from_corpus(_batch_encode(tok, texts)), splits.source


def pretrain(cfg: Config, out: Path, resume: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Pretrain into ``out`` (see the module docstring); returns the metadata written to pretrain.json."""
    import torch

    from runtime.data.vocab import VocabMap
    from runtime.io.checkpoint import latest_step
    from runtime.roles.centralized import run_cenlora

    out = Path(out)
    run_dir = out / "train"
    start = 0
    if resume and (run_dir / "ckpt").is_dir():
        start = latest_step(run_dir)
        vocab = VocabMap.load(run_dir / "vocab_map.json")
        source = json.loads((run_dir / "config.json").read_text())["launch"]["data_source"]
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        vocab, source = build_vocab(cfg)
        run_dir.mkdir(parents=True)
        vocab.save(run_dir)
    cfg = copy.deepcopy(cfg)
    cfg.model.vocab_map = str(run_dir / "vocab_map.json")
    cfg.out.dir, cfg.out.name = str(out), "train"
    launch = {"world_size": 1, "device": device, "data_source": source, "vocab_size": vocab.size}
    if start == 0:
        (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "launch": launch}, indent=2) + "\n")
    print(cfg.to_json(), flush=True)
    print(f"splitlora: pretraining {cfg.model.name} (vocabulary {vocab.size}, data {source}) -> {out}"
          + (f", resuming at step {start}" if start else ""), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    summary = run_cenlora(cfg, run_dir, torch.device(device), start)
    for name in ("config.json", "model.safetensors", "vocab_map.json"):
        shutil.copyfile(run_dir / "model" / name, out / name)
    meta = _metadata(cfg, summary, vocab, source, time.perf_counter() - t0, start)
    (out / "pretrain.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(_readme(meta))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return meta


def _metadata(cfg: Config, summary: dict, vocab, source: str, wall: float, start: int) -> dict[str, Any]:
    from models.flops import forward_flops_shares
    from runtime.build import model_config

    val = summary.get("val_loss")
    return {"format": FORMAT, "size": cfg.model.name, "data_source": source, "vocab_size": vocab.size,
            "steps": summary["local_steps"], "resumed_from": start, "batch_size": cfg.train.batch_size,
            "tokens": summary["tokens"], "wall_s": wall, "tokens_per_s": summary.get("tokens_per_s"),
            "loss_first": summary.get("loss_first"), "loss_last": summary.get("loss_last"),
            "val_loss": val, "val_perplexity": math.exp(val) if val is not None else None,
            "flops_shares": forward_flops_shares(model_config(cfg)), "threads": summary.get("threads"),
            "config": cfg.to_dict(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _readme(meta: dict[str, Any]) -> str:
    c = meta["config"]["model"]
    shares = meta["flops_shares"]
    return (f"# splitlora `{meta['size']}` base\n\nA GPT-2 pretrained from scratch by `python -m launch.pretrain` on "
            f"documents made from the **{meta['data_source']}** training references only (plain, copy and "
            f"keyword-span tasks; never MRs paired with references, never dev/test text).\n\n"
            f"- vocabulary: {meta['vocab_size']} ids (`vocab_map.json`: model id -> GPT-2 BPE id; last id = unknown)\n"
            f"- steps: {meta['steps']} x batch {meta['batch_size']} ({meta['tokens']} tokens), "
            f"{meta['wall_s']:.0f} s\n"
            f"- validation (dev references): loss {meta['val_loss']:.4f}, perplexity {meta['val_perplexity']:.2f}\n"
            f"- forward FLOPs per token: blocks {shares['blocks']:.1%}, LM head {shares['lm_head']:.1%}\n\n"
            f"Load it with `--model.path DIR` or `transformers.GPT2LMHeadModel.from_pretrained(DIR)` (ids are "
            f"model ids: map text through `vocab_map.json`). Model config: {json.dumps(c)}\n")


# ------------------------------------------------------------------- cached bases


def base_cache_root() -> Path:
    """``$XDG_CACHE_HOME/splitlora/bases`` (beside the data cache of runtime.data.locate)."""
    from runtime.data.locate import cache_dir

    return cache_dir().parent / "bases"


def cached_base(cfg: Config) -> Path:
    """The pretrained base of ``cfg.model.name`` (micro/mini) for this run's data, built once.

    Keyed by size, data source and recipe; every process of a run (and every later run)
    shares it. A file lock makes one process build while the others wait, so a torchrun
    job needs no coordination; on several nodes without a shared cache each node builds
    the same base (seeded, deterministic on one kind of CPU) - or pass ``--model.path``.
    """
    from runtime.data.locate import find_data_dir

    source = cfg.data.source
    if source == "auto":
        try:
            find_data_dir(cfg.data.dir)
            source = "e2e"
        except FileNotFoundError:
            source = "synthetic"
    pcfg = pretrain_config(cfg.model.name, [f"--data.source={source}", f"--train.seed={cfg.train.seed}"]
                           + ([f"--data.dir={cfg.data.dir}"] if cfg.data.dir else []))
    # The recipe and the document mix are part of the key: changing either builds a new base.
    from runtime.data import pretrain_docs

    recipe = json.dumps([RECIPES[cfg.model.name], pretrain_docs.MIX, FORMAT], sort_keys=True)
    key = f"{cfg.model.name}-{source}-seed{cfg.train.seed}-{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"
    out = base_cache_root() / key
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (out / "pretrain.json").is_file():
            print(f"splitlora: building the {cfg.model.name} base once (cached in {out}); see "
                  "docs/cpu-bases.md", file=sys.stderr, flush=True)
            from runtime.build import set_threads

            set_threads(os.cpu_count() or 1)
            pretrain(pcfg, out, resume=True)
    return out
