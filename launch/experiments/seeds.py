"""Runs repeated over seeds: each cell's scores per seed, and paired gaps between methods.

    # from the output folders of the E2E recipe, one per seed (or all in one):
    python -m launch.experiments.seeds runs/pt-s110 runs/pt-s111 runs/pt-s112
    # from a committed results file (a list of run records, e.g. benchmarks/experiments/mini-cpu/results.json):
    python -m launch.experiments.seeds benchmarks/experiments/mini-cpu/results.json --against cenlora

A cell is (method, partition, fine-tuning, rank); a run belongs to it with its ``train.seed``.
A run with ``lora.layers`` or ``fed.client_lr_scale`` set is a variant of its method
("cenlora [layers 1..3]", "splitlora [client lr x3]"), paired with the plain method like any other.
For every cell run with two seeds or more: the score per seed, mean and spread (max - min).
Then, for every method against ``--against`` (CenLoRA by default), the gap per rank and seed
where both ran with that seed (paired runs: same seed, same examples), its mean, how many
gaps are below zero, and the exact two-sided sign test over all pairs (ties dropped): the
chance of a split at least that lopsided if each gap were as likely below zero as above.
Only runs decoded with ``--repeat-scope`` and scored against ``--style`` references count.
"""

from __future__ import annotations

import argparse
import json
import sys
from math import comb
from pathlib import Path
from typing import Any

from launch.experiments.paper_table import collect
from launch.experiments.tables import DASH, md_table

Cell = tuple[str, str, str, int]  # (method, partition, finetune, r)


def _cell(rec: dict[str, Any]) -> Cell:
    method = rec["method"]
    partition = DASH if method == "cenlora" else rec.get("partition", DASH)
    tags = [f"layers {rec['layers']}"] if rec.get("layers") else []
    tags += [f"client lr x{rec['client_lr_scale']:g}"] if rec.get("client_lr_scale", 1.0) != 1.0 else []
    variant = f"{method} [{', '.join(tags)}]" if tags else method
    return variant, partition, rec.get("finetune", "lora"), int(rec["r"])


def _scope(rec: dict[str, Any], style: str) -> str | None:
    """How the scored texts were decoded: the results-file field, else the one in the scores."""
    return rec.get("repeat_scope") or (rec["scores"].get(style) or {}).get("repeat_scope")


def load_records(sources: list[Path]) -> list[dict[str, Any]]:
    """Run records from recipe output folders (their ``runs/``) or JSON files of records."""
    records: list[dict[str, Any]] = []
    for src in sources:
        if src.is_dir():
            if not (src / "runs").is_dir():
                raise ValueError(f"{src}: no runs/ folder (expected a recipe's --out folder)")
            got = collect(src)
        elif src.is_file():
            data = json.loads(src.read_text())
            got = data["runs"] if isinstance(data, dict) and "runs" in data else data
            if not isinstance(got, list):
                raise ValueError(f"{src}: expected a list of run records or a paper_table.json")
        else:
            raise ValueError(f"{src}: no such file or folder")
        missing = [r.get("run") or r.get("dir") or "?" for r in got if "seed" not in r]
        if missing:
            raise ValueError(f"{src}: records without a seed ({', '.join(missing[:3])}): "
                             "pass the recipe's output folder instead, its runs' configs hold the seed")
        records += [dict(r, source=str(src)) for r in got]
    return records


def scores_by_cell(records: list[dict[str, Any]], style: str, metric: str,
                   scope: str) -> dict[Cell, dict[int, float]]:
    """{cell: {seed: score}}; two runs of one cell and seed are refused (which one would count?)."""
    cells: dict[Cell, dict[int, float]] = {}
    where: dict[tuple[Cell, int], str] = {}
    for rec in records:
        value = (rec["scores"].get(style) or {}).get(metric)
        if value is None or _scope(rec, style) != scope:
            continue
        cell, seed = _cell(rec), int(rec["seed"])
        name = f"{rec['source']}:{rec.get('run') or rec.get('dir')}"
        if seed in cells.get(cell, {}):
            raise ValueError(f"two runs of {cell} with seed {seed}: {where[cell, seed]} and {name}")
        cells.setdefault(cell, {})[seed] = float(value)
        where[cell, seed] = name
    return cells


def sign_test(below: int, above: int) -> float:
    """Exact two-sided sign test: P(a split at least this lopsided | each side p = 1/2)."""
    n = below + above
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(below, above) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _label(cell: Cell) -> str:
    method, partition, finetune, _ = cell
    extra = [x for x in (partition, finetune if finetune != "lora" else "") if x and x != DASH]
    return method + (f" ({', '.join(extra)})" if extra else "")


def seed_table(cells: dict[Cell, dict[int, float]], scale: float) -> str:
    """Every cell with two seeds or more: the score per seed, mean, spread."""
    seeds = sorted({s for by_seed in cells.values() for s in by_seed})
    rows = []
    for cell in sorted(cells, key=lambda c: (c[3], c[0], c[1], c[2])):
        by_seed = cells[cell]
        if len(by_seed) < 2:
            continue
        vals = [v * scale for v in by_seed.values()]
        rows.append([_label(cell), str(cell[3])] + [f"{by_seed[s] * scale:.2f}" if s in by_seed else DASH
                                                     for s in seeds]
                    + [f"{sum(vals) / len(vals):.2f}", f"{max(vals) - min(vals):.2f}", str(len(vals))])
    header = ["cell", "r"] + [f"seed {s}" for s in seeds] + ["mean", "spread", "seeds"]
    return md_table(header, rows, ["l"] + ["r"] * (len(header) - 1))


def paired_gaps(cells: dict[Cell, dict[int, float]], against: str,
                scale: float) -> list[dict[str, Any]]:
    """For every other cell: its gaps to the ``against`` cell of the same rank and fine-tuning, per seed."""
    out = []
    for cell in sorted(cells, key=lambda c: (c[0], c[1], c[2], c[3])):
        base = next((b for b in cells if b[0] == against and b[2:] == cell[2:]), None)
        if cell[0] == against or base is None:
            continue
        gaps = {s: (v - cells[base][s]) * scale for s, v in cells[cell].items() if s in cells[base]}
        if gaps:
            out.append({"cell": cell, "against": base, "gaps": gaps})
    return out


def gap_report(pairs: list[dict[str, Any]], against: str) -> str:
    """Per rank: the gaps by seed and their mean; per method: below/above counts and the sign test."""
    if not pairs:
        return f"No paired runs against {against} (same rank, same seed)."
    seeds = sorted({s for p in pairs for s in p["gaps"]})
    rows = [[_label(p["cell"]), str(p["cell"][3])] + [f"{p['gaps'][s]:+.2f}" if s in p["gaps"] else DASH
                                                      for s in seeds]
            + [f"{sum(p['gaps'].values()) / len(p['gaps']):+.2f}"] for p in pairs]
    header = ["cell", "r"] + [f"seed {s}" for s in seeds] + ["mean"]
    lines = [f"Gap to {against} at the same rank and seed:", "",
             md_table(header, rows, ["l"] + ["r"] * (len(header) - 1)), ""]
    for label in dict.fromkeys(_label(p["cell"]) for p in pairs):
        gaps = [g for p in pairs if _label(p["cell"]) == label for g in p["gaps"].values()]
        below, above = sum(g < 0 for g in gaps), sum(g > 0 for g in gaps)
        lines.append(f"- {label} − {against}: {len(gaps)} paired runs, mean {sum(gaps) / len(gaps):+.2f}, "
                     f"{below} below / {above} above / {len(gaps) - below - above} tied; "
                     f"sign test p = {sign_test(below, above):.3g}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.experiments.seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", type=Path, help="recipe --out folders or JSON files of run records")
    p.add_argument("--metric", default="BLEU", help="score to compare (BLEU, NIST, METEOR, ROUGE_L, CIDEr)")
    p.add_argument("--style", default="raw", choices=("raw", "tokenized"), help="reference style")
    p.add_argument("--repeat-scope", default="generated", choices=("generated", "sequence"),
                   help="only runs decoded with this n-gram-ban scope")
    p.add_argument("--against", default="cenlora", help="the method every other one is paired with")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        cells = scores_by_cell(load_records(a.sources), a.style, a.metric, a.repeat_scope)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"seeds: error: {e}", file=sys.stderr)
        return 2
    if not cells:
        print(f"seeds: error: no run scored {a.metric} against {a.style} references with repeat scope "
              f"{a.repeat_scope}", file=sys.stderr)
        return 2
    scale = 100.0 if a.metric in ("BLEU", "ROUGE_L") else 1.0
    print(f"{a.metric}{' x100' if scale != 1 else ''}, {a.style} references, n-gram ban scope {a.repeat_scope}\n")
    print(seed_table(cells, scale))
    print()
    print(gap_report(paired_gaps(cells, a.against, scale), a.against))
    return 0


if __name__ == "__main__":
    sys.exit(main())
