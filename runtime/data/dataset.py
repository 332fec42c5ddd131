"""Encoding E2E examples and building batches.

An example ``context || completion`` becomes (as in microsoft/LoRA examples/NLG, arXiv 2106.09685)::

    ids = BPE(context) + [50256] + BPE(" " + completion) + [50256]

where ``completion`` has no trailing space: the reference code strips each text line
before splitting it, and with the space kept every example would end in an extra " "
token (id 220) before the final 50256. Without it trainset.csv gives mean 53.3, median 53,
p99 83, max 115 tokens against the recipe's 53 / 53 / 84 / 114 (its exact p99 and max come from
encoding the raw CSV references); with it, 54.3 / 54 / 84 / 116.

A batch (docs/ARCHITECTURE.md) is ``input_ids = ids[:-1]``, ``targets = ids[1:]`` and
``loss_mask`` = 1 where the target is a completion token (its final 50256 included), i.e.
from target position ``len(BPE(context))`` on. Padding goes after the example (pad id 0,
as the reference, mask 0); attention is causal, so padding never changes the loss.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from runtime.data.tokenizer import EOS_ID, load_bpe

PAD_ID = 0


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example; the completion starts at ``ids[n_context + 1]``."""

    ids: list[int]
    n_context: int  # len(BPE(context)); ids[n_context] is the separator 50256
    truncated: bool = False

    @property
    def n_inputs(self) -> int:
        """Length of ``input_ids`` (= of ``targets``) for this example."""
        return len(self.ids) - 1


def encode_example(context: str, completion: str, tokenizer=None, max_len: int | None = None) -> EncodedExample:
    """Encode one example. ``max_len`` caps the number of input positions: longer
    examples keep their first ``max_len + 1`` ids (``truncated=True``)."""
    tok = tokenizer if tokenizer is not None else load_bpe()
    ctx = tok.encode(context, add_special_tokens=False)
    comp = tok.encode(" " + completion.rstrip(" "), add_special_tokens=False)
    return _assemble(ctx, comp, max_len)


def _assemble(ctx: Sequence[int], comp: Sequence[int], max_len: int | None) -> EncodedExample:
    ids = [*ctx, EOS_ID, *comp, EOS_ID]
    truncated = max_len is not None and len(ids) - 1 > max_len
    if truncated:
        if max_len <= len(ctx):
            raise ValueError(f"max_len={max_len} leaves no completion token (context has {len(ctx)})")
        ids = ids[: max_len + 1]
    return EncodedExample(ids, len(ctx), truncated)


def encode_items(items: Sequence, tokenizer=None, max_len: int | None = None, vocab=None) -> list[EncodedExample]:
    """Encode objects with ``.context`` and ``.completion`` (e.g. :class:`E2EItem`).

    Tokenises in batched calls (the fast tokenizer runs them in Rust), each distinct
    context once: the 42k train examples share ~4.9k MRs. ``vocab``: a
    :class:`runtime.data.vocab.VocabMap` for a compact-vocabulary model; the ids are then
    model ids (the separator and final id are the map's id of 50256).
    """
    tok = tokenizer if tokenizer is not None else load_bpe()
    if not items:
        return []
    unique = list(dict.fromkeys(it.context for it in items))
    ctx_ids = dict(zip(unique, _batch_encode(tok, unique)))
    comps = _batch_encode(tok, [" " + it.completion.rstrip(" ") for it in items])
    out = [_assemble(ctx_ids[it.context], comp, max_len) for it, comp in zip(items, comps)]
    if vocab is not None:
        out = [EncodedExample(vocab.to_model(e.ids), e.n_context, e.truncated) for e in out]
    return out


def _batch_encode(tok, texts: list[str]) -> list[list[int]]:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        # The Rust tokenizer directly: skips building a BatchEncoding (~40 % of the time).
        return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]
    return tok(texts, add_special_tokens=False)["input_ids"]


def length_stats(examples: Sequence[EncodedExample], seq_len: int | None = None) -> dict[str, float]:
    """Token-length statistics of examples (context + 50256 + completion + 50256).

    ``truncated``: examples cut at encoding time, or, given ``seq_len``, examples whose
    inputs are longer than ``seq_len`` (those a fixed-length batch would truncate).
    """
    lengths = np.array([len(e.ids) for e in examples], dtype=np.float64)
    if lengths.size == 0:
        return {"n": 0}
    if seq_len is None:
        truncated = sum(e.truncated for e in examples)
    else:
        truncated = int(((lengths - 1) > seq_len).sum())
    return {
        "n": int(lengths.size),
        "mean": float(lengths.mean()),
        "median": float(np.median(lengths)),
        "p99": float(np.percentile(lengths, 99)),
        "max": int(lengths.max()),
        "truncated": int(truncated),
    }


class E2EDataset(Dataset):
    """A list of encoded examples; ``dataset[i]`` is an :class:`EncodedExample`."""

    def __init__(self, examples: Sequence[EncodedExample]):
        self.examples = list(examples)

    @classmethod
    def from_items(cls, items: Sequence, tokenizer=None, max_len: int | None = None) -> E2EDataset:
        """Encode items (``.context`` / ``.completion``) into a dataset."""
        return cls(encode_items(items, tokenizer, max_len))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedExample:
        return self.examples[index]

    @property
    def n_truncated(self) -> int:
        """How many examples were cut to ``max_len`` at encoding time."""
        return sum(e.truncated for e in self.examples)


def collate(examples: Sequence[EncodedExample], seq_len: int | None = None,
            pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """Stack examples into a batch dict.

    ``seq_len=None`` trims the batch to its longest example; an int pads every batch to
    that length (the reference's fixed 512) and truncates longer examples.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    T = max(e.n_inputs for e in examples) if seq_len is None else seq_len
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.float32)
    for b, e in enumerate(examples):
        n = min(e.n_inputs, T)
        ids = torch.as_tensor(e.ids[: n + 1], dtype=torch.long)
        input_ids[b, :n] = ids[:-1]
        targets[b, :n] = ids[1:]
        # Target position t predicts ids[t + 1]; the completion starts at ids[n_context + 1].
        loss_mask[b, e.n_context:n] = 1.0
    return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask}


def epoch_order(indices: Sequence[int], seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order in which ``indices`` are visited in ``epoch``: a permutation that depends
    only on (seed, epoch) (both >= 0), so every process and every resume computes the same."""
    order = list(indices)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = [order[i] for i in rng.permutation(len(order))]
    return order


class EpochSampler(Sampler[int]):
    """Visits :func:`epoch_order` from position ``start`` (an index into the order)."""

    def __init__(self, indices: Sequence[int], seed: int, epoch: int, shuffle: bool = True, start: int = 0):
        self.order = epoch_order(indices, seed, epoch, shuffle)
        if not 0 <= start <= len(self.order):
            raise ValueError(f"start={start} outside [0, {len(self.order)}]")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(self.order[self.start:])

    def __len__(self) -> int:
        return len(self.order) - self.start


def batches_per_epoch(n_items: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches one epoch over ``n_items`` yields."""
    return n_items // batch_size if drop_last else -(-n_items // batch_size)


def build_loader(dataset: Dataset, indices: Sequence[int], batch_size: int, *, seed: int, epoch: int = 0,
                 skip_batches: int = 0, shuffle: bool = True, drop_last: bool = False,
                 seq_len: int | None = None, pad_id: int = PAD_ID, num_workers: int = 0) -> DataLoader:
    """A deterministic DataLoader over ``indices`` of ``dataset`` for one epoch.

    The order depends only on (seed, epoch); ``skip_batches=k`` starts at the k-th batch,
    giving exactly the batches an uninterrupted epoch would yield after its first k (the
    exact-resume path).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_batches = batches_per_epoch(len(indices), batch_size, drop_last)
    if not 0 <= skip_batches <= n_batches:
        raise ValueError(f"skip_batches={skip_batches} outside [0, {n_batches}] for this epoch")
    sampler = EpochSampler(indices, seed, epoch, shuffle, start=skip_batches * batch_size)
    # A partial (not a closure) so that worker processes can unpickle it.
    collate_fn = functools.partial(collate, seq_len=seq_len, pad_id=pad_id)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      collate_fn=collate_fn, num_workers=num_workers)
