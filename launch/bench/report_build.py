"""Combine analysed runs into one report: comparison, scaling, cut dtype, network simulation.

Input: the dicts of ``launch.bench.report.analyze_run``. Output: the ``report.json`` tree,
which ``launch.bench.report_md`` and ``launch.bench.report_plots`` render. Simulated link time is
kept in its own fields (``link_s``), never added into a measured field.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from launch.bench import netsim
from launch.bench.report import E2E_TRAIN_EXAMPLES, bytes_per_round, is_main
from runtime.split.shapes import DEFAULT_SHAPE, SHAPES

SCHEMA = 1
METHOD_ORDER = ("cenlora", "fedlora", "splitlora")


def load_avg() -> list[float] | None:
    """1/5/15-minute load averages (other work on the machine inflates every timing)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(device: str = "cpu", runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Where the numbers were taken, and the 1-minute load average seen around the jobs."""
    import torch

    loads = [x[0] for r in runs or [] if r.get("job") for x in (r["job"]["load_avg_before"],
                                                                   r["job"]["load_avg_after"]) if x]
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
            "device": device, "load_1min_around_jobs": [min(loads), max(loads)] if loads else None}


def _sorted(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(runs, key=lambda r: (r["n_clients"], METHOD_ORDER.index(r["method"]), r["cut_dtype"],
                                       r.get("shape", DEFAULT_SHAPE) != DEFAULT_SHAPE))


def _find(runs: list[dict[str, Any]], method: str, n: int, dtype: str = "fp32",
          shape: str = DEFAULT_SHAPE) -> dict[str, Any] | None:
    return next((r for r in runs if (r["method"], r["n_clients"], r["cut_dtype"], r.get("shape", DEFAULT_SHAPE))
                 == (method, n, dtype, shape)), None)


def comparison(runs: list[dict[str, Any]], n: int, n_embd: int) -> dict[str, Any] | None:
    """The original bench's figures: SplitLoRA vs CenLoRA time ratio, cut bytes vs 2·B·T·d·4."""
    cen, split = _find(runs, "cenlora", n), _find(runs, "splitlora", n)
    if split is None:
        return None
    b, t = split["batch"], split["seq_len"]
    theory = 2 * b * t * n_embd * 4  # activations up + gradients down, fp32
    measured = split["cut"]["up_bytes"] + split["cut"]["down_bytes"]
    return {"n_clients": n, "cut_bytes_per_step_measured": measured,
            "cut_bytes_activations_only": 2 * split["cut"]["down_bytes"],
            "cut_bytes_theory_2BTd4": theory, "bytes_vs_theory": measured / theory,
            "activations_vs_theory": 2 * split["cut"]["down_bytes"] / theory,
            "ratio_split_over_cen_time": (cen["tokens_per_s"] / split["tokens_per_s"]) if cen else None}


def scaling(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput and step time per method and client count (fp32 cut), speed-up vs the fewest clients."""
    rows = []
    fp32 = [r for r in runs if is_main(r)]
    for method in METHOD_ORDER:
        mine = sorted((r for r in fp32 if r["method"] == method), key=lambda r: r["n_clients"])
        for r in mine:
            rows.append({"method": method, "n_clients": r["n_clients"], "tokens_per_s": r["tokens_per_s"],
                         "step_ms_median": r["step_ms"]["median"], "step_ms_p90": r["step_ms"]["p90"],
                         "epoch_s": r["epoch_s"], "speedup": r["tokens_per_s"] / mine[0]["tokens_per_s"]})
    return rows


def cut_dtypes(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SplitLoRA runs that differ only in the cut dtype: bytes and losses (same seed)."""
    split = [r for r in runs if r["method"] == "splitlora" and r.get("shape", DEFAULT_SHAPE) == DEFAULT_SHAPE]
    ns = {r["n_clients"] for r in split if r["cut_dtype"] != "fp32"}
    rows = []
    order = {"fp32": 0, "bf16": 1, "fp16": 2}
    for r in sorted((r for r in split if r["n_clients"] in ns),
                    key=lambda r: (r["n_clients"], order.get(r["cut_dtype"], 9))):
        rows.append({"n_clients": r["n_clients"], "cut_dtype": r["cut_dtype"],
                     "up_bytes": r["cut"]["up_bytes"], "down_bytes": r["cut"]["down_bytes"],
                     "loss_last": r["loss"]["last"], "val_loss": r["loss"]["val"],
                     "final_step_loss": r["curve"][-1]["loss"], "step_ms_median": r["step_ms"]["median"]})
    for row in rows:
        base = next((x for x in rows if x["n_clients"] == row["n_clients"] and x["cut_dtype"] == "fp32"), None)
        row["final_step_loss_vs_fp32"] = row["final_step_loss"] - base["final_step_loss"] if base else None
    return rows


def split_shapes(runs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """SplitLoRA at ``n`` clients, each registered shape side by side (fp32 cut): bytes, phase times, losses."""
    rows = []
    for shape in sorted(SHAPES, key=lambda s: s != DEFAULT_SHAPE):
        r = _find(runs, "splitlora", n, "fp32", shape)
        if r is None:
            continue
        g = r["groups_ms"]
        rows.append({"shape": shape, "run": r["id"], "up_bytes": r["cut"]["up_bytes"],
                     "down_bytes": r["cut"]["down_bytes"], "step_ms_median": r["step_ms"]["median"],
                     "client_ms_median": g["client fwd"]["median"] + g["client bwd"]["median"],
                     "server_ms_median": g["server fwd+bwd"]["median"], "tokens_per_s": r["tokens_per_s"],
                     "loss_last": r["loss"]["last"], "val_loss": r["loss"]["val"]})
    return rows if len(rows) >= 2 else []


def _run_link(run: dict[str, Any], p: netsim.LinkProfile, algo: str) -> netsim.LinkCost:
    agg = run["aggregation"]["up_bytes"]
    return netsim.link_cost(p, run["method"], run["n_clients"], run["cut"]["up_bytes"], run["cut"]["down_bytes"],
                            agg, run["aggregate_every"], algo, run.get("shape", DEFAULT_SHAPE))


def network(runs: list[dict[str, Any]], n: int, profiles: list[netsim.LinkProfile], algo: str,
            target: float | None, window: int) -> dict[str, Any]:
    """Per profile and run at ``n`` clients: simulated link time beside measured time, and time to target loss."""
    chosen = [r for r in runs if r["n_clients"] == n]
    smoothed = {r["id"]: netsim.smooth([c["loss"] for c in r["curve"]], window) for r in chosen}
    # Default target: the best loss every compared run reaches (the worst of their minima).
    auto = max(min(v) for v in smoothed.values()) if smoothed else None
    target = auto if target is None else target
    out: dict[str, Any] = {
        "model": netsim.__doc__.split("Model (stated in every report):", 1)[1].strip(),
        "allreduce": algo, "n_clients": n, "target_loss": target, "target_auto": auto,
        "smoothing_window": window, "profiles": [p.as_dict() for p in profiles], "results": []}
    for p in profiles:
        for r in chosen:
            cost = _run_link(r, p, algo)
            steps = [c["step"] for c in r["curve"]]
            measured = [c["elapsed_s"] for c in r["curve"]]
            link = [cost.up_to(s) for s in steps]
            xs = [m + k for m, k in zip(measured, link)]
            rounds_per_epoch = E2E_TRAIN_EXAMPLES / (max(1, r["n_clients"]) * r["batch"])
            if r["method"] == "cenlora":
                rounds_per_epoch = E2E_TRAIN_EXAMPLES / r["batch"]
            epoch_link = rounds_per_epoch * cost.per_round_s + rounds_per_epoch / r["aggregate_every"] * \
                cost.per_aggregation_s
            hit = netsim.time_to_target(xs, smoothed[r["id"]], target) if target is not None else None
            idx = xs.index(hit) if hit is not None else None
            out["results"].append({
                "profile": p.name, "run": r["id"], "method": r["method"], "cut_dtype": r["cut_dtype"],
                "link_s_per_round": cost.per_round_s, "link_s_per_aggregation": cost.per_aggregation_s,
                "measured_s_run": measured[-1], "link_s_run": cost.up_to(steps[-1]),
                "measured_epoch_s": r["epoch_s"], "link_epoch_s": epoch_link,
                "time_to_target_s": hit,
                "time_to_target_measured_s": measured[idx] if idx is not None else None,
                "time_to_target_link_s": link[idx] if idx is not None else None,
                "curve_x_s": xs, "curve_loss_smoothed": smoothed[r["id"]]})
    return out


def decoding(runs: list[dict[str, Any]], profiles: list[netsim.LinkProfile]) -> list[dict[str, Any]]:
    """Per run that decoded: the measured tokens/s and, per link profile, the simulated link time
    per token (round trips x RTT + bytes each way / rate; the shares run in parallel, each client
    on its own link) and the tokens/s with it. Whole-model decoding crosses no link."""
    out = []
    for r in runs:
        d = r.get("decoding")
        if not d:
            continue
        row = {"run": r["id"], "method": r["method"], **d, "link": {}}
        for p in profiles:
            per_token = (d["round_trips_per_token"] * p.rtt_s + p.up_s(d["bytes_up_per_token"])
                         + p.down_s(d["bytes_down_per_token"])) / d["shares"] if d["through"] == "split" else 0.0
            row["link"][p.name] = {"link_s_per_token": per_token,
                                   "tokens_per_s": d["tokens"] / (d["decode_s"] + d["tokens"] * per_token)}
        out.append(row)
    return out


def build_report(runs: list[dict[str, Any]], settings: dict[str, Any], machine: dict[str, Any],
                 profiles: list[netsim.LinkProfile], algo: str = "ring", target: float | None = None,
                 window: int = 3) -> dict[str, Any]:
    """The whole report tree (``report.json``)."""
    runs = _sorted(runs)
    n = settings["clients"]
    for r in runs:
        r["bytes_per_round"] = bytes_per_round(r)
    return {
        "schema": SCHEMA, "machine": machine, "settings": settings, "runs": runs,
        "comparison": comparison(runs, n, settings["n_embd"]), "scaling": scaling(runs),
        "cut_dtype": cut_dtypes(runs), "split_shapes": split_shapes(runs, n),
        "network": network(runs, n, profiles, algo, target, window), "decoding": decoding(runs, profiles),
    }
