"""Client partitioners: iid, contiguous, dirichlet over an MR attribute or a label, pathological."""

from __future__ import annotations

import json
import statistics
from collections import Counter

import pytest

from runtime.data.classify import EncodedText, TextExample
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


# --------------------------------------------------------------------------- labelled items


def _labelled(n_classes: int, per_class: int) -> list[TextExample]:
    # Interleaved (not class-sorted) so that nothing depends on the item order being sorted.
    return [TextExample(f"text {i} of {c}", f"intent_{c:02d}") for i in range(per_class) for c in range(n_classes)]


@pytest.fixture(scope="module")
def intents() -> list[TextExample]:
    return _labelled(77, 40)  # BANKING77-sized label set


def _classes_per_client(parts, items) -> list[int]:
    return describe_partition(parts, items)["classes_per_client"]


def test_categories_of_labelled_items():
    items = [TextExample("a", "x"), TextExample("b", "y")]
    assert categories(items) == ["x", "y"]
    assert categories(items, "food") == ["x", "y"]  # the attribute only applies to E2E MRs
    assert categories([EncodedText([1, 2], 3)]) == ["3"]


@pytest.mark.parametrize("scheme", ["dirichlet:0.01", "dirichlet:0.5", "pathological", "pathological:3"])
def test_label_schemes_cover_and_are_deterministic(intents, scheme):
    parts = partition(intents, 30, scheme, seed=4)
    _check_exact_cover(parts, len(intents))
    assert partition(intents, 30, scheme, seed=4) == parts
    assert partition(intents, 30, scheme, seed=5) != parts


@pytest.mark.parametrize("scheme", ["dirichlet:0.05", "pathological:2"])
def test_label_ids_and_names_split_alike(scheme):
    # Label ids index the sorted names, so integer labels must sort like the names do
    # (intent_10 after intent_09, id 10 after id 9): the runtime may partition either.
    items = _labelled(12, 15)
    names = sorted({e.label for e in items})
    encoded = [EncodedText([0], names.index(e.label)) for e in items]
    assert partition(items, 5, scheme, seed=2) == partition(encoded, 5, scheme, seed=2)


def test_dirichlet_over_labels_small_alpha_means_few_classes(intents):
    means = {}
    for scheme in ("dirichlet:0.01", "dirichlet:0.5", "iid"):
        per_client = [statistics.mean(_classes_per_client(partition(intents, 30, scheme, seed=s), intents))
                      for s in range(3)]
        means[scheme] = statistics.mean(per_client)
    assert means["dirichlet:0.01"] < 10 < means["dirichlet:0.5"] < means["iid"], means
    # iid: ~103 items per client drawn over 77 classes -> 77 * (1 - (76/77)^103) ~ 57 expected
    assert means["iid"] > 50, means


def test_dirichlet_over_labels_never_leaves_a_client_empty():
    items = _labelled(3, 10)  # 3 classes, 20 clients: alpha 0.001 gives each class to ~1 client
    parts = partition(items, 20, "dirichlet:0.001", seed=1)
    _check_exact_cover(parts, 30)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_pathological_aligned_shards(k):
    # 10 classes x 40 items, 10 clients: 10k shards of 40/k items, each inside one class,
    # so every client holds k shards and at most k classes (fewer if two shards share one).
    items = _labelled(10, 40)
    parts = partition(items, 10, f"pathological:{k}", seed=7)
    _check_exact_cover(parts, 400)
    desc = describe_partition(parts, items)
    assert desc["sizes"] == [40] * 10
    assert all(1 <= n <= k for n in desc["classes_per_client"])
    if k == 1:
        assert desc["classes_per_client"] == [1] * 10 and desc["dominant_share"] == [1.0] * 10
    else:
        assert statistics.mean(desc["classes_per_client"]) > k - 1  # repeats are the exception
    for p in parts:  # a shard never mixes classes here: each class's count is a multiple of 40 / k
        assert all(n % (40 // k) == 0 for n in Counter(items[i].label for i in p).values())


def test_pathological_unaligned_is_balanced_and_skewed(intents):
    parts = partition(intents, 30, "pathological", seed=0)
    desc = describe_partition(parts, intents)
    assert desc["size_max"] - desc["size_min"] <= 2  # 3080 items in 60 near-equal shards
    # A shard of ~51 items spans at most 3 classes of 40, so a client has 2..6.
    assert 2 <= desc["classes_min"] and desc["classes_max"] <= 6, desc["classes_per_client"]


def test_pathological_needs_enough_items_and_works_on_e2e(train_mrs):
    with pytest.raises(ValueError, match="shards"):
        partition(_labelled(2, 5), 4, "pathological:3", seed=0)  # 10 items, 12 shards
    parts = partition(train_mrs, 4, "pathological:1", seed=0)  # E2E: classes = eatType values
    _check_exact_cover(parts, len(train_mrs))


def test_pairs_is_lora_a2s_rule():
    # 4 classes x 10 items, 4 clients: clients 0 and 1 share classes 0 and 1, half each; 2 and 3 the rest.
    items = _labelled(4, 10)
    parts = partition(items, 4, "pairs", seed=5)
    _check_exact_cover(parts, 40)
    hists = describe_partition(parts, items)["histograms"]
    assert hists == [{"intent_00": 5, "intent_01": 5}] * 2 + [{"intent_02": 5, "intent_03": 5}] * 2
    other = partition(items, 4, "pairs", seed=6)  # the seed picks which half, not which classes
    assert other != parts and describe_partition(other, items)["histograms"] == hists


def test_pairs_deals_many_classes_to_pairs_in_turn(intents):
    parts = partition(intents, 30, "pairs", seed=0)
    _check_exact_cover(parts, len(intents))
    hists = describe_partition(parts, intents)["histograms"]
    for k, h in enumerate(hists):  # 0-based class c goes to pair (c // 2) mod 15, 20 items to each client
        assert sorted(h) == [f"intent_{c:02d}" for c in range(77) if (c // 2) % 15 == k // 2]
        assert set(h.values()) == {20}
    assert hists[0] == hists[1] and len(hists[0]) == 6 and len(hists[29]) == 4  # 77 classes over 15 pairs


@pytest.mark.parametrize("n_clients, n_classes", [(3, 6), (4, 3)])
def test_pairs_needs_even_clients_and_enough_classes(n_clients, n_classes):
    with pytest.raises(ValueError, match="even number of clients and at least as many classes"):
        partition(_labelled(n_classes, 4), n_clients, "pairs", seed=0)
    with pytest.raises(ValueError, match="no parameters"):
        parse_scheme("pairs:2")


@pytest.mark.parametrize("scheme", ["dirichlet:0.5", "pathological", "pathological:2", "pairs"])
def test_label_schemes_refuse_a_bare_count(scheme):
    with pytest.raises(ValueError, match="label"):
        partition(100, 4, scheme)


def test_describe_labelled_items(intents):
    parts = partition(intents, 6, "dirichlet:0.1", seed=3)
    desc = json.loads(json.dumps(describe_partition(parts, intents)))
    assert desc["attribute"] == "label"
    assert desc["classes_per_client"] == [len(h) for h in desc["histograms"]]
    assert desc["size_min"] == min(desc["sizes"]) and desc["size_max"] == max(desc["sizes"])
    assert desc["classes_min"] == min(desc["classes_per_client"])
    assert desc["classes_max"] == max(desc["classes_per_client"])
    assert len(desc["overall"]) == 77
    assert "classes_per_client" not in describe_partition(parts)  # sizes only without the items


def test_parse_pathological():
    assert parse_scheme("pathological") == Scheme("pathological", classes_per_client=2)
    assert parse_scheme("Pathological:5") == Scheme("pathological", classes_per_client=5)


@pytest.mark.parametrize("scheme,match", [
    ("pathological:x", "must be an integer"),
    ("pathological:1.5", "must be an integer"),
    ("pathological:0", ">= 1"),
    ("pathological:", "one optional integer"),
    ("pathological:2:3", "one optional integer"),
])
def test_bad_pathological_schemes(scheme, match):
    with pytest.raises(ValueError, match=match):
        parse_scheme(scheme)
