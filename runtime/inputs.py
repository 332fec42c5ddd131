"""Each client's private data: its shard of the training set, in a reproducible order.

Every client computes the same seeded partition of the whole training set and keeps its
own shard; no data crosses processes. All clients run the same number of local steps
(aggregation is a collective: every member must join every round), chosen so that the
clients together see the training set ``epochs`` times; a small shard just starts its
next pass earlier, and the sample-weighted average keeps each client's influence
proportional to its data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime.build import run_vocab
from runtime.config import Config
from runtime.data.classify import (
    class_counts,
    collate_texts,
    encode_texts,
    load_classification,
    load_text_tokenizer,
    pad_token_id,
)
from runtime.data.dataset import EncodedExample, collate, encode_items
from runtime.data.locate import load_splits
from runtime.data.partition import describe_partition, parse_scheme, partition
from runtime.data.pretrain_docs import make_docs
from runtime.data.tokenizer import load_bpe


@dataclass
class RunPlan:
    counts: list[int]  # training samples per logical client (index 0 = client 1)
    local_steps: int  # the run's steps: a client trains those of the rounds it is sampled in
    source: str = "e2e"
    start_step: int = 0  # > 0 when resuming from a checkpoint at that step
    per_round: int = 0  # K: clients sampled per round (0 = every client)

    @classmethod
    def make(cls, cfg: Config, counts: list[int], source: str = "e2e", start_step: int = 0) -> RunPlan:
        per_round = cfg.fed.clients_per_round or len(counts)
        if cfg.train.max_steps:
            steps = cfg.train.max_steps
        else:
            # The K clients of a round together see the training set ``epochs`` times over the run.
            steps = cfg.train.epochs * math.ceil(sum(counts) / (per_round * cfg.train.batch_size))
        if start_step > steps:
            raise ValueError(f"cannot resume at step {start_step}: the run has only {steps} steps")
        return cls(list(counts), steps, source, start_step, per_round)

    def client_steps(self) -> int:
        """Client steps left from ``start_step`` to the end: K per step (the progress bar's total)."""
        return (self.local_steps - self.start_step) * (self.per_round or len(self.counts))

    def checkpoint_due(self, cfg: Config, step: int) -> bool:
        return step == self.local_steps or (cfg.ckpt.every > 0 and step % cfg.ckpt.every == 0)


@dataclass
class ClientData:
    examples: list[EncodedExample]  # this client's encoded examples
    eval_examples: list[EncodedExample]
    cfg: Config
    client_index: int
    source: str
    all_counts: list[int] = field(default_factory=list)
    partition_info: dict[str, Any] = field(default_factory=dict)
    pad_id: int | None = None  # classify: the padding id (batches of runtime/data/classify.py)

    @property
    def n_samples(self) -> int:
        return len(self.examples)

    def _collate(self, items: list) -> dict[str, torch.Tensor]:
        if self.pad_id is not None:
            return collate_texts(items, self.pad_id)
        # Default: trim each batch to its longest example (same losses as fixed padding:
        # padding sits after the completion, attention is causal, the loss is masked).
        d = self.cfg.data
        return collate(items, seq_len=d.seq_len if d.pad_to_seq_len else None)

    def batches(self, n_steps: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches for steps ``start_step .. n_steps-1``; epoch e uses permutation seed (seed, client, e).

        The order depends only on the seed, the client index and the step, so a resumed
        run sees exactly the batches an uninterrupted one would.
        """
        bs = self.cfg.train.batch_size
        per_epoch = math.ceil(self.n_samples / bs)
        step = start_step
        while step < n_steps:
            epoch, offset = divmod(step, per_epoch)
            g = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + self.client_index * 1_009 + epoch)
            order = torch.randperm(self.n_samples, generator=g).tolist()
            for b in range(offset, per_epoch):
                if step >= n_steps:
                    return
                yield self._collate([self.examples[i] for i in order[b * bs:(b + 1) * bs]])
                step += 1

    def eval_batches(self) -> list[dict[str, torch.Tensor]]:
        bs = self.cfg.train.batch_size
        return [self._collate(self.eval_examples[i:i + bs]) for i in range(0, len(self.eval_examples), bs)]

    def describe(self) -> dict[str, Any]:
        return {"client_index": self.client_index, "samples": self.n_samples, "source": self.source,
                "partition": self.cfg.data.partition, **self.partition_info}


def load_client_data(cfg: Config, client_index: int, n_clients: int) -> ClientData:
    """Load the training split, partition it for ``n_clients`` and keep shard ``client_index``."""
    return load_clients_data(cfg, [client_index], n_clients)[0]


def load_clients_data(cfg: Config, indices: list[int], n_clients: int) -> list[ClientData]:
    """The shards of the logical clients ``indices`` (a rank's hosted clients) of a partition over
    ``n_clients``: the split is read, partitioned and the evaluation set encoded once per rank."""
    if cfg.data.task == "classify":
        return load_client_texts(cfg, indices, n_clients)
    # Only the rows this run reads are converted (pretraining makes documents from all of them).
    limits = {} if cfg.data.task == "pretrain" else {"valid": cfg.data.max_eval_examples, "test": 0}
    if cfg.data.max_train_examples and cfg.data.task != "pretrain":
        limits["train"] = cfg.data.max_train_examples
    splits = load_splits(cfg.data.dir, cfg.data.source, synthetic_seed=cfg.train.seed, limits=limits)
    train, valid = splits.train, splits.valid
    if cfg.data.task == "pretrain":  # documents from the references alone (train for training, dev for the loss)
        train = make_docs([it.completion for it in train], seed=cfg.train.seed)
        valid = make_docs([it.completion for it in valid], seed=cfg.train.seed + 1)
    if cfg.data.max_train_examples:
        train = train[: cfg.data.max_train_examples]
    valid = valid[: cfg.data.max_eval_examples] if cfg.data.max_eval_examples else []
    tok = load_bpe(cfg.model.path)
    shards = partition(train, n_clients, cfg.data.partition, seed=cfg.train.seed)
    max_len = cfg.data.seq_len
    vocab = run_vocab(cfg)  # None: the full GPT-2 vocabulary
    encoded_valid = encode_items(valid, tok, max_len, vocab)
    info = (describe_partition(shards, train, parse_scheme(cfg.data.partition).attribute)
            if cfg.data.task == "finetune" else None)
    out = []
    for index in indices:
        mine = [train[i] for i in shards[index]]
        about = info if info is not None else {"kinds": dict(Counter(d.kind for d in mine))}
        out.append(ClientData(encode_items(mine, tok, max_len, vocab), encoded_valid, cfg, index, splits.source,
                              [len(s) for s in shards], {"all_clients": about, "note": splits.note}))
    return out


def load_client_texts(cfg: Config, indices: list[int], n_clients: int) -> list[ClientData]:
    """Classification: the labelled training split partitioned over the clients (label skew with
    ``dirichlet:<alpha>`` / ``pathological``); evaluation on the test split (every example)."""
    from runtime.build import model_config

    splits = load_classification(cfg.data.dir, cfg.data.source, seed=cfg.train.seed)
    if cfg.model.num_labels and cfg.model.num_labels != len(splits.labels):
        raise ValueError(f"model.num_labels={cfg.model.num_labels} but the training split has {len(splits.labels)} "
                         f"labels ({splits.note})")
    train = splits.train[: cfg.data.max_train_examples] if cfg.data.max_train_examples else splits.train
    shards = partition(train, n_clients, cfg.data.partition, seed=cfg.train.seed)
    tok = load_text_tokenizer(cfg.model.path)
    pad_id = model_config(cfg).pad_token_id  # the id the encoder reads as padding
    if pad_token_id(tok) != pad_id:
        raise ValueError(f"{cfg.model.path}: tokenizer.json pads with id {pad_token_id(tok)} but config.json's "
                         f"pad_token_id is {pad_id}: the encoder would attend to padding")
    test = encode_texts(splits.test, tok, splits.labels, cfg.data.seq_len)
    info = describe_partition(shards, train)
    out = []
    for index in indices:
        mine = encode_texts([train[i] for i in shards[index]], tok, splits.labels, cfg.data.seq_len)
        mine_counts = class_counts(mine, splits.labels)
        out.append(ClientData(mine, test, cfg, index, splits.source, [len(s) for s in shards],
                              {"all_clients": info, "note": splits.note, "labels": len(splits.labels),
                               "class_counts": {k: v for k, v in mine_counts.items() if v}}, pad_id=pad_id))
    return out
