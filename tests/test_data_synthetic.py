"""The seeded synthetic E2E-like dataset flows through the whole data pipeline."""

from __future__ import annotations

from runtime.data.dataset import collate, encode_items
from runtime.data.e2e import ATTRIBUTES, convert_rows, group_by_mr, load_csv, parse_mr, read_csv
from runtime.data.locate import load_splits
from runtime.data.partition import partition
from runtime.data.synthetic import MARKER, generate_synthetic, write_synthetic_csvs


def test_deterministic_given_seed():
    assert generate_synthetic(seed=4) == generate_synthetic(seed=4)
    assert generate_synthetic(seed=4) != generate_synthetic(seed=5)


def test_shape_and_several_refs_per_mr():
    splits = generate_synthetic(seed=0)
    assert 3000 <= len(splits["train"]) <= 4500
    mrs = {split: {mr for mr, _ in rows} for split, rows in splits.items()}
    assert not (mrs["train"] & mrs["valid"]) and not (mrs["train"] & mrs["test"]) and not (mrs["valid"] & mrs["test"])
    for split in ("valid", "test"):
        groups = group_by_mr(convert_rows(splits[split]))
        assert len(groups) == 80
        assert min(len(g.refs) for g in groups) >= 3
        assert all(len(set(g.refs)) == len(g.refs) for g in groups)  # refs differ
    for mr, _ref in splits["train"][:200]:
        keys = [k for k, _ in parse_mr(mr)]
        assert keys[0] == "name" and set(keys) <= set(ATTRIBUTES)
        assert keys == sorted(keys, key=ATTRIBUTES.index)  # E2E attribute order


def test_flows_through_grouping_and_encoding():
    splits = generate_synthetic(seed=1, n_train_mrs=50, n_eval_mrs=10)
    items = convert_rows(splits["test"], "test")
    groups = group_by_mr(items)
    assert len(groups) == 10 and sum(len(g.tok_refs) for g in groups) == len(items)
    batch = collate(encode_items(items[:8]))
    assert batch["input_ids"].shape[0] == 8 and batch["loss_mask"].sum() > 0
    parts = partition(convert_rows(splits["train"]), 3, "dirichlet:0.5:food", seed=0)
    assert sum(map(len, parts)) == len(splits["train"])


def test_csv_files_round_trip_and_are_labelled(tmp_path, monkeypatch):
    monkeypatch.delenv("SPLITLORA_DATA", raising=False)
    out = write_synthetic_csvs(tmp_path / "syn", seed=2, n_train_mrs=40, n_eval_mrs=8)
    assert (out / MARKER).is_file()
    raw = generate_synthetic(seed=2, n_train_mrs=40, n_eval_mrs=8)
    assert read_csv(out / "trainset.csv") == raw["train"]
    assert load_csv(out / "testset_w_refs.csv") == convert_rows(raw["test"], "test")
    splits = load_splits(out)
    assert splits.is_synthetic and splits.source == "synthetic" and "SYNTHETIC" in splits.note
    assert len(splits.test) == len(raw["test"])
