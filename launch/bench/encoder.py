"""LoRA training-step speed of our encoder (``models/encoder.py``) vs transformers + peft.

    python -m launch.bench.encoder --model DIR                  # a BERT/RoBERTa directory
    python -m launch.bench.encoder --model DIR --data DIR --rank 8 --threads 2 --pairs 20

Both sides train the same thing on the same batch: LoRA on the six linear modules of every
layer (query, key, value, attention output, intermediate, output; alpha 16, no dropout), a
frozen random head on the mean-pooled last hidden states, cross-entropy, AdamW. The batch is
the first ``--batch`` texts of ``--data``'s train.csv (BANKING77), else random ids of
``--seq`` tokens. One step = forward, backward, optimizer step. The two are timed in
alternating pairs after warm-up (ours, theirs, ours, ...), so load on the machine hits both
alike; the report gives each side's median and the median of the per-pair ratios, and
checks that both computed the same loss on the first step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from models.encoder import EncoderClassifier
from models.lora import LoRAConfig, apply_lora

SIX = ("q", "k", "v", "attn_proj", "mlp_fc", "mlp_proj")
HF_TARGETS = r"(.*\.)?encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|" \
             r"intermediate\.dense|output\.dense)"


def _batch(model_dir: Path, data_dir: str | None, batch: int, seq: int, pad: int,
           vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) right-padded and the (B, T) bool mask of real tokens."""
    if data_dir:
        from runtime.data.classify import load_classification, load_text_tokenizer

        texts = [e.text for e in load_classification(data_dir, "csv").train[:batch]]
        rows = [e.ids for e in load_text_tokenizer(model_dir).encode_batch(texts)]
    else:
        g = torch.Generator().manual_seed(0)
        rows = [torch.randint(vocab // 2, vocab, (seq,), generator=g).tolist() for _ in range(batch)]  # no specials
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids, ids != pad


def _ours(model_dir: Path, rank: int, labels: int) -> EncoderClassifier:
    model = EncoderClassifier.from_pretrained(model_dir, num_labels=labels, hidden_pdrop=0.0, attn_pdrop=0.0)
    return apply_lora(model, LoRAConfig(r=rank, alpha=16.0, dropout=0.0, targets=SIX)).train()


def _theirs(model_dir: Path, rank: int, head: torch.nn.Linear) -> torch.nn.Module:
    import peft
    import transformers

    base = transformers.AutoModel.from_pretrained(str(model_dir), add_pooling_layer=False,
                                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = peft.LoraConfig(r=rank, lora_alpha=16, lora_dropout=0.0, target_modules=HF_TARGETS)
    model = peft.get_peft_model(base, cfg).train()
    model.cls_head = head  # the same frozen head as ours
    return model


def _step_ours(model, opt, ids, mask, y) -> float:
    loss = F.cross_entropy(model(ids, attn_mask=mask), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach().item()


def _step_theirs(model, opt, ids, mask, y) -> float:
    h = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, T, C)
    w = mask[..., None].to(h.dtype)
    loss = F.cross_entropy(model.cls_head((h * w).sum(1) / w.sum(1)), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach().item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a transformers BERT/RoBERTa directory with tokenizer.json")
    ap.add_argument("--data", default=None, help="a directory with train.csv (texts for the batch)")
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=24, help="tokens per row without --data")
    ap.add_argument("--labels", type=int, default=77)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write report.json here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model_dir = Path(a.model)
    ours = _ours(model_dir, a.rank, a.labels)
    theirs = _theirs(model_dir, a.rank, ours.head)
    ids, mask = _batch(model_dir, a.data, a.batch, a.seq, ours.config.pad_token_id, ours.config.vocab_size)
    y = torch.arange(ids.shape[0]) % a.labels
    opt_o = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=5e-4)
    opt_t = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=5e-4)
    first = (_step_ours(ours, opt_o, ids, mask, y), _step_theirs(theirs, opt_t, ids, mask, y))
    for _ in range(a.warmup):
        _step_ours(ours, opt_o, ids, mask, y)
        _step_theirs(theirs, opt_t, ids, mask, y)
    t_o, t_t = [], []
    for _ in range(a.pairs):
        for fn, model, opt, out in ((_step_ours, ours, opt_o, t_o), (_step_theirs, theirs, opt_t, t_t)):
            t0 = time.perf_counter()
            fn(model, opt, ids, mask, y)
            out.append(time.perf_counter() - t0)
    ratios = [o / t for o, t in zip(t_o, t_t)]
    report = {"model": str(model_dir), "rank": a.rank, "batch": list(ids.shape), "real_tokens": int(mask.sum()),
              "threads": a.threads, "pairs": a.pairs, "first_loss": {"ours": first[0], "transformers_peft": first[1]},
              "ours_s": {"median": statistics.median(t_o), "min": min(t_o), "max": max(t_o)},
              "transformers_peft_s": {"median": statistics.median(t_t), "min": min(t_t), "max": max(t_t)},
              "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
              "torch": torch.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "load_avg_1m": os.getloadavg()[0]}
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
