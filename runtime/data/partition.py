"""Splitting a training set across federated clients (docs/classification.md for the label skews).

Schemes (strings, as they appear in configs):

``iid``
    A seeded shuffle cut into equal-as-possible shards.
``contiguous``
    Unshuffled consecutive blocks, as the SplitLoRA code did: E2E's train file is ordered
    by MR, so this is a "natural" non-IID split.
``dirichlet:<alpha>[:<attribute>]``
    For each class the share of each client is drawn from Dirichlet(alpha) (classes in
    sorted order, one seeded generator); small alpha -> each client sees few classes.
    The class of an item is its ``.label`` when it has one (classification items:
    :class:`runtime.data.classify.TextExample` / ``EncodedText``; ``<attribute>`` is then
    ignored), so this is the usual label-skew split of e.g. arXiv 2410.22815. E2E has no
    labels, so a categorical MR attribute plays the label (default ``eatType``; MRs
    without it form the category ``"none"``).
``pathological[:<k>]``
    The shard split of McMahan et al. (arXiv 1602.05629): sort the items by class
    (seeded shuffle within each class), cut them into ``n_clients * k`` equal-as-possible
    contiguous shards and give each client ``k`` shards drawn at random (default k = 2).
    A client therefore holds at most ``k`` classes when the shards align with class
    boundaries, and a few more when classes are smaller than a shard or a shard straddles
    a boundary. LoRA-A2's own pathological rule is ``pairs``.
``pairs``
    LoRA-A2's pathological split as its Table 7 states it (arXiv 2410.22815): clients
    2k-1 and 2k share classes 2k-1 and 2k, each holding half of each class's items (a
    seeded half). Classes in sorted order; with more classes than clients, the classes
    are dealt to the client pairs two at a time, in turn (0-based class c goes to pair
    (c // 2) mod (n_clients // 2)), so every item is assigned. Needs an even number of
    clients and at least as many classes.

Every item is assigned exactly once and every client gets at least one item; fewer items
than clients is a ``ValueError``. Label-based schemes on the same items in the same order
give the same split whether the labels are strings or their ids (ids index the sorted
label list, so both sort the classes alike).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.data.e2e import context_attributes, mr_attributes

SCHEMES = ("iid", "contiguous", "dirichlet:<alpha>[:<attribute>]", "pathological[:<classes_per_client>]", "pairs")
DEFAULT_ATTRIBUTE = "eatType"
DEFAULT_SHARDS = 2  # shards (~ classes) per client of the pathological split
LABEL = "label"  # the "attribute" describe_partition reports for labelled items
MISSING = "none"


@dataclass(frozen=True)
class Scheme:
    """A parsed partition scheme."""

    kind: str  # "iid" | "contiguous" | "dirichlet" | "pathological" | "pairs"
    alpha: float | None = None
    attribute: str = DEFAULT_ATTRIBUTE
    classes_per_client: int | None = None  # pathological: shards per client


def parse_scheme(scheme: str) -> Scheme:
    """``"dirichlet:0.5:food"`` -> ``Scheme("dirichlet", 0.5, "food")``,
    ``"pathological:3"`` -> ``Scheme("pathological", classes_per_client=3)``; clear errors."""
    if not isinstance(scheme, str) or not scheme.strip():
        raise ValueError(f"partition scheme must be a non-empty string, one of {SCHEMES}; got {scheme!r}")
    parts = scheme.strip().split(":")
    kind = parts[0].lower()
    if kind in ("iid", "contiguous", "pairs"):
        if len(parts) != 1:
            raise ValueError(f"partition scheme {kind!r} takes no parameters; got {scheme!r}")
        return Scheme(kind)
    if kind == "pathological":
        return Scheme("pathological", classes_per_client=_parse_shards(parts, scheme))
    if kind != "dirichlet":
        raise ValueError(f"unknown partition scheme {scheme!r}; expected one of {SCHEMES}")
    if len(parts) not in (2, 3) or not parts[1]:
        raise ValueError(f"dirichlet needs an alpha: 'dirichlet:<alpha>[:<attribute>]', got {scheme!r}")
    try:
        alpha = float(parts[1])
    except ValueError:
        raise ValueError(f"dirichlet alpha must be a number, got {parts[1]!r} in {scheme!r}") from None
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"dirichlet alpha must be a finite number > 0, got {alpha} in {scheme!r}")
    attribute = parts[2].strip() if len(parts) == 3 else DEFAULT_ATTRIBUTE
    if not attribute:
        raise ValueError(f"empty attribute name in {scheme!r}")
    return Scheme("dirichlet", alpha, attribute)


def _parse_shards(parts: list[str], scheme: str) -> int:
    if len(parts) == 1:
        return DEFAULT_SHARDS
    if len(parts) != 2 or not parts[1].strip():
        raise ValueError(f"pathological takes one optional integer: 'pathological[:<classes_per_client>]', "
                         f"got {scheme!r}")
    try:
        k = int(parts[1])
    except ValueError:
        raise ValueError(f"pathological classes_per_client must be an integer, got {parts[1]!r} "
                         f"in {scheme!r}") from None
    if k < 1:
        raise ValueError(f"pathological classes_per_client must be >= 1, got {k} in {scheme!r}")
    return k


def _attributes(item: Mapping[str, str] | str | object) -> Mapping[str, str]:
    if isinstance(item, Mapping):
        return item
    if isinstance(item, str):
        return mr_attributes(item)
    mr, context = getattr(item, "mr", None), getattr(item, "context", None)  # an E2EItem
    if isinstance(mr, str) and mr:
        return mr_attributes(mr)
    if isinstance(context, str) and context:
        return context_attributes(context)
    raise TypeError(f"cannot read MR attributes from {type(item).__name__}; pass dicts, raw MR strings, "
                    "items with .mr / .context, or labelled items (.label)")


def _is_labelled(item: object) -> bool:
    # Mappings and strings are E2E MRs, even if an MR happened to have a "label" slot.
    return not isinstance(item, (Mapping, str)) and hasattr(item, "label")


def categories(data: Sequence, attribute: str = DEFAULT_ATTRIBUTE) -> list[str]:
    """The category of every item: ``str(item.label)`` for labelled items (``attribute``
    ignored), else its value of the MR ``attribute``, or ``"none"``."""
    return [str(item.label) if _is_labelled(item) else str(_attributes(item).get(attribute, MISSING))
            for item in data]


def _class_keys(data: Sequence, attribute: str) -> list[Hashable]:
    """Sortable class keys: the raw labels when every item has one (so integer ids sort
    numerically, in the same order as the sorted label strings they index), else the
    :func:`categories` strings."""
    if data and all(_is_labelled(item) for item in data):
        keys = [item.label for item in data]
        if len({type(k) for k in keys}) == 1:
            return keys
    return list(categories(data, attribute))


def partition(data: int | Sequence, n_clients: int, scheme: str = "iid", seed: int = 0) -> list[list[int]]:
    """Indices of each client's items.

    ``data``: the number of items (``iid`` / ``contiguous`` only), or one entry per item:
    a labelled item (``.label``) or its MR attributes (a dict, a raw MR string, or an
    object with ``.mr``). Deterministic in (data, n_clients, scheme, seed); client lists
    are sorted.
    """
    spec = parse_scheme(scheme)
    n_items = data if isinstance(data, int) else len(data)
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
        raise ValueError(f"n_clients must be an integer >= 1, got {n_clients!r}")
    if n_items < n_clients:
        raise ValueError(f"cannot give each of {n_clients} clients at least one item: only {n_items} items "
                         "(use fewer clients or more data)")
    if spec.kind == "contiguous":
        return [list(map(int, block)) for block in np.array_split(np.arange(n_items), n_clients)]
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        order = rng.permutation(n_items)
        return [sorted(map(int, shard)) for shard in np.array_split(order, n_clients)]
    if isinstance(data, int):
        raise ValueError(f"{scheme!r} needs each item's label or MR attributes, not just the number of items")
    keys = _class_keys(data, spec.attribute)
    if spec.kind == "pathological":
        return _pathological(keys, n_clients, spec.classes_per_client or DEFAULT_SHARDS, rng)
    if spec.kind == "pairs":
        return _pairs(keys, n_clients, rng)
    return _dirichlet(keys, n_clients, spec.alpha, rng)


def _by_class(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    by_cat: dict[Hashable, list[int]] = {}
    for i, c in enumerate(keys):
        by_cat.setdefault(c, []).append(i)
    return by_cat


def _dirichlet(cats: Sequence[Hashable], n_clients: int, alpha: float,
               rng: np.random.Generator) -> list[list[int]]:
    by_cat = _by_class(cats)
    clients: list[list[int]] = [[] for _ in range(n_clients)]
    for cat in sorted(by_cat):  # sorted: the draw order must not depend on item order
        idx = np.array(by_cat[cat])
        rng.shuffle(idx)
        shares = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).round().astype(int)
        for k, part in enumerate(np.split(idx, cuts)):
            clients[k].extend(int(i) for i in part)
    # Small alpha leaves clients empty. Give each one item from the currently largest
    # client: deterministic, keeps the skew, and is a no-op in the usual case.
    for k in range(n_clients):
        if not clients[k]:
            donor = max(range(n_clients), key=lambda j: (len(clients[j]), -j))
            clients[donor].sort()
            clients[k].append(clients[donor].pop(int(rng.integers(len(clients[donor])))))
    return [sorted(c) for c in clients]


def _pathological(cats: Sequence[Hashable], n_clients: int, shards_per_client: int,
                  rng: np.random.Generator) -> list[list[int]]:
    n_shards = n_clients * shards_per_client
    if len(cats) < n_shards:
        raise ValueError(f"pathological:{shards_per_client} cuts the data into {n_clients} x {shards_per_client} "
                         f"= {n_shards} shards but there are only {len(cats)} items (use fewer clients or "
                         "fewer classes per client)")
    by_cat = _by_class(cats)
    ordered: list[int] = []
    for cat in sorted(by_cat):  # class-sorted item order; within a class, a seeded shuffle
        idx = np.array(by_cat[cat])
        rng.shuffle(idx)
        ordered.extend(int(i) for i in idx)
    # n_items >= n_shards, so every shard (and every client) is non-empty.
    shards = np.array_split(np.array(ordered), n_shards)
    owner = rng.permutation(n_shards)  # shard owner[j] goes to client j // shards_per_client
    return [sorted(int(i) for j in range(k * shards_per_client, (k + 1) * shards_per_client)
                   for i in shards[owner[j]])
            for k in range(n_clients)]


def _pairs(cats: Sequence[Hashable], n_clients: int, rng: np.random.Generator) -> list[list[int]]:
    by_cat = _by_class(cats)
    if n_clients % 2 or len(by_cat) < n_clients:
        raise ValueError(f"pairs needs an even number of clients and at least as many classes; got {n_clients} "
                         f"clients and {len(by_cat)} classes")
    clients: list[list[int]] = [[] for _ in range(n_clients)]
    for c, cat in enumerate(sorted(by_cat)):
        pair = (c // 2) % (n_clients // 2)
        idx = np.array(by_cat[cat])
        rng.shuffle(idx)
        first, second = np.array_split(idx, 2)  # a class of one item goes whole to the first client
        clients[2 * pair].extend(int(i) for i in first)
        clients[2 * pair + 1].extend(int(i) for i in second)
    if empty := [k for k, c in enumerate(clients) if not c]:
        raise ValueError(f"pairs leaves clients {empty} without items: their classes have one item each")
    return [sorted(c) for c in clients]


def describe_partition(parts: Sequence[Sequence[int]], data: Sequence | None = None,
                       attribute: str = DEFAULT_ATTRIBUTE) -> dict:
    """JSON-able summary: sizes and, given the items, each client's category histogram
    and the share of its largest category.

    For labelled items (``.label``) the histograms are over labels (``"attribute":
    "label"``) and the summary adds ``classes_per_client`` (distinct labels per client)
    with ``size_min`` / ``size_max`` / ``classes_min`` / ``classes_max``.
    """
    sizes = [len(p) for p in parts]
    out: dict = {"n_clients": len(parts), "total": sum(sizes), "sizes": sizes}
    if data is not None:
        labelled = bool(data) and all(_is_labelled(item) for item in data)
        cats = categories(data, attribute)
        hists = [dict(sorted(Counter(cats[i] for i in p).items())) for p in parts]
        out["attribute"] = LABEL if labelled else attribute
        out["histograms"] = hists
        out["dominant_share"] = [round(max(h.values()) / max(1, n), 4) if h else 0.0
                                 for h, n in zip(hists, sizes)]
        out["overall"] = dict(sorted(Counter(cats).items()))
        if labelled:
            n_classes = [len(h) for h in hists]
            out["classes_per_client"] = n_classes
            out["size_min"], out["size_max"] = min(sizes, default=0), max(sizes, default=0)
            out["classes_min"], out["classes_max"] = min(n_classes, default=0), max(n_classes, default=0)
    return out
