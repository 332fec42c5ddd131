"""E2E evaluation of a trained model: one beam-search hypothesis per unique MR, then the
five metrics against all references of that MR.

Hypotheses are the decoded completions as the model writes them; training completions
are space-tokenised (``family - friendly``), so the hypotheses are too. ``refs_style``
picks what they are scored against: ``raw`` — the official human references (E2E
challenge numbers), or ``tokenized`` — the space-tokenised references of the
``context||completion`` files (the LoRA/SplitLoRA papers' numbers). Every report names
the style used.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from metrics.e2e import evaluate as score_e2e
from metrics.slots import slot_copy_rates
from models.decode_chain import Decodable
from models.generate import DecodeConfig, beam_search, greedy
from models.lora import load_lora_state_dict, merge_lora
from runtime.build import build_full_model, run_vocab
from runtime.config import Config
from runtime.data.e2e import MRGroup, group_by_mr
from runtime.data.locate import load_splits
from runtime.data.tokenizer import EOS_ID, load_bpe
from runtime.data.vocab import VocabMap, load_vocab_map
from runtime.decode_share import DecodeShare
from runtime.io.artifacts import load_model_tensors, write_json

REFS_STYLES = ("raw", "tokenized")


def load_trained_model(cfg: Config, run_dir: Path) -> torch.nn.Module:
    """The whole model of a run: base (pretrained, or the saved random base) + its LoRA."""
    model_dir = run_dir / "model"
    if cfg.train.finetune == "full":
        from models.gpt2 import GPT2

        return GPT2.from_pretrained(model_dir, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    if not (model_dir / "lora.safetensors").is_file():
        raise FileNotFoundError(f"{model_dir}/lora.safetensors not found: was the run finished with "
                                "out.save_model=true?")
    lora, base = load_model_tensors(model_dir)
    model = build_full_model(cfg)
    if base is not None:
        missing, unexpected = model.load_state_dict(base, strict=False)
        bad = [k for k in missing if ".adapters." not in k and k != "lm_head.weight"]
        if bad or unexpected:
            raise ValueError(f"saved base weights do not fit the model: missing {bad[:5]}, unexpected "
                             f"{list(unexpected)[:5]}")
    load_lora_state_dict(model, lora, strict=True)
    return model


def mr_groups(cfg: Config, split: str, data_dir: str | None = None) -> tuple[list[MRGroup], str]:
    splits = load_splits(data_dir if data_dir is not None else cfg.data.dir, cfg.data.source,
                         synthetic_seed=cfg.train.seed)
    return group_by_mr(splits[split]), splits.source


def decode_groups(model: Decodable, groups: list[MRGroup], decode: DecodeConfig, *, batch_size: int,
                  device: torch.device, model_dir: str | None = None, show_progress: bool = True,
                  vocab: VocabMap | None = None, share: tuple[int, int] | None = None,
                  stats: dict[str, int] | None = None) -> list[str | None]:
    """One hypothesis per MR group, in group order; prompts = BPE(context) + [50256].

    A compact-vocabulary model (``vocab``, else ``vocab_map.json`` in ``model_dir``) gets its
    prompts and stop ids through the map and its outputs mapped back before detokenising.
    ``share`` (k, n): decode only every n-th MR, from the k-th, of the length-sorted order (so
    every share gets long and short prompts alike); the others' hypotheses are None.
    ``stats["tokens"]``: increased by the tokens generated (stop tokens excluded).
    """
    tok = load_bpe(model_dir)
    vocab = vocab if vocab is not None else load_vocab_map(model_dir)
    prompts = [tok.encode(g.context, add_special_tokens=False) + [EOS_ID] for g in groups]
    if vocab is not None:
        prompts = [vocab.to_model(p) for p in prompts]
        decode = replace(decode, stop_tokens=tuple(vocab.to_model(decode.stop_tokens)))
    # Decode similar lengths together: less left padding, same results (tested in models).
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    if share is not None:
        order = order[share[0]::share[1]]
    hyps: list[str | None] = [None if share else ""] * len(prompts)
    bar = tqdm(total=len(order), desc="decode", unit="MR", file=sys.stderr, disable=not show_progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = [prompts[i] for i in idx]
        if decode.num_beams == 1:
            outs = greedy(model, batch, decode.max_new_tokens, decode.stop_tokens,
                          no_repeat_ngram_size=decode.no_repeat_ngram_size,
                          repetition_penalty=decode.repetition_penalty, repeat_scope=decode.repeat_scope)
        else:
            outs = beam_search(model, batch, decode)
        if stats is not None:
            stats["tokens"] = stats.get("tokens", 0) + sum(len(out) for out in outs)
        for i, out in zip(idx, outs):
            ids = vocab.to_gpt2(out) if vocab is not None else out
            hyps[i] = " ".join(tok.decode(ids).split())  # one line, single spaces
        bar.update(len(idx))
    bar.close()
    return hyps


def sample_texts(model: Decodable, cfg: Config, n: int, device: torch.device) -> list[dict[str, str]]:
    """Greedy texts for the first ``n`` validation MRs (a glance at what the model writes). ``model``:
    a whole model (decoded from a merged copy) or a chain of parts (as it is: split inference)."""
    import copy

    groups, _ = mr_groups(cfg, "valid")
    groups = groups[:n]
    if isinstance(model, torch.nn.Module):
        model = copy.deepcopy(model).to(device).eval()
        merge_lora(model)
    decode = DecodeConfig(num_beams=1, no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size,
                          max_new_tokens=cfg.eval.max_new_tokens, repeat_scope=cfg.eval.repeat_scope)
    with torch.no_grad():
        hyps = decode_groups(model, groups, decode, batch_size=max(1, n), device=device, model_dir=cfg.model.path,
                             show_progress=False, vocab=run_vocab(cfg))
    return [{"mr": g.context, "text": h} for g, h in zip(groups, hyps)]


def write_refs(path: Path, refs: list[list[str]]) -> None:
    """The official reference format: each MR's refs on consecutive lines, a blank line between MRs."""
    path.write_text("\n\n".join("\n".join(r) for r in refs) + "\n", encoding="utf-8")


def evaluate_model(model: Decodable | None, cfg: Config, out_dir: Path, *, split: str = "test",
                   refs_style: str = "raw", decode: DecodeConfig | None = None, batch_size: int = 16,
                   max_mrs: int = 0, data_dir: str | None = None, meteor: bool = True,
                   device: torch.device | None = None, show_progress: bool = True,
                   predictions: list[str] | None = None, share: DecodeShare | None = None) -> dict[str, Any] | None:
    """Decode, write predictions/references/scores into ``out_dir``, return the scores record.

    ``predictions`` (one text per MR group, in group order; e.g. an earlier run's
    ``predictions.txt``) are scored as they are, without decoding: the other reference
    style costs no second beam search. ``share``: this process decodes its share of the MRs
    and the shares are gathered; only the share that scores (``share.scores``) writes and
    returns the record, the others return None.
    """
    if refs_style not in REFS_STYLES:
        raise ValueError(f"refs_style must be one of {REFS_STYLES}, got {refs_style!r}")
    decode = decode or DecodeConfig()
    device = device or torch.device("cpu")
    groups, source = mr_groups(cfg, split, data_dir)
    if max_mrs:
        groups = groups[:max_mrs]
    t0 = time.perf_counter()
    generated = None
    if predictions is not None:
        if len(predictions) != len(groups):
            raise ValueError(f"{len(predictions)} predictions for {len(groups)} MRs of the {split} split")
        hyps = list(predictions)
    else:
        if model is None:
            raise ValueError("evaluate_model needs a model or predictions")
        if isinstance(model, torch.nn.Module):  # a whole model (a chain of parts decodes as it is)
            model = model.to(device)
            merge_lora(model)  # decoding with merged weights: same outputs, no LoRA matmuls per step
        stats = {"tokens": 0}
        mine = decode_groups(model, groups, decode, batch_size=batch_size, device=device, model_dir=cfg.model.path,
                             show_progress=show_progress, vocab=run_vocab(cfg),
                             share=None if share is None else (share.index, share.count), stats=stats)
        gathered = (mine, stats["tokens"]) if share is None else share.gather(mine, stats["tokens"])
        if gathered is None:
            return None
        hyps, generated = [str(h) for h in gathered[0]], gathered[1]
    decode_s = time.perf_counter() - t0
    refs = [list(g.refs) if refs_style == "raw" else [r.strip() for r in g.tok_refs] for g in groups]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predictions.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    write_refs(out_dir / "references.txt", refs)
    t1 = time.perf_counter()
    scores = score_e2e(refs, hyps, meteor=meteor)
    mrs = [g.mr for g in groups]
    slots = slot_copy_rates(mrs, hyps) if all(mrs) else None  # MR strings exist for E2E and synthetic data
    record = {"scores": scores, "slots": slots, "refs_style": refs_style, "split": split, "n_mrs": len(groups),
              "n_refs": sum(len(r) for r in refs), "data_source": source, "decode": asdict(decode),
              "decode_s": decode_s, "generated_tokens": generated, "score_s": time.perf_counter() - t1,
              "method": cfg.method,
              "rescored": predictions is not None, "decode_shares": 1 if share is None else share.count,
              "model": cfg.model.name}
    if source != "e2e":
        record["warning"] = "scored on SYNTHETIC data: not comparable with any published E2E number"
    write_json(out_dir / "scores.json", record)
    return record


def format_scores(record: dict[str, Any]) -> str:
    s = record["scores"]
    fmt = {"BLEU": "{:.4f}", "NIST": "{:.4f}", "METEOR": "{:.4f}", "ROUGE_L": "{:.4f}", "CIDEr": "{:.4f}"}
    cells = "  ".join(f"{k} {'n/a' if s.get(k) is None else f.format(s[k])}" for k, f in fmt.items())
    slots = record.get("slots") or {}
    copied = "  ".join(f"{k} copied {slots[k]:.1%}" for k in ("name", "near") if slots.get(k) is not None)
    cells += f"  ({copied})" if copied else ""
    return (f"{cells}  [{record['split']} split, {record['n_mrs']} MRs, refs {record['refs_style']}, "
            f"data {record['data_source']}]")
