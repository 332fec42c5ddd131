"""The latency report's network half, measured (``launch.bench --netlab RATES``).

Every multi-process job of the main comparison (FedLoRA and SplitLoRA at ``--clients``, with
their cut-dtype and split-shape variants) runs again under ``launch.netlab``: every node in a
network namespace of its own, each client's uplink and downlink shaped, tensor bytes through
the transport (``--runtime.rpc_channels basic``). First unshaped (the baseline: the same
namespaces and channels, no rate limit), then at each rate. Per run and rate the report holds
the training wall time, what the link added (the shaped run's wall minus the unshaped one's),
``launch/bench/netsim.py``'s prediction of it from the unshaped run's bytes (round-trip time 0: it
cannot be emulated here), their ratio, and the median step time and cut phases and the
aggregation's collective time, measured; with ``--extra=--eval.every=N`` also the time to a
target validation loss. Evaluations during training are left out of every time. Needs root (as
``launch.netlab``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from launch import netlab
from launch.bench import netsim
from launch.bench.netcheck import link_cost_of, link_name, parse_rate, to_val_target
from launch.bench.report import RunSpec, analyze_run, val_targets
from launch.jobs import JobError

UNSHAPED = (0.0, 0.0)
SMOOTH = 3  # steps of the trailing mean over the training loss (the latency report's default)


def parse_rates(text: str) -> list[tuple[float, float]]:
    """``--netlab``: a comma list of R or UP/DOWN Mbit/s (the unshaped baseline is added first)."""
    rates = [parse_rate(x) for x in text.split(",") if x.strip()]
    return [UNSHAPED, *[r for r in rates if r != UNSHAPED]]


def link_specs(a: argparse.Namespace, specs: list[RunSpec]) -> list[RunSpec]:
    """The jobs that cross a network: every job with clients of their own at ``--clients``."""
    return [s for s in specs if s.method != "cenlora" and s.n_clients == a.clients]


def job_name(spec: RunSpec, rate: tuple[float, float]) -> str:
    return f"{spec.run_id}-link-{link_name(rate).replace('/', '-')}"


def run_link_job(spec: RunSpec, rate: tuple[float, float], args: list[str], runs_dir: Path,
                 timeout: float) -> Path:
    """One job under netlab: one namespace per rank, every client's link at ``rate``."""
    name = job_name(spec, rate)
    lab = netlab.Lab(spec.nproc)
    try:
        lab.up([rate] * (spec.nproc - 1))
        codes = netlab.run(lab, [f"--method={spec.method}", *args, f"--out.dir={runs_dir}", f"--out.name={name}"],
                           runs_dir / "netlab-logs" / name, timeout)
    finally:
        left = lab.close()
    if left:
        print(f"bench: warning: netlab could not remove {', '.join(left)}", file=sys.stderr)
    if any(codes):
        raise JobError(f"bench: {name} failed under netlab (node exit codes {codes}); logs in "
                       f"{runs_dir / 'netlab-logs' / name}")
    print(f"bench: {name:30s} done", file=sys.stderr, flush=True)
    return runs_dir / name


def _median_ms(run: dict[str, Any], group: str) -> float | None:
    g = run["groups_ms"].get(group)
    return g["median"] if g else None


def _to_target(run: dict[str, Any], target: float) -> tuple[float, int] | None:
    """(elapsed s, step) where the run's smoothed training loss first reaches ``target``."""
    curve = run["curve"]
    smoothed = netsim.smooth([c["loss"] for c in curve], SMOOTH)
    hit = next((c for c, loss in zip(curve, smoothed) if loss <= target), None)
    return None if hit is None else (hit["elapsed_s"], hit["step"])


def compare(runs: dict[tuple[str, tuple[float, float]], tuple[Path, RunSpec]], warmup: int,
            every: int) -> list[dict[str, Any]]:
    """Per job and rate: measured training wall, the link's measured and predicted share, the phases,
    and the times to a target training loss (the best smoothed loss every rate of the job reaches)
    and, with ``eval.every``, to a target validation loss, measured over the link beside the
    unshaped run's time plus netsim's link time to that step. Evaluations during training are
    left out of every time (their traffic is not training's)."""
    analyzed = {key: analyze_run(d, spec, warmup) for key, (d, spec) in runs.items()}
    targets: dict[str, float] = {}
    for (run_id, _), run in analyzed.items():
        best = min(netsim.smooth([c["loss"] for c in run["curve"]], SMOOTH))
        targets[run_id] = max(targets.get(run_id, best), best)
    vtargets = val_targets({key: run["val_curve"] for key, run in analyzed.items()})
    rows = []
    for (run_id, rate), (d, spec) in runs.items():
        base = runs.get((run_id, UNSHAPED))
        if base is None:
            continue
        summary = json.loads((d / "summary.json").read_text())
        base_summary = json.loads((base[0] / "summary.json").read_text())
        run, base_run = analyzed[(run_id, rate)], analyzed[(run_id, UNSHAPED)]
        extra = (summary["wall_s"] - run["eval_s"]) - (base_summary["wall_s"] - base_run["eval_s"])
        cost = link_cost_of(base_summary, rate, every, spec.shape)
        predicted = cost.whole_run(base_summary["local_steps"])
        collective = run["aggregation"]["collective_ms"]
        hit, base_hit = _to_target(run, targets[run_id]), _to_target(base_run, targets[run_id])
        vtarget = vtargets.get(run_id)
        vhit, vpredicted = to_val_target(run["val_curve"], base_run["val_curve"], vtarget, cost)
        rows.append({"run": run_id, "link": link_name(rate), "rate": list(rate),
                     "wall_s": summary["wall_s"] - run["eval_s"],
                     "measured_extra_s": extra, "predicted_extra_s": predicted,
                     "measured_over_predicted": extra / predicted if predicted > 0 else None,
                     "step_ms": run["step_ms"]["median"], "cut_up_ms": _median_ms(run, "cut up"),
                     "cut_down_ms": _median_ms(run, "cut down"),
                     "aggregation_ms": collective["median"] if collective else None,
                     "target_loss": targets[run_id], "to_target_s": None if hit is None else hit[0],
                     "to_target_predicted_s": None if base_hit is None else base_hit[0] + cost.up_to(base_hit[1]),
                     "val_loss": summary.get("val_loss"), "val_target": vtarget,
                     "to_val_target_s": vhit, "to_val_target_predicted_s": vpredicted})
    return rows


def run_links(a: argparse.Namespace, specs: list[RunSpec], runs_dir: Path, failed: list[str],
              train_args: Any) -> list[dict[str, Any]]:
    """Every link job (a failed one is noted in ``failed`` and skipped); the comparison rows."""
    netlab.check_tools()
    done: dict[tuple[str, tuple[float, float]], tuple[Path, RunSpec]] = {}
    for spec in link_specs(a, specs):
        for rate in a.netlab_rates:
            d = runs_dir / job_name(spec, rate)
            if not (a.reuse and (d / "summary.json").exists()):
                try:
                    d = run_link_job(spec, rate, train_args(a, spec), runs_dir, a.timeout)
                except JobError as e:
                    print(e, file=sys.stderr, flush=True)
                    failed.append(str(e).splitlines()[0].removeprefix("bench: "))
                    continue
            done[(spec.run_id, rate)] = (d, spec)
    return compare(done, a.warmup, a.aggregate_every)


def links_section(rows: list[dict[str, Any]]) -> list[str]:
    """report.md's section (empty without ``--netlab``)."""
    if not rows:
        return []

    def ms(x: float | None) -> str:
        return "—" if x is None else f"{x:.1f}"

    # Where the link adds less than half a second the ratio is mostly the baseline's noise.
    ratios = [r["measured_over_predicted"] for r in rows if r["predicted_extra_s"] >= 0.5]
    lines = ["## Measured over emulated links (`--netlab`)", "",
             "The same jobs again with every rank in a network namespace of its own (`launch.netlab`), each "
             "client's uplink and downlink shaped to the rate, tensor bytes through the transport. *Measured "
             "extra* = training wall time minus the unshaped run's (same namespaces, no limit); *netsim extra* = "
             "the link model's prediction from the unshaped run's bytes, round-trip time 0 (not emulated "
             "here). Phases are medians over the clients' steps after the warm-up. *To target*: when the "
             "smoothed training loss first reaches the best level every rate of the job reaches, measured over "
             "the link, beside the unshaped run's time to it plus netsim's link time up to that step.", ""]
    lines += ["| run | link (Mbit/s) | training wall (s) | measured extra (s) | netsim extra (s) "
              "| measured / netsim | step ms | cut up ms | cut down ms | aggregation ms | to target: measured (s) "
              "| unshaped + netsim (s) |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def s(x: float | None) -> str:
        return "—" if x is None else f"{x:.1f}"

    for r in rows:
        ratio = "—" if r["measured_over_predicted"] is None else f"{r['measured_over_predicted']:.2f}"
        lines.append(f"| {r['run']} | {r['link']} | {r['wall_s']:.1f} | {r['measured_extra_s']:.1f} | "
                     f"{r['predicted_extra_s']:.1f} | {ratio} | {ms(r['step_ms'])} | {ms(r['cut_up_ms'])} | "
                     f"{ms(r['cut_down_ms'])} | {ms(r['aggregation_ms'])} | {s(r['to_target_s'])} | "
                     f"{s(r['to_target_predicted_s'])} |")
    if ratios:
        lines += ["", f"Measured / netsim where netsim predicts at least 0.5 s: median "
                      f"{statistics.median(ratios):.2f}, range {min(ratios):.2f}–{max(ratios):.2f} "
                      f"({len(ratios)} runs)."]
    return [*lines, "", *val_section(rows)]


def val_section(rows: list[dict[str, Any]]) -> list[str]:
    """Time to a target validation loss over the links (jobs run with ``eval.every``; else nothing)."""
    rows = [r for r in rows if r.get("val_target") is not None]
    if not rows:
        return []

    def s(x: float | None) -> str:
        return "—" if x is None else f"{x:.1f}"

    lines = ["*To a target validation loss* (the jobs ran with `--eval.every`): training time (evaluations left "
             "out) until the validation loss first reaches the best level every rate of the job reaches, "
             "measured over the link, beside the unshaped run's time to it plus netsim's link time up to that "
             "step.", "", "| run | link (Mbit/s) | target val loss | measured (s) | unshaped + netsim (s) | ratio |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        m, p = r["to_val_target_s"], r["to_val_target_predicted_s"]
        ratio = f"{m / p:.2f}" if m is not None and p else "—"
        lines.append(f"| {r['run']} | {r['link']} | {r['val_target']:.4f} | {s(m)} | {s(p)} | {ratio} |")
    return [*lines, ""]
