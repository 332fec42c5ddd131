"""A small, seeded, E2E-like dataset generated in code: the offline default.

SYNTHETIC DATA: made-up venue names and template sentences, NOT the E2E corpus; scores
on it mean nothing beyond "the pipeline runs". It has E2E's eight attributes and value
sets, MRs in the official CSV ``mr`` style and several varied references per MR (with
the punctuation, hyphens, contractions and ``£`` amounts the converter must handle), so
conversion, grouping, partitioning, encoding and evaluation run on it unchanged.

Splits have disjoint MRs; sizes by default: train 700 MRs (~3.5k references), valid and
test 80 MRs each (~400 references).
"""

from __future__ import annotations

import random
from pathlib import Path

from runtime.data.e2e import ATTRIBUTES, CSV_FILES

SOURCE = "synthetic"
MARKER = "SYNTHETIC"  # file written next to generated CSVs, so loaders label them

NAMES = ("The Copper Kettle", "Bluebell Kitchen", "The Lantern", "Harbour Grill", "Moonrise", "The Old Mill House",
         "Saffron Court", "The Red Fox", "Willow Tree", "The Salt Cellar", "Juniper", "The Gilded Pear",
         "Cornerstone", "The Brass Monkey", "Larkspur", "The Quayside", "Olive and Thyme", "The Drover")
NEAR = ("the Town Hall", "Kings Bridge", "St Anne's Church", "the Market Square", "Riverside Park",
        "the Grand Hotel", "the Museum", "Station Road")
VALUES = {
    "eatType": ("coffee shop", "pub", "restaurant"),
    "food": ("Chinese", "English", "Fast food", "French", "Indian", "Italian", "Japanese"),
    "priceRange": ("cheap", "moderate", "high", "less than £20", "£20-25", "more than £30"),
    "customer rating": ("low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5"),
    "area": ("city centre", "riverside"),
    "familyFriendly": ("yes", "no"),
    "near": NEAR,
}

# Clause templates per attribute; {v} is the value. Several per attribute for variety.
_PRICE = {"cheap": "cheap", "moderate": "moderately priced", "high": "expensive",
          "less than £20": "under £20", "£20-25": "in the £20-25 range", "more than £30": "over £30"}
_CLAUSES = {
    "food": ("serves {v} food", "offers {v} dishes", "has {a} {v} menu"),
    "priceRange": ("is {p}", "has prices that are {p}", "charges prices that are {p}"),
    "customer rating": ("has {a} {v} customer rating", "is rated {v} by customers", "gets {v} reviews"),
    "area": ("is in the {v}", "is located in the {v} area", "can be found in the {v}"),
    "near": ("is near {v}", "sits close to {v}", "is not far from {v}"),
}
_FAMILY = {"yes": ("is family-friendly", "welcomes children", "is kid-friendly"),
           "no": ("isn't family-friendly", "doesn't welcome children", "is not kid-friendly")}
_OPENERS = ("{name} is a {eat}.", "There's a {eat} called {name}.", "{name}, a {eat}, is worth a visit.",
            "If you want a {eat}, try {name}.")


def _random_mr(rng: random.Random) -> dict[str, str]:
    mr = {"name": rng.choice(NAMES)}
    optional = [a for a in ATTRIBUTES if a != "name"]
    for attr in rng.sample(optional, rng.randint(2, min(6, len(optional)))):
        mr[attr] = rng.choice(VALUES[attr])
    return {a: mr[a] for a in ATTRIBUTES if a in mr}  # E2E's attribute order


def format_mr(mr: dict[str, str]) -> str:
    """``{"name": "X", "area": "riverside"}`` -> ``"name[X], area[riverside]"``."""
    return ", ".join(f"{k}[{v}]" for k, v in mr.items())


def _clause(attr: str, value: str, rng: random.Random) -> str:
    if attr == "familyFriendly":
        return rng.choice(_FAMILY[value])
    if attr == "food" and value == "Fast food":
        return rng.choice(("serves fast food", "offers fast food", "has a fast food menu"))
    article = "an" if value[0].lower() in "aeiou" else "a"
    return rng.choice(_CLAUSES[attr]).format(v=value, p=_PRICE.get(value, value), a=article)


def realise(mr: dict[str, str], rng: random.Random) -> str:
    """One reference sentence (or two) for ``mr``, with varied wording and order."""
    name = mr["name"]
    eat = mr.get("eatType", "place")
    clauses = [_clause(a, v, rng) for a, v in mr.items() if a not in ("name", "eatType")]
    rng.shuffle(clauses)
    opener = rng.choice(_OPENERS).format(name=name, eat=eat)
    if not clauses:
        return opener
    if len(clauses) >= 3 and rng.random() < 0.5:
        head, tail = clauses[: len(clauses) // 2], clauses[len(clauses) // 2:]
        return f"{opener} It {_join(head)}. {rng.choice(('It also', 'The venue', 'It'))} {_join(tail)}."
    subject = rng.choice(("It", name, f"This {eat}"))
    return f"{opener} {subject} {_join(clauses)}."


def _join(clauses: list[str]) -> str:
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + " and " + clauses[-1]


def generate_synthetic(seed: int = 0, n_train_mrs: int = 700, n_eval_mrs: int = 80,
                       refs_per_mr: tuple[int, int] = (3, 7)) -> dict[str, list[tuple[str, str]]]:
    """Raw ``(mr, ref)`` rows per split (``train``/``valid``/``test``), CSV-style.

    Deterministic given the arguments. Each MR gets ``refs_per_mr`` (inclusive range)
    distinct references; an MR appears in one split only.
    """
    rng = random.Random(seed)
    wanted = n_train_mrs + 2 * n_eval_mrs
    mrs: dict[str, dict[str, str]] = {}
    for _ in range(wanted * 50):
        if len(mrs) == wanted:
            break
        mr = _random_mr(rng)
        mrs.setdefault(format_mr(mr), mr)
    if len(mrs) < wanted:
        raise ValueError(f"could not draw {wanted} distinct MRs; ask for fewer")
    keys = list(mrs)
    bounds = {"train": (0, n_train_mrs), "valid": (n_train_mrs, n_train_mrs + n_eval_mrs),
              "test": (n_train_mrs + n_eval_mrs, wanted)}
    splits: dict[str, list[tuple[str, str]]] = {}
    for split, (lo, hi) in bounds.items():
        rows = []
        for key in keys[lo:hi]:
            refs: list[str] = []
            target = rng.randint(*refs_per_mr)
            for _ in range(target * 20):
                if len(refs) == target:
                    break
                ref = realise(mrs[key], rng)
                if ref not in refs:
                    refs.append(ref)
            rows.extend((key, ref) for ref in refs)
        splits[split] = rows
    return splits


def write_synthetic_csvs(out_dir: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write the synthetic splits as ``trainset.csv`` / ``devset.csv`` /
    ``testset_w_refs.csv`` (the official layout), a README and the ``SYNTHETIC`` marker
    that makes :func:`runtime.data.locate.load_splits` label them synthetic."""
    import csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in generate_synthetic(seed, **kwargs).items():
        with open(out / CSV_FILES[split], "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            writer.writerow(["mr", "ref"])
            writer.writerows(rows)
    note = f"SYNTHETIC E2E-like data generated by runtime.data.synthetic (seed {seed}); not the E2E corpus.\n"
    (out / "README.md").write_text(note, encoding="utf-8")
    (out / MARKER).write_text(note, encoding="utf-8")
    return out
