"""Server scaling: SplitLoRA with 1, 2, 4, 8 ... clients, sequential beside batched serving.

    python -m launch.bench.serving --model mini --model-path BASE --clients 1,2,4,8 --out runs/serving
    python -m launch.bench.serving --clients 1,2 --steps 6 --warmup 2 --out /tmp/serving   # tiny, quick

Every (clients, mode) pair is a real torchrun job of ``launch.train`` (synthetic data padded
to ``--seq-len``, round-robin order unless ``--order``); the first ``--warmup`` steps of
every client are left out. From each run's ``metrics.jsonl`` it reports, over the window from
the first counted step's start to the last one's end:

- tokens/s: the counted steps' tokens over the window;
- server busy fraction: the server's compute (forward + backward + optimizer; batched: once
  per batch) over the window;
- median per-phase times per client step, and (batched) clients and rows per batch;
- peak RSS of the server and of the largest client.

Writes ``report.md``, ``report.json`` and ``serving.png`` (tokens/s and busy fraction vs clients)
into ``--out``; runs go to ``--runs-dir`` (default ``OUT/runs``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from launch.bench.latency import attempt_job
from launch.bench.report_build import load_avg, machine_info
from launch.jobs import Terminated, sigterm_raises

MODES = ("sequential", "batched", "batched-halfN")
PHASES = ("client_fwd", "server_wait", "cut_up", "server_fwd", "server_bwd", "cut_down", "client_bwd",
          "server_opt", "client_opt")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="preset (random weights unless --model-path)")
    ap.add_argument("--model-path", default=None, help="a base directory (e.g. the mini base of launch.pretrain)")
    ap.add_argument("--clients", default="1,2,4,8", help="client counts")
    ap.add_argument("--modes", default="sequential,batched",
                    help="comma list of sequential, batched, batched-halfN (batches of at most half the "
                         "clients, so that one half's client work overlaps the other half's server work)")
    ap.add_argument("--steps", type=int, default=12, help="local steps per client")
    ap.add_argument("--warmup", type=int, default=3, help="steps per client left out")
    ap.add_argument("--batch", type=int, default=8, help="batch per client")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--cut", type=int, default=1)
    ap.add_argument("--order", default="round_robin", choices=("round_robin", "arrival"))
    ap.add_argument("--window-ms", type=float, default=20.0, help="split.batch_window_ms (arrival order)")
    ap.add_argument("--server-threads", type=int, default=0, help="torch threads of the server (0: every core)")
    ap.add_argument("--rpc-threads", type=int, default=0, help="runtime.rpc_threads (0: the runtime's default)")
    ap.add_argument("--extra", action="append", default=[], help="more launch.train overrides")
    ap.add_argument("--out", default="runs/serving")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--reuse", action="store_true", help="re-read finished runs instead of rerunning them")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    ap.add_argument("--note", default="", help="free text at the top of report.md (e.g. what else ran)")
    ap.add_argument("--no-plots", action="store_true")
    return ap


def train_args(a: argparse.Namespace, n: int, mode: str) -> list[str]:
    args = [f"--model.name={a.model}", "--data.source=synthetic", f"--data.seq_len={a.seq_len}",
            "--data.pad_to_seq_len=true", f"--train.max_steps={a.steps}", f"--train.batch_size={a.batch}",
            f"--split.cut={a.cut}", f"--runtime.order={a.order}", f"--runtime.server_threads={a.server_threads}",
            "--runtime.client_threads=1", "--out.save_model=false", "--data.max_eval_examples=8",
            f"--fed.aggregate_every={a.steps}", f"--split.server_batching={str(mode != 'sequential').lower()}",
            f"--split.batch_window_ms={a.window_ms}", "--lora.dropout=0"]
    if a.model_path:
        args.append(f"--model.path={a.model_path}")
    if mode == "batched-halfN":
        args.append(f"--split.max_batch_clients={max(1, n // 2)}")
    if a.rpc_threads:
        args.append(f"--runtime.rpc_threads={a.rpc_threads}")
    return args + a.extra


def analyze(run_dir: Path, warmup: int) -> dict[str, Any]:
    """One run's throughput, server busy fraction, phase medians, batch sizes and memory."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("kind") == "step" and r["step"] > warmup]
    if not steps:
        raise SystemExit(f"bench_serving: {run_dir} has no step after the warmup")
    start = min(r["t"] - r["step_time"] for r in steps)
    end = max(r["t"] for r in steps)
    window = max(end - start, 1e-9)
    batches = [r for r in records if r.get("kind") == "server_batch" and start <= r["t"] <= end]
    if batches:  # batched: each batch's compute once
        compute = sum(sum(b["time"].values()) for b in batches)
    else:
        compute = sum(r["time"]["server_fwd"] + r["time"]["server_bwd"] + r["server_opt_compute"] for r in steps)
    summary = json.loads((run_dir / "summary.json").read_text())
    client_rss = [c["memory"]["cpu_rss_mib"] for c in summary["clients"].values() if c.get("memory")]
    out = {
        "n_clients": summary["n_clients"], "counted_steps": len(steps), "window_s": window,
        "tokens_per_s": sum(r["tokens"] for r in steps) / window, "server_busy": compute / window,
        "step_ms_median": 1e3 * statistics.median(r["step_time"] for r in steps),
        "phases_ms": {p: 1e3 * statistics.median(r["time"][p] for r in steps) for p in PHASES},
        "server_rss_mib": summary["server_memory"]["cpu_rss_mib"], "client_rss_mib_max": max(client_rss, default=None),
        "loss_last": summary["loss_last"],
    }
    if batches:
        out["clients_per_batch"] = statistics.mean(len(b["clients"]) for b in batches)
        out["rows_per_batch"] = statistics.mean(sum(b["rows"]) for b in batches)
        out["batch_ms_median"] = 1e3 * statistics.median(sum(b["time"].values()) for b in batches)
    return out


def _loads(x: list[float] | None) -> str:
    return "n/a" if not x else ", ".join(f"{v:.1f}" for v in x)


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = ["# Server scaling: sequential vs batched serving", "",
             *([report["note"], ""] if report["note"] else []),
             f"Command: `{s['command']}`", "",
             *[f"- **failed, not in this report:** {x}" for x in report.get("failed_jobs", [])],
             f"Model `{s['model']}`{' (' + s['model_path'] + ')' if s['model_path'] else ''}, cut {s['cut']}, "
             f"batch {s['batch']} x {s['seq_len']} tokens per client, {s['steps']} steps per client of which "
             f"{s['warmup']} are left out, order {s['order']}, server threads {s['server_threads']} "
             f"(0 = every core), one thread per client. Machine: {report['machine']}. "
             f"Load average (1/5/15 min) before / after: {_loads(report['load_before'])} / "
             f"{_loads(report['load_after'])}.", "",
             "| clients | mode | tokens/s | vs sequential | server busy | step ms (median) | server wait ms | "
             "server fwd ms | server bwd ms | clients/batch | server RSS MiB | client RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        seq = next((x for x in report["runs"] if x["n_clients"] == r["n_clients"] and x["mode"] == "sequential"), None)
        ratio = f"{r['tokens_per_s'] / seq['tokens_per_s']:.2f}x" if seq else "-"
        ph = r["phases_ms"]
        lines.append(f"| {r['n_clients']} | {r['mode']} | {r['tokens_per_s']:.0f} | {ratio} | {r['server_busy']:.0%} | "
                     f"{r['step_ms_median']:.0f} | {ph['server_wait']:.0f} | {ph['server_fwd']:.0f} | "
                     f"{ph['server_bwd']:.0f} | {r.get('clients_per_batch', 1):.2f} | {r['server_rss_mib']:.0f} | "
                     f"{r['client_rss_mib_max']:.0f} |")
    lines += ["", "Server busy = the server's forward + backward + optimizer time (batched: once per batch) over "
              "the window from the first counted step's start to the last one's end. Batched: server fwd / bwd "
              "are the whole batch's.", ""]
    if report.get("plot"):
        lines += [f"![tokens/s and server busy fraction vs clients]({report['plot']})", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for mode in MODES:
        rows = [r for r in report["runs"] if r["mode"] == mode]
        if rows:
            n = [r["n_clients"] for r in rows]
            left.plot(n, [r["tokens_per_s"] for r in rows], marker="o", label=mode)
            right.plot(n, [r["server_busy"] for r in rows], marker="o", label=mode)
    for ax, title in ((left, "tokens/s"), (right, "server busy fraction")):
        ax.set_xlabel("clients")
        ax.set_title(title)
        ax.set_xticks(sorted({r["n_clients"] for r in report["runs"]}))
        ax.grid(alpha=0.3)
        ax.legend()
    right.set_ylim(0, 1.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_all(a: argparse.Namespace, counts: list[int], modes: list[str], runs_dir: Path) -> tuple[list, list[str]]:
    """Run (or re-read) every (clients, mode) job; a failed one is reported and the others
    go on; a SIGTERM stops the job in progress and runs no more. Returns the finished runs'
    rows and one line per failed job."""
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    with contextlib.suppress(Terminated):
        for n in counts:
            for mode in modes:
                name = f"{mode}-n{n}"
                if not (a.reuse and (runs_dir / name / "summary.json").exists()):
                    if (runs_dir / name).exists():
                        shutil.rmtree(runs_dir / name)  # metrics.jsonl is appended to
                    if not attempt_job("splitlora", n + 1, train_args(a, n, mode), runs_dir, name, a.timeout, failed):
                        continue
                rows.append({"mode": mode, **analyze(runs_dir / name, a.warmup)})
    return rows, failed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = build_parser().parse_args(argv)
    counts = [int(x) for x in a.clients.split(",") if x.strip()]
    modes = [m for m in a.modes.split(",") if m.strip()]
    if not counts or min(counts) < 1 or set(modes) - set(MODES) or not modes:
        raise SystemExit(f"bench_serving: --clients must be >= 1 and --modes from {MODES}")
    if a.steps <= a.warmup:
        raise SystemExit("bench_serving: --steps must exceed --warmup")
    out = Path(a.out)
    runs_dir = Path(a.runs_dir) if a.runs_dir else out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    before = load_avg()
    with sigterm_raises():  # a SIGTERM to this driver stops the job it is running, then reports
        rows, failed = run_all(a, counts, modes, runs_dir)
    if not rows:
        raise SystemExit("bench_serving: no job finished; nothing to report")
    settings = {k: getattr(a, k) for k in ("model", "model_path", "steps", "warmup", "batch", "seq_len", "cut",
                                           "order", "window_ms", "server_threads")}
    settings["command"] = "python -m launch.bench.serving " + shlex.join(x for x in argv if x != "--reuse")
    m = machine_info("cpu")
    report = {"settings": settings, "runs": rows, "note": a.note, "machine_info": m,
              "machine": f"{m['cpu_count']} cores ({m['processor']}), torch {m['torch']}",
              "load_before": before, "load_after": load_avg(), "failed_jobs": failed}
    out.mkdir(parents=True, exist_ok=True)
    if not a.no_plots:
        plot(report, out / "serving.png")
        report["plot"] = "serving.png"
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(render(report))
    print(render(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
