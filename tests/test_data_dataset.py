"""Encoding, loss masks, padding and the deterministic, resumable loader."""

from __future__ import annotations

import pytest
import torch

from runtime.data.dataset import (
    E2EDataset,
    build_loader,
    collate,
    encode_example,
    encode_items,
    epoch_order,
    length_stats,
)
from runtime.data.e2e import E2EItem, load_csv
from runtime.data.tokenizer import EOS_ID, encode
from tests.e2e_data import E2E, needs_data

CTX = "name : Alimentum | area : city centre"
COMP = "Alimentum is in the city centre ."


def _items(n: int = 10) -> list[E2EItem]:
    words = ["good", "cheap", "near the river", "family - friendly", "rated 5 out of 5", "a pub"]
    return [E2EItem(f"name : Place{i} | area : riverside", " ".join(["It is"] + words[: 1 + i % 6]) + " .")
            for i in range(n)]


def test_encode_example_layout():
    ex = encode_example(CTX, COMP)
    ctx, comp = encode(CTX), encode(" " + COMP)
    assert ex.ids == ctx + [EOS_ID] + comp + [EOS_ID]
    assert ex.n_context == len(ctx) and not ex.truncated


def test_trailing_space_of_text_format_is_stripped():
    assert encode_example(CTX, COMP + " ").ids == encode_example(CTX, COMP).ids


def test_mask_covers_exactly_the_completion_and_final_eos():
    batch = collate([encode_example(CTX, COMP)])
    ctx, comp = encode(CTX), encode(" " + COMP)
    T = len(ctx) + 1 + len(comp) + 1 - 1
    assert batch["input_ids"].shape == batch["targets"].shape == batch["loss_mask"].shape == (1, T)
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.long
    assert batch["loss_mask"].dtype == torch.float32
    ids = ctx + [EOS_ID] + comp + [EOS_ID]
    assert batch["input_ids"][0].tolist() == ids[:-1]
    assert batch["targets"][0].tolist() == ids[1:]
    mask = batch["loss_mask"][0].bool()
    assert batch["targets"][0][mask].tolist() == comp + [EOS_ID]
    assert mask.tolist() == [False] * len(ctx) + [True] * (len(comp) + 1)
    # The context (and the separator 50256 after it) are never loss targets.
    assert batch["input_ids"][0][len(ctx)].item() == EOS_ID and not mask[len(ctx) - 1]


def test_trim_and_fixed_padding_give_the_same_masked_targets():
    examples = encode_items(_items(6))
    trim, fixed = collate(examples), collate(examples, seq_len=64)
    T = trim["input_ids"].shape[1]
    assert T == max(len(e.ids) - 1 for e in examples) and fixed["input_ids"].shape == (6, 64)
    for key in ("input_ids", "targets", "loss_mask"):
        assert torch.equal(fixed[key][:, :T], trim[key])
    assert fixed["loss_mask"][:, T:].sum() == 0 and (fixed["input_ids"][:, T:] == 0).all()
    assert torch.equal(trim["targets"][trim["loss_mask"].bool()], fixed["targets"][fixed["loss_mask"].bool()])
    # Pad id 50256 is an option; padding never carries loss.
    alt = collate(examples, pad_id=EOS_ID)
    assert torch.equal(alt["loss_mask"], trim["loss_mask"])


def test_truncation_is_counted():
    items = _items(6)
    full = encode_items(items)
    cap = min(len(e.ids) for e in full) - 1  # shortest example fits exactly
    ds = E2EDataset.from_items(items, max_len=cap)
    assert ds.n_truncated == sum(len(e.ids) - 1 > cap for e in full) > 0
    assert all(len(e.ids) - 1 <= cap for e in ds.examples)
    assert length_stats(full, seq_len=cap)["truncated"] == ds.n_truncated
    with pytest.raises(ValueError, match="no completion token"):
        encode_example(CTX, COMP, max_len=3)
    # Fixed-length batches shorter than an example cut it the same way.
    cut = collate(full, seq_len=cap)
    assert cut["input_ids"].shape == (6, cap)


def test_loader_is_seeded_resumable_and_complete():
    ds = E2EDataset.from_items(_items(23))
    indices = list(range(3, 23))  # a client's subset

    def run(**kw):
        return [b["input_ids"] for b in build_loader(ds, indices, 4, seed=7, **kw)]

    first, again = run(epoch=0), run(epoch=0)
    assert len(first) == 5 and all(torch.equal(a, b) for a, b in zip(first, again))
    assert epoch_order(indices, 7, 0) != epoch_order(indices, 7, 1)
    assert sorted(epoch_order(indices, 7, 1)) == indices
    resumed = run(epoch=0, skip_batches=2)
    assert len(resumed) == 3 and all(torch.equal(a, b) for a, b in zip(resumed, first[2:]))
    assert run(epoch=0, skip_batches=5) == []
    with pytest.raises(ValueError, match="skip_batches"):
        run(epoch=0, skip_batches=6)
    assert epoch_order(indices, 7, 0, shuffle=False) == indices
    assert len(run(epoch=0, drop_last=True)) == 5


@needs_data
def test_trainset_length_statistics():
    """The recipe's token statistics (microsoft/LoRA examples/NLG): mean 53, median 53, p99 84, max 114
    tokens on trainset.csv.

    With the tokenised completions we get mean 53.3, median 53, p99 83 (420 of 42,061
    examples reach 84: 0.9986 %, just under 1 %) and max 115; the recipe's exact p99/max come out
    when the raw (untokenised) CSV references are encoded instead. Keeping the text
    format's trailing space would add one " " token to every example (mean 54.3): the
    reference strips it, and so do we.
    """
    items = load_csv(E2E / "trainset.csv")
    stats = length_stats(encode_items(items))
    assert stats["n"] == 42061 and stats["truncated"] == 0
    assert round(stats["mean"]) == 53 and stats["median"] == 53
    assert abs(stats["p99"] - 84) <= 1 and abs(stats["max"] - 114) <= 1
    assert not any(i.completion.endswith(" ") for i in items)  # stored without the trailing space
