"""LoRA-A2's comparison (arXiv 2410.22815, Tables 1 and 3, Fig. 6) on a text-classification set:
federated LoRA methods × ranks × label skew, with test accuracy per round.

    python -m launch.experiments.label_skew --model.path $MODEL --data.dir $BANKING77 \\
        --clients 30 --rounds 10 --steps-per-round 20 --ranks 1,8 --skews 0.5,0.01 --seeds 110,111 \\
        --out runs/label-skew
    python -m launch.experiments.label_skew ... --arms ablation --ranks 1 --skews 0.01   # Fig. 6

Every run is FedLoRA (``launch.train --method=fedlora``) with ``--clients`` clients (on
``--client-ranks`` processes: 0 gives each client its own; any number gives the same run, to
1e-6, see docs/clients.md) on one partition per skew (``dirichlet:<alpha>`` over labels, or
``pathological``), the same budget for every arm of a table: ``--rounds`` aggregation rounds of
``--steps-per-round`` local steps of ``--batch`` examples, lr ``--lr``, LoRA alpha 16 on the
six linear modules of every layer, no dropout, no label smoothing, the frozen random head; test
accuracy after every round.

Arms (``--arms``; how the paper's rank r maps to each):
  main:      fedavg (FL+LoRA), ffa (FFA-LoRA), flexlora at r; lora-a2 with r_G = ``--global-rank``
             and every client's budget r_k = r.
  ablation:  Fig. 6 at rank r: ffa → + alternating freeze (lora-a2, r_G = r, lr_B = lr_A) →
             + lr_B = 5 lr_A (r_G = r) → + rank selection (r_G = ``--global-rank``, r_k = r).
  hetero:    Table 8's heterogeneous ranks (``--hetero-ranks``, one per client, cycled): hetlora,
             flexlora and lora-a2 (r_G = ``--global-rank``).

Outputs in ``--out``: ``runs/<arm>-r<r>-<skew>-s<seed>/``, ``logs/``, ``results.json`` (every
run's accuracy per round, final scores, uploaded parameters and settings), ``table.md`` (mean
over seeds, ± half the range) and ``accuracy.png`` (accuracy per round). Finished runs are
skipped and interrupted ones resume: rerun the same command to continue. Extra
``--section.key=value`` arguments go to every run. ``launch.experiments.skew_tables`` merges
the results of several output folders into one summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from launch.experiments import common
from launch.experiments.skew_tables import partition, plot_accuracy, render_table

SIX = "q,k,v,attn_proj,mlp_fc,mlp_proj"


def arms(kind: str, r: int, global_rank: int, clients: int, hetero: list[int],
         match_scaling: bool = False) -> list[tuple[str, list[str]]]:
    """(label, training arguments) of every arm of ``kind`` at rank ``r``. ``match_scaling``: LoRA-A2's
    alpha is 16 · r_G / r, so that its alpha / r_G equals the rank-r arms' 16 / r; in the hetero arms
    every arm's alpha is 16 × the rank it allocates (8 for HetLoRA and FlexLoRA at budgets up to 8,
    r_G for LoRA-A2), so every adapter scales by 16, as the rank-1 arms' do."""
    budgets = ",".join([str(r)] * clients)
    a2 = ["--fed.strategy=lora-a2", f"--lora.r={global_rank}", f"--fed.client_ranks={budgets}",
          *([f"--lora.alpha={16 * global_rank / r:g}"] if match_scaling else [])]
    if kind == "main":
        return [("fedavg", ["--fed.strategy=fedavg", f"--lora.r={r}"]),
                ("ffa", ["--fed.strategy=ffa", f"--lora.r={r}"]),
                ("flexlora", ["--fed.strategy=flexlora", f"--lora.r={r}"]),
                ("lora-a2", a2)]
    if kind == "ablation":
        same = ["--fed.strategy=lora-a2", f"--lora.r={r}", f"--fed.client_ranks={budgets}"]
        return [("ffa", ["--fed.strategy=ffa", f"--lora.r={r}"]),
                ("+alternate", [*same, "--fed.lr_b_ratio=1"]),
                ("+lr_B=5lr_A", [*same, "--fed.lr_b_ratio=5"]),
                ("+rank-selection", a2)]
    if kind == "hetero":
        ranks = ",".join(str(hetero[i % len(hetero)]) for i in range(clients))
        top = max(hetero)

        def alpha(allocated: int) -> list[str]:
            return [f"--lora.alpha={16 * allocated}"] if match_scaling else []

        return [("hetlora", ["--fed.strategy=hetlora", f"--lora.r={top}", f"--fed.client_ranks={ranks}", *alpha(top)]),
                ("flexlora", ["--fed.strategy=flexlora", f"--lora.r={top}", f"--fed.client_ranks={ranks}",
                              *alpha(top)]),
                ("lora-a2", ["--fed.strategy=lora-a2", f"--lora.r={global_rank}", f"--fed.client_ranks={ranks}",
                             *alpha(global_rank)])]
    raise ValueError(f"unknown arms {kind!r}: main | ablation | hetero")


def run_args(a: argparse.Namespace, arm_args: list[str], skew: str, seed: int) -> list[str]:
    steps = a.rounds * a.steps_per_round
    return ["--method=fedlora", "--data.task=classify", f"--model.path={a.model_path}",
            *([f"--data.dir={a.data_dir}"] if a.data_dir else ["--data.source=synthetic"]),
            f"--data.partition={partition(skew)}", f"--lora.targets={SIX}", "--lora.alpha=16", "--lora.dropout=0",
            f"--train.lr={a.lr}", f"--train.batch_size={a.batch}", f"--train.max_steps={steps}",
            "--train.warmup_steps=0", "--train.weight_decay=0", "--train.label_smoothing=0",
            f"--train.seed={seed}", f"--fed.aggregate_every={a.steps_per_round}",
            f"--eval.every={a.steps_per_round * a.eval_rounds}", "--runtime.order=round_robin",
            "--out.tensorboard=false", f"--fed.num_clients={a.clients}", *arm_args, *a.extra]


def collect(run_dir: Path) -> dict[str, Any] | None:
    """Accuracy per round, the final scores and the uploads of a finished run."""
    summary = common.read_json(run_dir / "summary.json")
    if summary is None:
        return None
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    tests = [r for r in map(json.loads, lines) if r.get("kind") == "test"]
    clients = (summary.get("logical_clients") or summary["clients"]).values()  # per logical client
    return {"rounds": [t["round"] for t in tests], "accuracy": [t["accuracy"] for t in tests],
            "final": summary["eval"], "up_params_per_client": max(c["comm"]["up_params"] for c in clients),
            "wall_s": summary["wall_s"]}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model.path", dest="model_path", required=True, help="a BERT/RoBERTa directory")
    ap.add_argument("--data.dir", dest="data_dir", default=None, help="train.csv + test.csv (else synthetic)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--arms", default="main", choices=("main", "ablation", "hetero"))
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--client-ranks", type=int, default=0,
                    help="client processes hosting the clients (0: one per client); the same run on any number")
    ap.add_argument("--ranks", default="1,8")
    ap.add_argument("--skews", default="0.5,0.01", help="Dirichlet alphas, pathological[:k], pairs or iid, comma list")
    ap.add_argument("--seeds", default="110")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps-per-round", type=int, default=20)
    ap.add_argument("--eval-rounds", type=int, default=1, help="test accuracy every this many rounds")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--global-rank", type=int, default=16, help="LoRA-A2's allocated rank r_G")
    ap.add_argument("--hetero-ranks", default="1,2,4,8")
    ap.add_argument("--only", default="", help="run only these arms (comma list of labels)")
    ap.add_argument("--match-scaling", action="store_true",
                    help="LoRA-A2 with alpha = 16 r_G / r: the same alpha / rank as the rank-r arms")
    return ap


def main(argv: list[str] | None = None) -> int:
    a, rest = build_parser().parse_known_args(argv)
    a.extra = common.passthrough(rest)
    a.model_path, a.data_dir = common.absolute(a.model_path), common.absolute(a.data_dir)
    out = Path(a.out).resolve()
    ranks, seeds = common.parse_int_list(a.ranks), common.parse_int_list(a.seeds)
    skews = [s.strip() for s in a.skews.split(",") if s.strip()]
    hetero = common.parse_int_list(a.hetero_ranks)
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    cells = [(label, args, r, skew, seed) for r in ranks for skew in skews for seed in seeds
             for label, args in arms(a.arms, r, a.global_rank, a.clients, hetero, a.match_scaling)
             if not only or label in only]
    progress = common.Progress(len(cells))
    results, failed = [], 0
    for i, (label, arm_args, r, skew, seed) in enumerate(cells, 1):
        scaled = "-matched" if a.match_scaling and ("--fed.strategy=lora-a2" in arm_args or a.arms == "hetero") else ""
        name = f"{a.arms}-{label}{scaled}-r{r}-{skew.replace(':', '')}-s{seed}".replace("+", "").replace("=", "")
        progress.say(i, name, "training")
        nproc = (a.client_ranks or a.clients) + 1  # the server + the client ranks hosting the clients
        what, rc = common.train(nproc, run_args(a, arm_args, skew, seed), out / "runs" / name,
                                out / "logs" / f"{name}.log")
        failed += rc != 0
        rec = collect(out / "runs" / name)
        if rec is not None:
            results.append({"arm": label + scaled, "arms": a.arms, "rank": r, "skew": skew, "seed": seed, **rec})
        done = f"{what}, test accuracy {rec['final']['accuracy']:.4f}" if rec else f"{what} (exit {rc})"
        progress.say(i, name, done)
    common.write_json(out / "results.json", {"settings": dict(vars(a)), "runs": results})
    (out / "table.md").write_text(render_table(results) + "\n")
    plot_accuracy(results, out / "accuracy.png")
    print(f"table: {out / 'table.md'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
