"""Splitting a training set across federated clients (REFERENCE.md §6).

Schemes (strings, as they appear in configs):

``iid``
    A seeded shuffle cut into equal-as-possible shards.
``contiguous``
    Unshuffled consecutive blocks, as the SplitLoRA code did: E2E's train file is ordered
    by MR, so this is a "natural" non-IID split.
``dirichlet:<alpha>[:<attribute>]``
    E2E has no labels, so a categorical MR attribute plays the label (default
    ``eatType``; MRs without it form the category ``"none"``). For each category the
    share of each client is drawn from Dirichlet(alpha); small alpha -> each client sees
    few categories.

Every item is assigned exactly once and every client gets at least one item; fewer items
than clients is a ``ValueError``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.data.e2e import context_attributes, mr_attributes

SCHEMES = ("iid", "contiguous", "dirichlet:<alpha>[:<attribute>]")
DEFAULT_ATTRIBUTE = "eatType"
MISSING = "none"


@dataclass(frozen=True)
class Scheme:
    """A parsed partition scheme."""

    kind: str  # "iid" | "contiguous" | "dirichlet"
    alpha: float | None = None
    attribute: str = DEFAULT_ATTRIBUTE


def parse_scheme(scheme: str) -> Scheme:
    """``"dirichlet:0.5:food"`` -> ``Scheme("dirichlet", 0.5, "food")``; clear errors."""
    if not isinstance(scheme, str) or not scheme.strip():
        raise ValueError(f"partition scheme must be a non-empty string, one of {SCHEMES}; got {scheme!r}")
    parts = scheme.strip().split(":")
    kind = parts[0].lower()
    if kind in ("iid", "contiguous"):
        if len(parts) != 1:
            raise ValueError(f"partition scheme {kind!r} takes no parameters; got {scheme!r}")
        return Scheme(kind)
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
    raise TypeError(f"cannot read MR attributes from {type(item).__name__}; pass dicts, raw MR strings "
                    "or items with .mr / .context")


def categories(data: Sequence, attribute: str = DEFAULT_ATTRIBUTE) -> list[str]:
    """The category of every item: its value of ``attribute``, or ``"none"``."""
    return [str(_attributes(item).get(attribute, MISSING)) for item in data]


def partition(data: int | Sequence, n_clients: int, scheme: str = "iid", seed: int = 0) -> list[list[int]]:
    """Indices of each client's items.

    ``data``: the number of items (``iid`` / ``contiguous`` only), or one entry per item
    giving its MR attributes (a dict, a raw MR string, or an object with ``.mr``).
    Deterministic in (data, n_clients, scheme, seed); client lists are sorted.
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
        raise ValueError(f"{scheme!r} needs each item's MR attributes, not just the number of items")
    return _dirichlet(categories(data, spec.attribute), n_clients, spec.alpha, rng)


def _dirichlet(cats: Sequence[str], n_clients: int, alpha: float, rng: np.random.Generator) -> list[list[int]]:
    by_cat: dict[str, list[int]] = {}
    for i, c in enumerate(cats):
        by_cat.setdefault(c, []).append(i)
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


def describe_partition(parts: Sequence[Sequence[int]], data: Sequence | None = None,
                       attribute: str = DEFAULT_ATTRIBUTE) -> dict:
    """JSON-able summary: sizes and, given the items, each client's ``attribute`` histogram
    and the share of its largest category."""
    sizes = [len(p) for p in parts]
    out: dict = {"n_clients": len(parts), "total": sum(sizes), "sizes": sizes}
    if data is not None:
        cats = categories(data, attribute)
        hists = [dict(sorted(Counter(cats[i] for i in p).items())) for p in parts]
        out["attribute"] = attribute
        out["histograms"] = hists
        out["dominant_share"] = [round(max(h.values()) / max(1, n), 4) if h else 0.0
                                 for h, n in zip(hists, sizes)]
        out["overall"] = dict(sorted(Counter(cats).items()))
    return out
