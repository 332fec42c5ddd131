"""Logical clients at scale: time per round and memory against the number of clients, and many
clients on a few ranks against one process per client (docs/clients.md).

    python -m launch.bench.clients --out benchmarks/reports/clients          # the committed report
    python -m launch.bench.clients --counts 10,40 --rounds 3 --skip-processes --out /tmp/clients  # quick

Every figure comes from real torchrun jobs of ``launch.train`` (FedLoRA, synthetic data, the
``micro`` preset with random weights: time and memory do not depend on the weights):

- **scale**: N logical clients (``--counts``) on ``--ranks`` client ranks + the server, K =
  ``--per-round`` sampled each round, ``--rounds`` rounds of ``--every`` local steps. Time per
  round is the median gap between consecutive rounds' ends (the first round, which includes
  start-up, left out); memory is each client rank's peak RSS. The RSS slope per hosted client
  is printed beside what one client's own state needs (adapters + AdamW's two moments).
- **processes**: ``--process-clients`` clients with full participation, one per rank (one
  process each) against the same clients on ``--ranks`` client ranks: client steps per second
  of training time, and the jobs' whole wall time (start-up included).

Writes ``report.md`` and ``report.json`` into ``--out``; runs go to ``OUT/runs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from launch.bench.latency import JobError, run_job
from launch.bench.report import JOB_FILE
from launch.bench.report_build import load_avg, machine_info


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="10,100,1000", help="N: logical clients of the scale runs")
    ap.add_argument("--per-round", type=int, default=10, help="K: clients sampled per round")
    ap.add_argument("--ranks", type=int, default=2, help="client ranks hosting the clients")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--every", type=int, default=5, help="local steps per round (fed.aggregate_every)")
    ap.add_argument("--process-clients", type=int, default=30, help="clients of the processes comparison")
    ap.add_argument("--skip-processes", action="store_true")
    ap.add_argument("--model", default="micro")
    ap.add_argument("--batch", type=int, default=2,
                    help="examples per step, padded to 64 tokens: the same work per step for every N "
                         "(1,000 clients share the synthetic set's ~3,500 examples)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default="runs/clients")
    return ap


def train_args(a: argparse.Namespace, n: int, k: int) -> list[str]:
    return [f"--model.name={a.model}", "--model.base=random", "--data.source=synthetic",
            f"--train.batch_size={a.batch}", "--data.seq_len=64", "--data.pad_to_seq_len=true",
            "--data.max_eval_examples=16", f"--train.max_steps={a.rounds * a.every}",
            f"--fed.aggregate_every={a.every}", f"--fed.num_clients={n}", f"--fed.clients_per_round={k}",
            "--out.tensorboard=false", "--out.save_model=false", "--runtime.client_threads=1"]


def analyze(run_dir: Path) -> dict[str, Any]:
    """Time per round, client steps per second of training, each client rank's peak RSS."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ends: dict[int, float] = {}
    for r in records:
        if r.get("kind") == "aggregate":
            ends[r["round"]] = max(ends.get(r["round"], 0.0), r["t"])
    gaps = [ends[t] - ends[t - 1] for t in sorted(ends) if t - 1 in ends]
    steps = sum(1 for r in records if r.get("kind") == "step")
    job = json.loads((run_dir / JOB_FILE).read_text())
    return {"clients": summary["n_clients"], "per_round": summary["clients_per_round"],
            "client_ranks": summary["client_ranks"], "round_s": statistics.median(gaps) if gaps else None,
            "client_steps": steps, "train_s": summary["wall_s"], "steps_per_s": steps / summary["wall_s"],
            "job_s": job["wall_s"], "load_avg": [job["load_avg_before"], job["load_avg_after"]],
            "rss_mib": {r: c["memory"]["cpu_rss_mib"] for r, c in summary["clients"].items()}}


def state_bytes(a: argparse.Namespace) -> dict[str, int]:
    """What one client's own state needs: its adapters (fp32) and AdamW's two moments."""
    from runtime.build import build_full_model
    from runtime.config.parse import build_config

    model = build_full_model(build_config(["--method=fedlora", *train_args(a, 1, 1)]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "adapters_bytes": 4 * trainable, "adam_bytes": 8 * trainable}


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# Logical clients at scale ({m['cpu_count']} cores, torch {m['torch']})", "",
             f"FedLoRA, `{report['model']}` preset (random weights), synthetic data, batch {report['batch']} × 64 "
             "tokens (padded), "
             f"{report['rounds']} rounds × {report['every']} local steps, clients on {report['ranks']} client ranks "
             "+ the server. Command: `python -m launch.bench.clients " + " ".join(report["argv"]) + "`.", "",
             "## Time per round and memory against N (K fixed)", "",
             "| N | K | time / round (s) | peak RSS per client rank (MiB) | clients / rank |",
             "|---:|---:|---:|---|---:|"]
    for r in report["scale"]:
        rss = ", ".join(f"{v:.0f}" for v in r["rss_mib"].values())
        lines.append(f"| {r['clients']} | {r['per_round']} | {r['round_s']:.2f} | {rss} | "
                     f"{r['clients'] / r['client_ranks']:.0f} |")
    s = report.get("slope")
    if s:
        lines += ["", f"RSS slope: **{s['bytes_per_client']:,.0f} bytes per hosted client** (from N = "
                  f"{s['from']} to {s['to']}); one client's adapters + AdamW moments: "
                  f"{s['state_bytes']:,} bytes ({s['trainable_params']:,} trainable parameters). The rest is its "
                  "copy of the model's module tree (Python objects), its data shard and its counters."]
    p = report.get("processes")
    if p:
        lines += ["", f"## {p['one']['clients']} clients, full participation: one process each against "
                  f"{p['hosted']['client_ranks']} client ranks", "",
                  "| layout | processes | client steps / s of training | job wall (s) |", "|---|---:|---:|---:|"]
        for name in ("one", "hosted"):
            r = p[name]
            lines.append(f"| {r['client_ranks']} client ranks | {r['client_ranks'] + 1} | {r['steps_per_s']:.1f} | "
                         f"{r['job_s']:.0f} |")
        lines += ["", f"Throughput ratio (hosted / one per process): **{p['ratio']:.2f}×** training, "
                  f"{p['job_ratio']:.2f}× whole job."]
    loads = [f"{x[0]:.1f}" for x in report["machine"]["load_avg_1m"] if x]
    lines += ["", f"Load average (1 min) before and after: {', '.join(loads)}. Single runs on a shared machine: "
              "read ratios, not absolute times."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = build_parser().parse_args(argv)
    out = Path(a.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"argv": argv, "model": a.model, "batch": a.batch, "rounds": a.rounds, "every": a.every,
                              "ranks": a.ranks, "scale": [], "load_before": load_avg()}
    try:
        for n in (int(x) for x in a.counts.split(",")):
            d = run_job("fedlora", a.ranks + 1, train_args(a, n, min(a.per_round, n)), runs, f"scale-n{n}", a.timeout)
            report["scale"].append(analyze(d))
        if len(report["scale"]) >= 2:
            lo, hi = report["scale"][0], report["scale"][-1]
            per_rank = (hi["clients"] - lo["clients"]) / a.ranks
            slope = statistics.median((hi["rss_mib"][r] - lo["rss_mib"][r]) * 2**20 / per_rank for r in hi["rss_mib"])
            st = state_bytes(a)
            report["slope"] = {"from": lo["clients"], "to": hi["clients"], "bytes_per_client": slope,
                               "state_bytes": st["adapters_bytes"] + st["adam_bytes"], **st}
        if not a.skip_processes:
            n = a.process_clients
            one = analyze(run_job("fedlora", n + 1, train_args(a, n, n), runs, f"procs-{n}x1", a.timeout))
            hosted = analyze(run_job("fedlora", a.ranks + 1, train_args(a, n, n), runs, f"procs-{n}on{a.ranks}",
                                     a.timeout))
            report["processes"] = {"one": one, "hosted": hosted, "ratio": hosted["steps_per_s"] / one["steps_per_s"],
                                   "job_ratio": one["job_s"] / hosted["job_s"]}
    except JobError as e:
        print(e, file=sys.stderr)
        return 1
    report["machine"] = machine_info("cpu")
    report["machine"]["load_avg_1m"] = [report["load_before"], load_avg()]
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
