"""The label-skew experiment's tables: one output folder's (``table.md``) and the summary that
merges the results of several folders run with the same budget (seeds and cells run apart).

    python -m launch.experiments.skew_tables benchmarks/reports/classification-minilm/clients30/{a,b} \\
        --out benchmarks/reports/classification-minilm/clients30/summary.md
    python -m launch.experiments.skew_tables ... --out .../summary.md --check   # exit 1 if stale

Every ``results*.json`` of each folder is read. Runs must share the budget (rounds, local
steps, batch, lr, clients, r_G, the scaling convention): a table that mixed budgets would
compare nothing. A run found twice (the same arm, rank, skew and seed) must agree to the last
digit. Cells are the mean over seeds ± half the range, with the number of seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from launch.experiments.tables import DASH, md_table

# What must agree for two runs to sit in one table (label_skew's settings).
BUDGET_KEYS = ("rounds", "steps_per_round", "batch", "lr", "clients", "global_rank", "match_scaling",
               "hetero_ranks", "extra")
ARM_ORDER = ("fedavg", "ffa", "flexlora", "hetlora", "+alternate", "+lr_B=5lr_A", "lora-a2")
ARM_KINDS = {"main": "Main methods (Table 1's layout)", "ablation": "Ablation (Fig. 6)",
             "hetero": "Heterogeneous client ranks (Table 8)"}

NOTES = {
    "main": "fedavg is FL+LoRA, ffa FFA-LoRA; lora-a2-matched is LoRA-A2 with r_G = global_rank, "
            "every client's budget r_k = rank, alpha = 16 r_G / rank. Uploads: the largest client's, "
            "whole run.",
    "ablation": "Its two ends, FFA-LoRA and the whole of LoRA-A2, are the main table's ffa and "
                "lora-a2-matched at the same rank and skew (the same runs).",
    "hetero": "Client ranks hetero_ranks, cycled over the clients (the rank column is not used); "
              "uploads: a client of the largest rank.",
}


def render_table(results: list[dict[str, Any]]) -> str:
    """Test accuracy (%) per arm × rank (rows) and skew (columns): mean over seeds ± half the range,
    with the uploaded parameters per client beside each arm."""
    skews = sorted(dict.fromkeys(r["skew"] for r in results), key=skew_order)
    rows = []
    for arm, rank in dict.fromkeys((r["arm"], r["rank"]) for r in results):
        cells = []
        for skew in skews:
            acc = [100 * r["final"]["accuracy"] for r in results
                   if (r["arm"], r["rank"], r["skew"]) == (arm, rank, skew)]
            mean, half = (sum(acc) / len(acc), (max(acc) - min(acc)) / 2) if acc else (0.0, 0.0)
            cells.append(f"{mean:.2f} ± {half:.2f} (n={len(acc)})" if acc else DASH)
        up = max(r["up_params_per_client"] for r in results if (r["arm"], r["rank"]) == (arm, rank))
        rows.append([arm, str(rank), *cells, f"{up:,}"])
    return md_table(["arm", "rank", *[f"{s}" for s in skews], "uploaded params / client"], rows)


def partition(skew: str) -> str:
    """``0.01`` -> ``dirichlet:0.01``; ``pathological[:k]``, ``pairs`` and ``iid`` as they are."""
    return skew if skew.startswith(("pathological", "iid", "pairs")) else f"dirichlet:{float(skew)}"


def skew_order(skew: str) -> tuple[int, float, str]:
    """Dirichlet alphas from the mildest skew down, then the named partitions."""
    try:
        return (0, -float(skew), "")
    except ValueError:
        return (1, 0.0, skew)


def arm_order(arm: str) -> int:
    """The paper's order: the baselines, the ablation's steps, LoRA-A2 last."""
    return next((i for i, a in enumerate(ARM_ORDER) if arm.startswith(a)), len(ARM_ORDER))


def plot_accuracy(results: list[dict[str, Any]], path: Path) -> None:
    """Accuracy per round, one panel per (rank, skew), one line per arm and seed."""
    if not results:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = list(dict.fromkeys((r["rank"], r["skew"]) for r in results))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    arms = sorted(dict.fromkeys(r["arm"] for r in results), key=arm_order)
    seeds = sorted(dict.fromkeys(r["seed"] for r in results))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (rank, skew) in zip(axes.flat, panels):
        for r in (r for r in results if (r["rank"], r["skew"]) == (rank, skew)):
            # one colour per arm, one line style per seed: the same in every panel
            ax.plot(r["rounds"], [100 * x for x in r["accuracy"]], marker=".", label=f"{r['arm']} s{r['seed']}",
                    color=colours[arms.index(r["arm"]) % len(colours)],
                    linestyle=("-", "--", ":", "-.")[seeds.index(r["seed"]) % 4])
        ax.set_title(f"rank {rank}, {partition(skew)}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_runs(folders: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The budget the folders share and their runs, each once (ValueError on a mismatch)."""
    budget: dict[str, Any] | None = None
    first = ""
    runs: dict[tuple, dict[str, Any]] = {}
    for folder in folders:
        files = sorted(folder.glob("results*.json"))
        if not files:
            raise ValueError(f"{folder}: no results*.json")
        for path in files:
            data = json.loads(path.read_text(encoding="utf-8"))
            settings = {k: data["settings"].get(k) for k in BUDGET_KEYS}
            if budget is None:
                budget, first = settings, str(path)
            for k in BUDGET_KEYS:
                if settings[k] != budget[k]:
                    raise ValueError(f"{path}: {k} = {settings[k]!r}, but {first} has {budget[k]!r}; "
                                     "one table holds one budget")
            for run in data["runs"]:
                key = (run["arms"], run["arm"], run["rank"], run["skew"], run["seed"])
                seen = runs.setdefault(key, run)
                if seen["final"] != run["final"]:
                    raise ValueError(f"{path}: run {key} disagrees with an earlier copy of it")
    assert budget is not None  # folders is never empty (argparse nargs="+")
    return budget, list(runs.values())


def render_summary(budget: dict[str, Any], runs: list[dict[str, Any]], command: str) -> str:
    """One table per kind of arms, the budget and the command that made it above them."""
    parts = ["# Label-skew summary (generated: do not edit)", "",
             f"Made by `{command}` from the committed `results*.json` files.", "",
             "Budget of every run: " + ", ".join(f"{k} {budget[k]}" for k in BUDGET_KEYS if k != "extra")
             + ". Test accuracy (%), mean over seeds ± half the range (n = seeds).", ""]
    for kind, title in ARM_KINDS.items():
        chosen = [r for r in runs if r["arms"] == kind]
        if chosen:
            chosen.sort(key=lambda r: (r["rank"], arm_order(r["arm"]), skew_order(r["skew"]), r["seed"]))
            parts += [f"## {title}", "", render_table(chosen), "", NOTES[kind], ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="label_skew output folders")
    ap.add_argument("--out", type=Path, required=True, help="the summary's markdown file")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    a = ap.parse_args(argv)
    try:
        budget, runs = load_runs(a.folders)
    except (ValueError, OSError, KeyError) as e:
        print(f"skew_tables: {e}", file=sys.stderr)
        return 2
    # The command as given, so that a reader can rerun it from the same folder.
    names = " ".join(str(f) for f in a.folders)
    text = render_summary(budget, runs, f"python -m launch.experiments.skew_tables {names} --out {a.out}")
    if a.check:
        old = a.out.read_text(encoding="utf-8") if a.out.exists() else ""
        if old != text:
            print(f"skew_tables: {a.out} is stale; rerun without --check", file=sys.stderr)
            return 1
        print(f"{a.out}: up to date")
        return 0
    a.out.write_text(text, encoding="utf-8")
    plot_accuracy(sorted((r for r in runs if r["arms"] == "main"),
                         key=lambda r: (r["rank"], skew_order(r["skew"]), arm_order(r["arm"]), r["seed"])),
                  a.out.with_suffix(".png"))
    print(f"summary: {a.out} and {a.out.with_suffix('.png')} (accuracy per round, main methods)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
