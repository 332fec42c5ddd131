"""Compare the aggregation strategies across ranks and data heterogeneity (LoRA-A2's study,
arXiv 2410.22815, Tables 1-2: FedAvg-LoRA, FFA-LoRA, FlexLoRA, HetLoRA, FLoRA and LoRA-A2 at
ranks 1/2/4/8 under IID and Dirichlet non-IID splits).

For every partition × strategy × rank it runs ``launch.train`` under torchrun (one server +
``--clients`` clients, each run in its own subprocess and run directory), reads each run's
``summary.json`` and writes

    OUT/table.md      one markdown table: final validation loss and perplexity (exp of it),
                      upload per client (summed over rounds), and the five E2E scores with --eval
    OUT/plot.png      validation loss against rank, one line per strategy, a panel per partition
    OUT/results.json  every row, with the run directory and return code

Rank r means ``--lora.r r`` for every client (homogeneous: r_k = r_G = r); with
``--global-rank G`` it means the budget r_k = r of every client with r_G = G
(``--lora.r G --fed.client_ranks r,...,r``), the LoRA-A2 paper's setting, where rank selection
and FlexLoRA's truncation actually bite. A rank written ``1/2/4`` is a mixed budget, one rank
per client (``--fed.client_ranks 1,2,4``; needs ``--global-rank``). Runs use
``--runtime.order=round_robin`` (reproducible); anything after ``--`` is passed to every run
verbatim and overrides it.

    # LoRA-A2's budget study: r_G = 8, homogeneous budgets 1 and 8, mixed budgets 1/2/4:
    python -m launch.heterogeneity --global-rank 8 --ranks 1,8,1/2/4 --clients 3 --out runs/budgets
    # the default grid on the tiny random model and synthetic data (a smoke study):
    python -m launch.heterogeneity --out runs/hetero
    # GPT-2 S on E2E, FedLoRA, 3 clients, a real budget, with E2E scores at the end:
    python -m launch.heterogeneity --model gpt2 --method fedlora --steps 2000 --aggregate-every 100 \\
        --partitions iid,dirichlet:0.5,dirichlet:0.01 --eval --out runs/hetero-gpt2 \\
        -- --model.path /path/to/gpt2 --config configs/e2e-recipe.yaml --data.source e2e
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from launch.experiments.common import read_json
from launch.jobs import run_group

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("fedavg", "ffa", "lora-a2", "flexlora", "hetlora", "flora", "fedex", "fedsa", "rolora", "frlora")
SCORES = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m launch.heterogeneity", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="model preset (--model.name)")
    p.add_argument("--method", default="splitlora", choices=("splitlora", "fedlora"))
    p.add_argument("--partitions", default="iid,dirichlet:0.5,dirichlet:0.01", help="comma list of --data.partition")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma list of --fed.strategy")
    p.add_argument("--ranks", default="1,2,4,8",
                   help="comma list of ranks; a/b/c = a mixed budget, one rank per client (needs --global-rank)")
    p.add_argument("--global-rank", type=int, default=0, help="r_G; 0 = each rank is lora.r itself")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="local steps per client (--train.max_steps)")
    p.add_argument("--aggregate-every", type=int, default=10)
    p.add_argument("--eval", action="store_true", help="decode and score E2E at the end (--eval.at_end)")
    p.add_argument("--out", default="runs/heterogeneity")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--skip-done", action="store_true", help="reuse runs whose summary.json exists")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: rebuild the table and plot from the finished runs (others show 'not run')")
    a = p.parse_args(argv)
    a.partitions = [x for x in a.partitions.split(",") if x]
    a.strategies = [x for x in a.strategies.split(",") if x]
    try:
        a.ranks = [parse_budget(x) for x in a.ranks.split(",") if x]
    except ValueError:
        p.error(f"--ranks: integers or a/b/c budgets, got {a.ranks!r}")
    bad = sorted(set(a.strategies) - set(STRATEGIES))
    if bad:
        p.error(f"unknown strategies {bad}; known: {', '.join(STRATEGIES)}")
    mixed = [r for r in a.ranks if isinstance(r, tuple)]
    if mixed and not a.global_rank:
        p.error("a mixed budget (a/b/c) needs --global-rank")
    if any(len(r) != a.clients for r in mixed):
        p.error(f"a mixed budget needs one rank per client ({a.clients})")
    if a.global_rank and max(max(budget_ranks(r)) for r in a.ranks) > a.global_rank:
        p.error(f"every rank must be <= --global-rank {a.global_rank}")
    return a, extra


Budget = int | tuple[int, ...]  # one rank for every client, or one per client


def parse_budget(text: str) -> Budget:
    """``"4"`` -> 4; ``"1/2/4"`` -> (1, 2, 4)."""
    parts = [int(x) for x in text.strip().split("/")]
    if any(x < 1 for x in parts):
        raise ValueError(text)
    return parts[0] if len(parts) == 1 else tuple(parts)


def budget_ranks(rank: Budget, clients: int = 1) -> list[int]:
    return list(rank) if isinstance(rank, tuple) else [rank] * clients


def budget_label(rank: Budget) -> str:
    return "/".join(str(r) for r in budget_ranks(rank))


def run_name(partition: str, strategy: str, rank: Budget) -> str:
    return f"{partition.replace(':', '')}-{strategy}-r{budget_label(rank).replace('/', '-')}"


def train_args(a: argparse.Namespace, partition: str, strategy: str, rank: Budget) -> list[str]:
    """The ``launch.train`` overrides of one cell of the grid."""
    # round_robin: the server applies client steps in a fixed order, so the runs are
    # reproducible and the cells differ by strategy, not by arrival order (override after --).
    args = [f"--method={a.method}", f"--model.name={a.model}", f"--data.partition={partition}",
            f"--fed.strategy={strategy}", f"--train.max_steps={a.steps}", f"--fed.aggregate_every={a.aggregate_every}",
            "--runtime.order=round_robin"]
    if a.global_rank:
        args += [f"--lora.r={a.global_rank}",
                 f"--fed.client_ranks={','.join(str(r) for r in budget_ranks(rank, a.clients))}"]
    else:
        args += [f"--lora.r={rank}"]
    if a.eval:
        args += ["--eval.at_end=true"]
    return args


def run_one(a: argparse.Namespace, extra: list[str], partition: str, strategy: str, rank: Budget) -> dict[str, Any]:
    out = Path(a.out) / "runs"
    name = run_name(partition, strategy, rank)
    run_dir = out / name
    row: dict[str, Any] = {"partition": partition, "strategy": strategy, "rank": budget_label(rank),
                           "run_dir": str(run_dir)}
    done = (run_dir / "summary.json").is_file()
    if a.table_only and not done:
        row["rc"], row["error"] = None, "not run"
    elif not ((a.skip_done or a.table_only) and done):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.clients + 1}",
               "-m", "launch.train", *train_args(a, partition, strategy, rank), f"--out.dir={out}",
               f"--out.name={name}", *extra]
        print(f"heterogeneity: {name} ...", file=sys.stderr, flush=True)
        try:
            proc = run_group(cmd, timeout=a.timeout, cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
            row["rc"] = proc.returncode
            errors = [ln for ln in proc.stderr.splitlines() if "splitlora: error" in ln]
            if proc.returncode != 0:
                row["error"] = errors[0] if errors else proc.stderr[-500:]
        except subprocess.TimeoutExpired:
            row["rc"], row["error"] = 124, f"timed out after {a.timeout:.0f} s"
    else:
        row["rc"] = 0
    if row["rc"] == 0 and (run_dir / "summary.json").is_file():
        s = json.loads((run_dir / "summary.json").read_text())
        val = s.get("val_loss")
        clients = s.get("clients", {})
        ups = [c.get("comm", {}).get("up_bytes", 0) for c in clients.values()]
        row.update(val_loss=val, ppl=math.exp(val) if val is not None and val < 700 else None,
                   up_bytes_per_client=sum(ups) / len(ups) if ups else None, wall_s=s.get("wall_s"),
                   eval=s.get("eval"), slots=(read_json(run_dir / "scores.json") or {}).get("slots"))
    return row



def budget_twin(a: argparse.Namespace, rows: list[dict[str, Any]], partition: str,
                strategy: str) -> dict[str, Any] | None:
    """With --global-rank, a strategy that ignores fed.client_ranks trains the same model at
    every budget: the row of its first budget stands for the others (run once)."""
    from runtime.strategies import STRATEGIES as CLASSES

    if not a.global_rank or CLASSES[strategy].uses_rank_budgets:
        return None
    return next((r for r in rows if r["partition"] == partition and r["strategy"] == strategy
                 and r.get("rc") == 0 and "same_as" not in r), None)


def twin_row(twin: dict[str, Any], rank: Budget) -> dict[str, Any]:
    return {**twin, "rank": budget_label(rank), "same_as": twin["rank"]}


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown_table(rows: list[dict[str, Any]], with_eval: bool) -> str:
    head = ["partition", "strategy", "rank", "val loss", "ppl", "up / client (KB)"]
    if with_eval:
        head += [*SCORES, "name / near copied"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("rc", 1) != 0 or r.get("val_loss") is None:
            what = "not run" if r.get("rc", 1) is None else f"failed: {r.get('error', '?')[:60]}"
            cells = [r["partition"], r["strategy"], str(r["rank"]), what, "", ""]
            cells += [""] * (len(SCORES) + 1 if with_eval else 0)
        else:
            up = r.get("up_bytes_per_client")
            rank = str(r["rank"]) + (f" (= {r['same_as']}: ignores r_k)" if "same_as" in r else "")
            cells = [r["partition"], r["strategy"], rank, _fmt(r["val_loss"], ".4f"), _fmt(r["ppl"], ".2f"),
                     _fmt(None if up is None else up / 1024, ".1f")]
            if with_eval:
                ev = r.get("eval") or {}
                cells += [_fmt(ev.get(k), ".4f") for k in SCORES]
                sl = r.get("slots") or {}
                cells.append(f"{_fmt(sl.get('name'), '.1%')} / {_fmt(sl.get('near'), '.1%')}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], partitions: list[str], strategies: list[str], labels: list[str],
         path: Path) -> None:
    """Validation loss per budget (x: the budgets in ``labels`` order, evenly spaced), a line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(partitions), figsize=(4.5 * len(partitions), 3.8), squeeze=False, sharey=True)
    for ax, part in zip(axes[0], partitions):
        for i, strategy in enumerate(strategies):
            pts = sorted((labels.index(r["rank"]), r["val_loss"]) for r in rows
                         if r["partition"] == part and r["strategy"] == strategy and r.get("val_loss") is not None)
            if pts:  # distinct markers and widths: identical curves (e.g. HetLoRA = FedAvg at r_k = r_G) stay visible
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="os^Dvx<>ph*"[i % 11], label=strategy,
                        linewidth=max(0.8, 3.2 - 0.3 * i), markersize=max(3.0, 8 - 0.5 * i))
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels)
        ax.set_title(part)
        ax.set_xlabel("rank (a/b/c: one per client)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation loss")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    a, extra = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for part in a.partitions:
        for rank in a.ranks:
            for strategy in a.strategies:
                twin = budget_twin(a, rows, part, strategy)
                rows.append(twin_row(twin, rank) if twin else run_one(a, extra, part, strategy, rank))
    (out / "results.json").write_text(json.dumps({"args": vars(a), "extra": extra, "rows": rows}, indent=2))
    table = markdown_table(rows, a.eval)
    (out / "table.md").write_text(table)
    plot(rows, a.partitions, a.strategies, [budget_label(r) for r in a.ranks], out / "plot.png")
    print(table)
    failed = sum(1 for r in rows if r.get("rc") not in (0, None))
    ok = sum(1 for r in rows if r.get("rc") == 0)
    print(f"heterogeneity: {ok}/{len(rows)} runs ok; table {out / 'table.md'}, plot {out / 'plot.png'}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
