"""Turn finished benchmark runs into report figures, from the runtime's own records only.

Every number here is read from a run directory (``metrics.jsonl``, ``summary.json``,
``config.json``) written by ``launch.train``; nothing is timed here. ``analyze_run``
reduces one run; ``launch.bench.report_build`` combines runs into the report.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.io.telemetry import summarize
from runtime.split.shapes import DEFAULT_SHAPE

E2E_TRAIN_EXAMPLES = 42_061  # E2E NLG training set: one epoch-equivalent
JOB_FILE = "bench_job.json"  # written by launch.bench beside each run: command, wall time, load

# Report phases, each a sum of runtime timers. SplitLoRA clients record client_fwd ..
# client_opt (runtime/steps.py); CenLoRA and FedLoRA clients record fwd/bwd/opt of the
# whole model, shown as the client's forward/backward/optimizer.
PHASE_GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("client fwd", ("client_fwd", "fwd")),
    ("cut up", ("cut_up",)),
    ("server wait", ("server_wait",)),
    ("server fwd+bwd", ("server_fwd", "server_bwd")),
    ("cut down", ("cut_down",)),
    ("client bwd", ("client_bwd", "bwd")),
    ("optimizer", ("server_opt", "client_opt", "opt")),
]


@dataclass(frozen=True)
class RunSpec:
    """One benchmark job: a method at a client count, cut dtype and split shape."""

    method: str
    n_clients: int  # clients; CenLoRA takes n_clients x batch in one process
    cut_dtype: str = "fp32"
    shape: str = DEFAULT_SHAPE  # SplitLoRA: split.shape (a name in runtime/split/shapes/)

    @property
    def run_id(self) -> str:
        suffix = "" if self.cut_dtype == "fp32" else f"-{self.cut_dtype}"
        return f"{self.method}-n{self.n_clients}{suffix}" + ("" if self.shape == DEFAULT_SHAPE else f"-{self.shape}")

    @property
    def nproc(self) -> int:
        return 1 if self.method == "cenlora" else self.n_clients + 1


def is_main(run: dict[str, Any]) -> bool:
    """A run of the main comparison: fp32 cut, vanilla split (the other runs vary one of them)."""
    return run["cut_dtype"] == "fp32" and run.get("shape", DEFAULT_SHAPE) == DEFAULT_SHAPE


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ms_stats(values: list[float]) -> dict[str, float]:
    """Median / p90 / mean in milliseconds of values in seconds."""
    return {k: v * 1e3 for k, v in summarize(values).items()}


def step_groups(rec: dict[str, Any]) -> dict[str, float]:
    """Seconds per report phase of one step record."""
    t = rec["time"]
    return {name: sum(t.get(k, 0.0) for k in keys) for name, keys in PHASE_GROUPS}


def _memory(method: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Peak memory per rank (MiB) as summary.json records it."""
    if method == "cenlora":
        return {"ranks": {"rank 0 (cenlora)": summary.get("memory")}}
    role = "server" if method == "splitlora" else "coordinator"
    ranks = {f"rank 0 ({role})": summary.get("server_memory")}
    for k, c in sorted(summary.get("clients", {}).items(), key=lambda kv: int(kv[0])):
        ranks[f"rank {k} (client)"] = c.get("memory")
    return {"ranks": ranks}


def eval_pauses(recs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(end time, seconds) of every evaluation during training (``eval.every``: ``val`` / ``test``
    records): the job's training pauses for them, so training time leaves them out."""
    return sorted((r["t"], r.get("eval_s", 0.0)) for r in recs if r.get("kind") in ("val", "test"))


def paused_before(pauses: list[tuple[float, float]], t: float) -> float:
    """Seconds of evaluation that ended by time ``t``."""
    return sum(s for end, s in pauses if end <= t)


def _curve(steps: list[dict[str, Any]], pauses: list[tuple[float, float]]) -> list[dict[str, float]]:
    """Loss per step index (mean over clients) against training time since the run's first step
    began (evaluations during training left out)."""
    start = min(r["t"] - r["step_time"] for r in steps)
    by_step: dict[int, list[dict[str, Any]]] = {}
    for r in steps:
        by_step.setdefault(r["step"], []).append(r)
    out = []
    for s, rs in sorted(by_step.items()):
        end = max(r["t"] for r in rs)
        out.append({"step": s, "elapsed_s": end - start - paused_before(pauses, end),
                    "loss": statistics.fmean(r["loss"] for r in rs)})
    return out


def val_curve(recs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The validation loss of ``eval.every`` per step against training time since the first step
    began (when that step's aggregation ended; the evaluations left out); [] without it."""
    steps = [r for r in recs if r.get("kind") == "step"]
    vals = [r for r in recs if r.get("kind") == "val" and r.get("val_loss") is not None]
    if not steps or not vals:
        return []
    start, pauses = min(r["t"] - r["step_time"] for r in steps), eval_pauses(recs)
    return [{"step": r["step"], "val_loss": r["val_loss"],
             "elapsed_s": r["t"] - r["eval_s"] - start - paused_before(pauses, r["t"] - r["eval_s"])}
            for r in sorted(vals, key=lambda r: r["step"])]


def val_to_target(curve: list[dict[str, float]], target: float) -> tuple[float, int] | None:
    """(training s, step) where the validation loss (``eval.every``) first reaches ``target``."""
    hit = next((c for c in curve if c["val_loss"] <= target), None)
    return None if hit is None else (hit["elapsed_s"], hit["step"])


def val_targets(curves: dict[tuple[str, Any], list[dict[str, float]]]) -> dict[str, float]:
    """Per job: the best validation loss every rate of the job reaches (jobs without ``eval.every``: none)."""
    targets: dict[str, float] = {}
    for (job, _), curve in curves.items():
        if curve:
            best = min(c["val_loss"] for c in curve)
            targets[job] = max(targets.get(job, best), best)
    return targets


def _aggregation(aggs: list[dict[str, Any]], n_clients: int, n_steps: int) -> dict[str, Any]:
    """Aggregation rounds: payload per client, and time with/without waiting for the slowest client."""
    if not aggs:
        return {"rounds": 0, "up_bytes": 0, "down_bytes": 0, "collective_ms": None, "with_wait_ms": None,
                "per_step_ms": 0.0}
    rounds: dict[int, list[dict[str, Any]]] = {}
    for a in aggs:
        rounds.setdefault(a["round"], []).append(a)
    # The record's time starts when a client enters the collective, so it includes waiting
    # for slower clients; the last client to arrive waits least: the min is ~ the transfer.
    collective = [min(a["time"] for a in rs) for rs in rounds.values()]
    with_wait = [max(a["time"] for a in rs) for rs in rounds.values()]
    per_client_total = [sum(a["time"] for a in aggs if a["client"] == c) for c in {a["client"] for a in aggs}]
    return {"rounds": len(rounds), "up_bytes": statistics.median(a["up_bytes"] for a in aggs),
            "down_bytes": statistics.median(a["down_bytes"] for a in aggs),
            "collective_ms": ms_stats(collective), "with_wait_ms": ms_stats(with_wait),
            "per_step_ms": 1e3 * statistics.fmean(per_client_total) / max(1, n_steps)}


def _coverage(method: str, summary: dict[str, Any], steps: list[dict[str, Any]],
              aggs: list[dict[str, Any]]) -> dict[str, float]:
    """Per client: (sum of step times + aggregation times) / the client's own loop wall time.

    An independent check that the step records account for the loop: the wall time is
    taken around the whole loop, the step times around each step.
    """
    if method == "cenlora":
        return {"0": sum(r["step_time"] for r in steps) / summary["wall_s"]}
    out = {}
    for k, c in summary.get("clients", {}).items():
        own = sum(r["step_time"] for r in steps if r["client"] == int(k))
        own += sum(a["time"] for a in aggs if a["client"] == int(k))
        out[k] = own / c["wall_s"] if c.get("wall_s") else float("nan")
    return out


def _decoding(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    """``--eval.at_end``'s decoding (launch.bench ``--decode-mrs``): tokens/s and, through the split,
    bytes and round trips per generated token (the clients' ``split_inference``, every share)."""
    path = run_dir / "scores.json"
    rec = json.loads(path.read_text()) if path.exists() else {}
    tokens = rec.get("generated_tokens")
    if not tokens:
        return None
    split = [c["split_inference"] for c in summary.get("clients", {}).values() if c.get("split_inference")]
    out = {"through": "split" if split else "whole model", "mrs": rec["n_mrs"], "beams": rec["decode"]["num_beams"],
           "max_new_tokens": rec["decode"]["max_new_tokens"], "tokens": tokens, "decode_s": rec["decode_s"],
           "tokens_per_s": tokens / rec["decode_s"], "shares": rec.get("decode_shares", 1)}
    if split:
        out.update({f"{k}_per_token": sum(s[k] for s in split) / tokens for k in ("bytes_up", "bytes_down",
                                                                                   "round_trips")})
    return out


def analyze_run(run_dir: Path, spec: RunSpec, warmup: int) -> dict[str, Any]:
    """Reduce one run directory to its report figures (times in ms, bytes as recorded)."""
    recs = read_jsonl(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    steps = [r for r in recs if r.get("kind") == "step"]
    aggs = [r for r in recs if r.get("kind") == "aggregate"]
    steady = [r for r in steps if r["step"] > warmup]
    if not steady:
        raise ValueError(f"{run_dir}: no steps after the {warmup} warm-up steps")
    n_steps = max(r["step"] for r in steps)
    seq_len = config["data"]["seq_len"]
    raw = sorted({k for r in steady for k in r["time"]})
    groups = [step_groups(r) for r in steady]
    ratios = [sum(r["time"].values()) / r["step_time"] for r in steady]
    window_start = min(r["t"] - r["step_time"] for r in steady)
    window_end = max(r["t"] for r in steady)
    pauses = eval_pauses(recs)
    window = window_end - window_start - (paused_before(pauses, window_end) - paused_before(pauses, window_start))
    tokens = sum(r["tokens"] for r in steady)
    tps = tokens / window
    rt = config["runtime"]
    return {
        "id": spec.run_id, "method": spec.method, "n_clients": spec.n_clients, "cut_dtype": spec.cut_dtype,
        "shape": spec.shape,
        "batch": config["train"]["batch_size"], "seq_len": seq_len, "steps": n_steps, "warmup": warmup,
        "aggregate_every": config["fed"]["aggregate_every"], "dir": run_dir.name,
        "threads": {"server": rt["server_threads"], "client": rt["client_threads"]},
        "step_ms": ms_stats([r["step_time"] for r in steady]),
        "phases_ms": {k: ms_stats([r["time"][k] for r in steady if k in r["time"]]) for k in raw},
        "groups_ms": {name: ms_stats([g[name] for g in groups]) for name, _ in PHASE_GROUPS},
        "phase_sum": {"min": min(ratios), "max": max(ratios), "median": statistics.median(ratios),
                      "mean_sum_over_mean_step": sum(sum(r["time"].values()) for r in steady)
                      / sum(r["step_time"] for r in steady)},
        "coverage": _coverage(spec.method, summary, steps, aggs),
        "tokens_per_s": tps,
        # Batches are padded to seq_len (bench sets data.pad_to_seq_len), so B = tokens / T.
        "examples_per_s": tps / seq_len,
        "epoch_s": E2E_TRAIN_EXAMPLES / (tps / seq_len),
        "cut": {"up_bytes": statistics.median(r.get("bytes_up", 0) for r in steady),
                "down_bytes": statistics.median(r.get("bytes_down", 0) for r in steady)},
        "aggregation": _aggregation(aggs, spec.n_clients, n_steps),
        "memory": _memory(spec.method, summary),
        "loss": {"first": summary.get("loss_first"), "last": summary.get("loss_last"),
                 "val": summary.get("val_loss")},
        "curve": _curve(steps, pauses),
        "val_curve": val_curve(recs),
        "eval_s": sum(sec for _, sec in pauses),  # evaluation during training (eval.every), all of it
        "decoding": _decoding(run_dir, summary),
        "job": json.loads((run_dir / JOB_FILE).read_text()) if (run_dir / JOB_FILE).exists() else None,
    }


def bytes_per_round(run: dict[str, Any]) -> dict[str, float]:
    """Bytes per client and for all clients over one aggregation round (``every`` steps + 1 aggregation)."""
    every = min(run["aggregate_every"], run["steps"])
    cut = every * (run["cut"]["up_bytes"] + run["cut"]["down_bytes"])
    agg = run["aggregation"]["up_bytes"] + run["aggregation"]["down_bytes"] if run["n_clients"] > 1 else 0.0
    per_client = cut + agg
    n = run["n_clients"] if run["method"] != "cenlora" else 0
    return {"steps": every, "cut_per_client": cut, "aggregation_per_client": agg,
            "per_client": per_client, "all_clients": n * per_client}
