"""Client partitioners: iid, contiguous, dirichlet over an MR attribute."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from runtime.data.e2e import convert_rows
from runtime.data.partition import Scheme, categories, describe_partition, parse_scheme, partition
from runtime.data.synthetic import generate_synthetic


@pytest.fixture(scope="module")
def train_mrs() -> list[str]:
    return [mr for mr, _ref in generate_synthetic(seed=3)["train"]]


def _check_exact_cover(parts, n):
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))  # every item exactly once
    assert all(len(p) >= 1 for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "contiguous", "dirichlet:0.5", "dirichlet:0.01", "dirichlet:5:food"])
def test_exact_cover_and_determinism(train_mrs, scheme):
    parts = partition(train_mrs, 7, scheme, seed=11)
    _check_exact_cover(parts, len(train_mrs))
    assert sum(describe_partition(parts)["sizes"]) == len(train_mrs)
    assert partition(train_mrs, 7, scheme, seed=11) == parts
    if scheme != "contiguous":
        assert partition(train_mrs, 7, scheme, seed=12) != parts


def test_iid_and_contiguous_shapes():
    iid = partition(10, 3, "iid", seed=0)
    assert sorted(len(p) for p in iid) == [3, 3, 4]
    assert iid != [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]  # shuffled
    assert partition(10, 3, "contiguous") == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def _concentration(parts, cats) -> list[float]:
    """Per category: the share of its items held by the client holding most of them."""
    totals = Counter(cats)
    return [max(sum(cats[i] == c for i in p) for p in parts) / n for c, n in sorted(totals.items())]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_small_alpha_is_skewed_iid_is_not(train_mrs, seed):
    cats = categories(train_mrs)  # eatType: coffee shop / pub / restaurant / none
    skewed_parts = partition(train_mrs, 4, "dirichlet:0.01", seed=seed)
    skewed = describe_partition(skewed_parts, train_mrs)
    assert sum(c >= 0.95 for c in _concentration(skewed_parts, cats)) >= 3  # categories not shared
    assert sum(share >= 0.9 for share in skewed["dominant_share"]) >= 2, skewed  # clients single-category
    iid_parts = partition(train_mrs, 4, "iid", seed=seed)
    iid = describe_partition(iid_parts, train_mrs)
    assert max(_concentration(iid_parts, cats)) < 0.35  # each category spread ~1/4 per client
    overall = max(iid["overall"].values()) / iid["total"]
    assert all(abs(share - overall) < 0.08 for share in iid["dominant_share"]), iid


def test_missing_attribute_is_its_own_category():
    mrs = ["name[A], eatType[pub]", "name[B]", "name[C], eatType[pub]", "name[D]"]
    assert categories(mrs) == ["pub", "none", "pub", "none"]
    assert categories(mrs, "food") == ["none"] * 4
    # E2EItems work too, from the raw MR or (read from a text file) the context.
    items = convert_rows([("name[A], eatType[pub]", "A is a pub.")])
    assert categories(items) == ["pub"]
    assert categories([type(items[0])(items[0].context, items[0].completion)]) == ["pub"]


def test_every_client_gets_an_item_even_with_tiny_alpha():
    mrs = ["name[A], eatType[pub]"] * 30 + ["name[B], eatType[restaurant]"] * 30
    parts = partition(mrs, 40, "dirichlet:0.001", seed=5)
    _check_exact_cover(parts, 60)


def test_too_many_clients():
    with pytest.raises(ValueError, match="at least one item"):
        partition(3, 4, "iid")
    with pytest.raises(ValueError, match="at least one item"):
        partition(["name[A]"] * 2, 3, "dirichlet:1")
    with pytest.raises(ValueError, match="n_clients"):
        partition(10, 0, "iid")


def test_describe_is_json_able(train_mrs):
    desc = describe_partition(partition(train_mrs, 3, "dirichlet:0.3", seed=1), train_mrs, "eatType")
    again = json.loads(json.dumps(desc))
    assert again["n_clients"] == 3 and again["attribute"] == "eatType"
    assert [sum(h.values()) for h in again["histograms"]] == again["sizes"]


def test_parse_scheme():
    assert parse_scheme("iid") == Scheme("iid")
    assert parse_scheme("dirichlet:0.5") == Scheme("dirichlet", 0.5, "eatType")
    assert parse_scheme("Dirichlet:2:food") == Scheme("dirichlet", 2.0, "food")


@pytest.mark.parametrize("scheme,match", [
    ("dirichlet:abc", "must be a number"),
    ("dirichlet:0", "> 0"),
    ("dirichlet:-1", "> 0"),
    ("dirichlet:nan", "> 0"),
    ("dirichlet", "needs an alpha"),
    ("dirichlet:1:", "empty attribute"),
    ("iid:3", "takes no parameters"),
    ("shards", "unknown partition scheme"),
    ("", "non-empty"),
])
def test_bad_schemes(scheme, match):
    with pytest.raises(ValueError, match=match):
        parse_scheme(scheme)
    with pytest.raises(ValueError, match=match):
        partition(20, 2, scheme)


def test_dirichlet_needs_attributes():
    with pytest.raises(ValueError, match="attributes"):
        partition(100, 2, "dirichlet:1")
