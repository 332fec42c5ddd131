"""Step-time benchmark: SplitLoRA's per-phase breakdown against CenLoRA on the same total batch.

    python -m launch.bench --model tiny --clients 1 --steps 20
    python -m launch.bench --model gpt2 --clients 1 --steps 8 --batch 4 --seq-len 128

Each method runs as a real torchrun job (``launch.train``) on synthetic data padded to a
fixed ``seq_len`` (so every step moves exactly B·T·d activations across the cut). Phase
times come from the runtime's own timers (``metrics.jsonl``); the first ``--warmup``
steps of every client are dropped. CenLoRA gets batch ``clients × batch`` so both do the
same work per round. Prints a table and writes ``bench.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_job(method: str, nproc: int, args: list[str], out: Path, name: str, timeout: float) -> Path:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "launch.train", f"--method={method}", f"--out.dir={out}", f"--out.name={name}", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise SystemExit(f"bench: {method} failed (exit {proc.returncode}):\n{tail}")
    print(f"bench: {method:9s} done in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return out / name


def steady_records(run_dir: Path, warmup: int) -> list[dict[str, Any]]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "step" and r["step"] > warmup]


def throughput(recs: list[dict[str, Any]]) -> float:
    """Tokens per second over the steady window, all clients together (wall clock)."""
    start = min(r["t"] - r["step_time"] for r in recs)
    end = max(r["t"] for r in recs)
    return sum(r["tokens"] for r in recs) / (end - start)


def median_phases(recs: list[dict[str, Any]]) -> dict[str, float]:
    keys = sorted({k for r in recs for k in r["time"]})
    return {k: statistics.median(r["time"][k] for r in recs) for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="preset (random weights): tiny, gpt2, ...")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="local steps per client")
    ap.add_argument("--warmup", type=int, default=3, help="steps dropped from the statistics")
    ap.add_argument("--batch", type=int, default=8, help="batch per client")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--cut", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per process")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args(argv)
    if a.steps <= a.warmup:
        ap.error("--steps must exceed --warmup")
    out = Path(a.out) / time.strftime("%Y%m%d-%H%M%S")
    common = [f"--model.name={a.model}", "--data.source=synthetic", f"--data.seq_len={a.seq_len}",
              "--data.pad_to_seq_len=true", "--data.max_eval_examples=0", f"--train.max_steps={a.steps}",
              "--lora.dropout=0", f"--runtime.server_threads={a.threads}", f"--runtime.client_threads={a.threads}",
              "--out.save_model=false", "--fed.aggregate_every=1000000"]
    cen_dir = run_job("cenlora", 1, [*common, f"--train.batch_size={a.batch * a.clients}"], out, "cenlora",
                      a.timeout)
    split_dir = run_job("splitlora", a.clients + 1, [*common, f"--train.batch_size={a.batch}",
                                                      f"--split.cut={a.cut}"], out, "splitlora", a.timeout)
    cen, split = steady_records(cen_dir, a.warmup), steady_records(split_dir, a.warmup)
    d = json.loads((split_dir / "config.json").read_text())
    from runtime.build import model_config
    from runtime.config import config_from_dict

    cfg = config_from_dict({k: v for k, v in d.items() if k != "launch"})
    n_embd = model_config(cfg).n_embd
    theory = 2 * a.batch * a.seq_len * n_embd * 4  # activations up + gradients down, fp32
    measured = statistics.median(r["bytes_up"] + r["bytes_down"] for r in split)
    act_only = statistics.median(2 * r["bytes_down"] for r in split)
    cen_tps, split_tps = throughput(cen), throughput(split)
    phases = median_phases(split)
    step_med = statistics.median(r["step_time"] for r in split)
    result = {
        "model": a.model, "clients": a.clients, "batch_per_client": a.batch, "seq_len": a.seq_len, "cut": a.cut,
        "threads_per_process": a.threads, "steps": a.steps, "warmup": a.warmup,
        "split_phases_ms": {k: v * 1e3 for k, v in phases.items()},
        "split_step_ms_median": step_med * 1e3,
        "cen_step_ms_median": statistics.median(r["step_time"] for r in cen) * 1e3,
        "cen_tokens_per_s": cen_tps, "split_tokens_per_s": split_tps,
        "ratio_split_over_cen_time": cen_tps / split_tps,
        "cut_bytes_per_step_measured": measured, "cut_bytes_activations_only": act_only,
        "cut_bytes_theory_2BTd4": theory, "bytes_vs_theory": measured / theory,
        "fixed_rpc_ms": {k: phases.get(k, 0.0) * 1e3 for k in ("cut_up", "cut_down")},
        "runs": {"cenlora": str(cen_dir), "splitlora": str(split_dir)},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"bench: written {out / 'bench.json'}", file=sys.stderr)
    return 0


def format_table(r: dict[str, Any]) -> str:
    lines = [f"model {r['model']}, {r['clients']} client(s) x batch {r['batch_per_client']} x seq {r['seq_len']}, "
             f"cut {r['cut']}, {r['threads_per_process']} thread(s)/process, median of steps "
             f"{r['warmup'] + 1}..{r['steps']}", "", "| phase (SplitLoRA, per client step) | ms |", "|---|---:|"]
    for k, v in r["split_phases_ms"].items():
        lines.append(f"| {k} | {v:.2f} |")
    lines += [f"| **step** | {r['split_step_ms_median']:.2f} |", "",
              f"CenLoRA step (batch {r['clients'] * r['batch_per_client']}): {r['cen_step_ms_median']:.2f} ms",
              f"throughput: CenLoRA {r['cen_tokens_per_s']:.0f} tok/s, SplitLoRA {r['split_tokens_per_s']:.0f} tok/s"
              f" -> split/cen time ratio {r['ratio_split_over_cen_time']:.3f}",
              f"bytes across the cut per step: {r['cut_bytes_per_step_measured']:.0f} measured "
              f"(activations+gradients {r['cut_bytes_activations_only']:.0f}) vs theory 2*B*T*d*4 = "
              f"{r['cut_bytes_theory_2BTd4']:.0f} -> {r['bytes_vs_theory']:.4f}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
