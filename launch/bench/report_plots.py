"""PNG plots of a report (matplotlib, headless). Returns {plot name: file name}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launch.bench.report import PHASE_GROUPS, is_main

DPI = 80  # small files: the sample report is committed
COLORS = {"cenlora": "tab:gray", "fedlora": "tab:blue", "splitlora": "tab:orange"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _main_runs(report: dict[str, Any]) -> list[dict[str, Any]]:
    n = report["settings"]["clients"]
    return [r for r in report["runs"] if r["n_clients"] == n and is_main(r)]


def plot_phases(report: dict[str, Any], path: Path) -> None:
    plt = _plt()
    runs = _main_runs(report)
    names = [n for n, _ in PHASE_GROUPS] + ["aggregation"]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(runs)))
    cmap = plt.get_cmap("tab10")
    for i, r in enumerate(runs):
        left = 0.0
        vals = [r["groups_ms"][n]["median"] for n, _ in PHASE_GROUPS] + [r["aggregation"]["per_step_ms"]]
        for j, (name, v) in enumerate(zip(names, vals)):
            ax.barh(i, v, left=left, color=cmap(j), label=name if i == 0 else None)
            left += v
        ax.plot([r["step_ms"]["median"]] * 2, [i - 0.4, i + 0.4], color="k", lw=2,
                label="measured step (median)" if i == 0 else None)
    ax.set_yticks(range(len(runs)), [r["id"] for r in runs])
    ax.set_xlabel("ms per client step (medians per phase)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def plot_bytes(report: dict[str, Any], path: Path) -> None:
    plt = _plt()
    runs = [r for r in report["runs"] if r["method"] != "cenlora"]
    fig, ax = plt.subplots(figsize=(8, 3))
    xs = range(len(runs))
    # Zero bars (no cut traffic in FedLoRA, no aggregation traffic with one client) are left out.
    cut = [r["bytes_per_round"]["cut_per_client"] / 2**10 or float("nan") for r in runs]
    agg = [r["bytes_per_round"]["aggregation_per_client"] / 2**10 or float("nan") for r in runs]
    ax.bar([x - 0.2 for x in xs], cut, 0.4, label="cut (up+down)")
    ax.bar([x + 0.2 for x in xs], agg, 0.4, label="aggregation (up+down)")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1)
    ax.set_xticks(list(xs), [r["id"] for r in runs], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("KiB per client per round")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def plot_scaling(report: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3))
    for method in COLORS:
        rows = [s for s in report["scaling"] if s["method"] == method]
        if not rows:
            continue
        ns = [s["n_clients"] for s in rows]
        a1.plot(ns, [s["tokens_per_s"] for s in rows], "o-", color=COLORS[method], label=method)
        a2.plot(ns, [s["step_ms_median"] for s in rows], "o-", color=COLORS[method], label=method)
    for ax in (a1, a2):
        ax.set_xlabel("clients")
        ax.set_xticks(sorted({s["n_clients"] for s in report["scaling"]}))
    a1.set_ylabel("tokens/s (all clients)")
    a2.set_ylabel("client step, ms (median)")
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def plot_cut_dtype(report: dict[str, Any], path: Path) -> None:
    plt = _plt()
    rows = {(d["n_clients"], d["cut_dtype"]) for d in report["cut_dtype"]}
    runs = [r for r in report["runs"] if r["method"] == "splitlora" and (r["n_clients"], r["cut_dtype"]) in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3))
    base = {r["n_clients"]: r for r in runs if r["cut_dtype"] == "fp32"}
    for r in runs:
        ref = base.get(r["n_clients"])
        if ref is None or r is ref:
            continue
        # The curves overlap at plot scale: show the difference to the fp32 run, step by step.
        a1.plot([c["step"] for c in r["curve"]],
                [c["loss"] - b["loss"] for c, b in zip(r["curve"], ref["curve"])], label=f"{r['id']} − fp32")
    a1.axhline(0.0, color="k", lw=0.8)
    a1.set_xlabel("client step")
    a1.set_ylabel("Δ training loss vs fp32 cut")
    a1.legend(fontsize=8)
    a2.bar(range(len(runs)), [(r["cut"]["up_bytes"] + r["cut"]["down_bytes"]) / 2**10 for r in runs])
    a2.set_xticks(range(len(runs)), [r["id"] for r in runs], fontsize=8)
    a2.set_ylabel("KiB across the cut per step")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def plot_time_to_target(report: dict[str, Any], path: Path) -> None:
    plt = _plt()
    net = report["network"]
    profiles = [p["name"] for p in net["profiles"]]
    fig, axes = plt.subplots(2, len(profiles), figsize=(3.6 * len(profiles), 6), squeeze=False)
    styles = {"fp32": "-", "bf16": "--", "fp16": ":"}
    for ax, prof in zip(axes[1], profiles):
        # Bottom row: time to the target loss, measured and simulated link time stacked, never merged.
        rows = [x for x in net["results"] if x["profile"] == prof]
        ys = range(len(rows))
        measured = [x["time_to_target_measured_s"] or 0.0 for x in rows]
        link = [x["time_to_target_link_s"] or 0.0 for x in rows]
        ax.barh(ys, measured, color=[COLORS[x["method"]] for x in rows], label="measured")
        ax.barh(ys, link, left=measured, color="white", edgecolor="k", hatch="///", label="simulated link")
        ax.set_yticks(list(ys), [x["run"] for x in rows], fontsize=7)
        ax.set_xlabel("time to target loss, s")
    axes[1][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars fill the axes
    for ax, prof in zip(axes[0], profiles):
        for x in (x for x in net["results"] if x["profile"] == prof):
            ax.plot(x["curve_x_s"], x["curve_loss_smoothed"], styles.get(x["cut_dtype"], "-"),
                    color=COLORS[x["method"]], label=x["run"])
        if net["target_loss"] is not None:
            ax.axhline(net["target_loss"], color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_title(prof, fontsize=9)
        ax.set_xlabel("measured + simulated link time, s")
    for ax in axes[0][1:]:
        ax.sharey(axes[0][0])
    axes[0][0].set_ylabel("training loss (smoothed)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def write_plots(report: dict[str, Any], out: Path) -> dict[str, str]:
    """Write every plot that has data into ``out``; names are relative to it (for report.md)."""
    jobs = {"phases": plot_phases, "bytes": plot_bytes, "scaling": plot_scaling, "time_to_target": plot_time_to_target}
    if report["cut_dtype"]:
        jobs["cut_dtype"] = plot_cut_dtype
    written = {}
    for name, fn in jobs.items():
        fn(report, out / f"{name}.png")
        written[name] = f"{name}.png"
    return written
