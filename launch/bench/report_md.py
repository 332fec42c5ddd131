"""Render ``report.json`` as Markdown (``report.md``); ``brief=True`` gives the console summary."""

from __future__ import annotations

from typing import Any

from launch.bench.links import links_section
from launch.bench.report import PHASE_GROUPS, is_main


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_s(s: float | None) -> str:
    if s is None:
        return "not reached"
    if s >= 7200:
        return f"{s / 3600:.2f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1e3:.1f} ms"


def _f(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _loads(xs: list[float] | None, sep: str = "/") -> str:
    return "n/a" if not xs else sep.join(f"{x:.1f}" for x in xs)


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if c == "r" else "---" for c in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _main_runs(report: dict[str, Any]) -> list[dict[str, Any]]:
    n = report["settings"]["clients"]
    return [r for r in report["runs"] if r["n_clients"] == n and is_main(r)]


def phase_table(report: dict[str, Any]) -> list[str]:
    runs = _main_runs(report)
    rows = []
    for name, _ in PHASE_GROUPS:
        rows.append([name, *(f"{r['groups_ms'][name]['median']:.1f} / {r['groups_ms'][name]['p90']:.1f}"
                             for r in runs)])
    rows.append(["aggregation (per step, amortised)", *(f"{r['aggregation']['per_step_ms']:.1f}" for r in runs)])
    rows.append(["**step (measured)**", *(f"**{r['step_ms']['median']:.1f} / {r['step_ms']['p90']:.1f}**"
                                          for r in runs)])
    rows.append(["phases / step (min–max over steps)",
                 *(f"{r['phase_sum']['min']:.3f}–{r['phase_sum']['max']:.3f}" for r in runs)])
    return _table(["phase, ms median / p90", *(r["id"] for r in runs)], rows)


def bytes_table(report: dict[str, Any]) -> list[str]:
    rows = []
    for r in _main_runs(report) + [r for r in report["runs"] if not is_main(r)]:
        b = r["bytes_per_round"]
        rows.append([r["id"], fmt_bytes(r["cut"]["up_bytes"]), fmt_bytes(r["cut"]["down_bytes"]),
                     fmt_bytes(b["aggregation_per_client"]), fmt_bytes(b["per_client"]), fmt_bytes(b["all_clients"])])
    return _table(["run", "cut up / step", "cut down / step", "aggregation / round / client (up+down)",
                   "per client / round", "all clients / round"], rows)


def aggregation_table(report: dict[str, Any]) -> list[str]:
    rows = []
    for r in report["runs"]:
        a = r["aggregation"]
        if r["method"] == "cenlora" or not a["rounds"]:
            continue
        rows.append([r["id"], str(a["rounds"]), fmt_bytes(a["up_bytes"] if r["n_clients"] > 1 else 0),
                     f"{a['collective_ms']['median']:.1f}", f"{a['with_wait_ms']['median']:.1f}",
                     f"{a['per_step_ms']:.1f}"])
    return _table(["run", "rounds", "payload / client", "collective ms (median round)",
                   "with wait ms (median round)", "per step ms (amortised)"], rows)


def runs_table(report: dict[str, Any]) -> list[str]:
    def rss(v: dict[str, Any] | None) -> str:  # "peak RSS (part)": the process beside the model part it holds
        if not v:
            return "–"
        part = v.get("part_mib")
        return f"{v['cpu_rss_mib']:.0f}" + (f" ({part:.0f})" if part is not None else "")

    rows = []
    for r in report["runs"]:
        mem = r["memory"]["ranks"]
        rank0 = next(iter(mem.values()))
        clients = [v for k, v in mem.items() if "client" in k and v]
        top = max(clients, key=lambda v: v["cpu_rss_mib"]) if clients else None
        rows.append([r["id"], f"{r['tokens_per_s']:.0f}", f"{r['examples_per_s']:.2f}",
                     f"{r['step_ms']['median']:.1f}", fmt_s(r["epoch_s"]), rss(rank0), rss(top),
                     _f(r["loss"]["last"], 4), _f(r["loss"]["val"], 4)])
    return _table(["run", "tokens/s", "examples/s", "step ms (median)", "epoch-equivalent (42,061 ex.)",
                   "rank 0 peak RSS MiB (part)", "max client peak RSS MiB (part)", "train loss (last 10 %)",
                   "val loss"], rows)


def scaling_table(report: dict[str, Any]) -> list[str]:
    rows = [[s["method"], str(s["n_clients"]), f"{s['tokens_per_s']:.0f}", f"{s['speedup']:.2f}",
             f"{s['step_ms_median']:.1f}", f"{s['step_ms_p90']:.1f}", fmt_s(s["epoch_s"])] for s in report["scaling"]]
    return _table(["method", "clients", "tokens/s", "× vs fewest clients", "step ms median", "step ms p90",
                   "epoch-equivalent"], rows)


def dtype_table(report: dict[str, Any]) -> list[str]:
    def delta(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.2e}"

    rows = [[str(d["n_clients"]), d["cut_dtype"], fmt_bytes(d["up_bytes"]), fmt_bytes(d["down_bytes"]),
             f"{d['final_step_loss']:.6f}", delta(d["final_step_loss_vs_fp32"]), _f(d["loss_last"], 6),
             _f(d["val_loss"], 6), f"{d['step_ms_median']:.1f}"] for d in report["cut_dtype"]]
    return _table(["clients", "cut dtype", "up / step", "down / step", "loss at last step", "Δ vs fp32",
                   "train loss (last 10 %)", "val loss", "step ms median"], rows, "llrrrrrrr")


def shapes_table(report: dict[str, Any]) -> list[str]:
    rows = [[d["shape"], d["run"], fmt_bytes(d["up_bytes"]), fmt_bytes(d["down_bytes"]), f"{d['step_ms_median']:.1f}",
             f"{d['client_ms_median']:.1f}", f"{d['server_ms_median']:.1f}", f"{d['tokens_per_s']:.0f}",
             _f(d["loss_last"], 6), _f(d["val_loss"], 6)] for d in report.get("split_shapes", [])]
    return _table(["shape", "run", "up / step", "down / step", "step ms median", "client fwd+bwd ms",
                   "server fwd+bwd ms", "tokens/s", "train loss (last 10 %)", "val loss"], rows, "llrrrrrrrr")


def network_section(report: dict[str, Any]) -> list[str]:
    net = report["network"]
    lines = ["Assumed links (per client; not measured):", ""]
    lines += _table(["profile", "up Mbit/s", "down Mbit/s", "RTT ms", "note"],
                    [[p["name"], f"{p['up_mbps']:g}", f"{p['down_mbps']:g}", f"{p['rtt_ms']:g}", p["note"]]
                     for p in net["profiles"]], "lrrrl")
    lines += ["Model:", "", net["model"], "",
              f"All-reduce model used below: **{net['allreduce']}**. Target loss "
              f"{_f(net['target_loss'], 4)} (smoothed over {net['smoothing_window']} steps"
              + ("; the best loss every run reaches)" if net["target_loss"] == net["target_auto"] else ")")
              + f", {net['n_clients']} client(s). Measured and simulated time are separate columns; "
              "the time-to-target is their sum.", ""]
    rows = [[x["profile"], x["run"], fmt_s(x["link_s_per_round"]), fmt_s(x["link_s_per_aggregation"]),
             fmt_s(x["measured_s_run"]), fmt_s(x["link_s_run"]), fmt_s(x["measured_epoch_s"]), fmt_s(x["link_epoch_s"]),
             fmt_s(x["time_to_target_measured_s"]) if x["time_to_target_s"] is not None else "—",
             fmt_s(x["time_to_target_link_s"]) if x["time_to_target_s"] is not None else "—",
             fmt_s(x["time_to_target_s"])] for x in net["results"]]
    lines += _table(["profile", "run", "link / round", "link / aggregation", "run: measured", "run: link (sim.)",
                     "epoch: measured", "epoch: link (sim.)", "to target: measured", "to target: link (sim.)",
                     "to target: total"], rows, "ll" + "r" * 9)
    return lines


def decoding_section(report: dict[str, Any]) -> list[str]:
    """``--eval.at_end``'s beam search after training (launch.bench ``--decode-mrs``), per run."""
    rows = report.get("decoding") or []
    if not rows:
        return []
    names = list(rows[0]["link"])
    lines = ["## Decoding", "",
             "Beam search after training (`--eval.at_end` on validation MRs), measured: CenLoRA and FedLoRA "
             "decode the whole model in one process; SplitLoRA through the split (each party its own part, "
             "per step the new positions' hidden states up and the candidates or hidden states down), every "
             "client rank decoding a share at once. Per generated token: the payload bytes each way and the "
             "round trips; with a link profile, the *simulated* tokens/s adds round trips × RTT + bytes / rate.",
             ""]
    table = [[x["run"], x["through"], f"{x['mrs']} × {x['beams']}", str(x["tokens"]), _f(x["tokens_per_s"]),
              fmt_bytes(x.get("bytes_up_per_token")) if x["through"] == "split" else "—",
              fmt_bytes(x.get("bytes_down_per_token")) if x["through"] == "split" else "—",
              _f(x.get("round_trips_per_token"), 3) if x["through"] == "split" else "—",
              *[_f(x["link"][n]["tokens_per_s"]) for n in names]] for x in rows]
    return lines + _table(["run", "decoded", "MRs × beams", "tokens", "tokens/s (measured)", "up / token",
                           "down / token", "round trips / token", *[f"tokens/s + {n} (sim.)" for n in names]],
                          table, "llrrrrrr" + "r" * len(names))


def checks_section(report: dict[str, Any]) -> list[str]:
    rows = [[r["id"], f"{r['phase_sum']['min']:.4f}", f"{r['phase_sum']['max']:.4f}",
             f"{r['phase_sum']['mean_sum_over_mean_step']:.4f}",
             ", ".join(f"{v:.3f}" for _, v in sorted(r["coverage"].items()))] for r in report["runs"]]
    return _table(["run", "Σ phases / step min", "max", "Σ mean phases / mean step",
                   "(Σ steps + Σ aggregations) / loop wall, per client"], rows)


def _caution(report: dict[str, Any]) -> list[str]:
    """Say so when other work competed for the CPU, and add the user's note."""
    m, out = report["machine"], []
    loads = m.get("load_1min_around_jobs")
    if loads and loads[1] > (m["cpu_count"] or 1):
        out += [f"> **Shared machine.** The 1-minute load average around the jobs ({_loads(loads, ' to ')}) "
                f"exceeded the {m['cpu_count']} core(s): other work competed for the CPU during these runs, so "
                "times carry that noise; byte counts and losses do not.", ""]
    if report["settings"].get("note"):
        out += [f"> {report['settings']['note']}", ""]
    return out


def _settings_lines(report: dict[str, Any]) -> list[str]:
    s = report["settings"]
    head = [f"model {s['model']} (n_layer {s['n_layer']}, d {s['n_embd']}, vocab {s['vocab_size']}), "
            f"{s['clients']} client(s) × batch {s['batch_per_client']} × seq {s['seq_len']}, cut {s['cut']}, "
            f"steps {s['steps']} (first {s['warmup']} left out), aggregation every {s['aggregate_every']} steps", ""]
    return head + [f"- **failed, not in this report:** {x}" for x in report.get("failed_jobs", [])]


def _comparison_lines(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    return [f"- SplitLoRA / CenLoRA time for the same examples: **{_f(c['ratio_split_over_cen_time'], 3)}**",
            f"- cut bytes per step: {c['cut_bytes_per_step_measured']:.0f} measured "
            f"(activations + gradients {c['cut_bytes_activations_only']:.0f}) vs theory 2·B·T·d·4 = "
            f"{c['cut_bytes_theory_2BTd4']:.0f} → {c['bytes_vs_theory']:.4f} "
            "(the rest is targets + loss mask, int64)", ""]


def _machine_lines(report: dict[str, Any]) -> list[str]:
    """Machine, threads (and whether the largest job oversubscribes the cores), command."""
    m, s = report["machine"], report["settings"]
    th = s["threads"]
    n_max = max(r["n_clients"] for r in report["runs"])
    busy = th["server_resolved"] + n_max * th["client_resolved"]
    rerendered = " (this report was re-rendered from its finished runs)" if s.get("rendered_from_existing_runs") else ""
    return [f"Machine: `{m['platform']}`, {m['cpu_count']} CPU(s) ({m['processor']}), Python {m['python']}, "
            f"torch {m['torch']}, device **{m['device']}**; 1-minute load average before/after the jobs: "
            f"{_loads(m.get('load_1min_around_jobs'), ' to ')}.", "",
            f"Threads: rank 0 (server / CenLoRA) `--runtime.server_threads={th['server_threads']}` "
            f"(→ {th['server_resolved']}), clients `--runtime.client_threads={th['client_threads']}` "
            f"(→ {th['client_resolved']}); every process of a job shares this machine's cores: the largest job "
            f"runs {busy} compute thread(s) on {m['cpu_count']} core(s)"
            + (" (oversubscribed: waiting processes mostly sleep, but timings include contention)."
               if busy > (m["cpu_count"] or 1) else "."), "",
            f"Command: `{s['command']}`" + rerendered, ""]


def _optional_sections(report: dict[str, Any], img: Any) -> list[str]:
    """The cut-dtype and split-shape sections, where the report has those runs."""
    out: list[str] = []
    if report["cut_dtype"]:
        out += ["## Activation compression (cut dtype)", "",
                "SplitLoRA with the activations and their gradients cast before sending and back after "
                "(`--split.cut_dtype`), same seed and order.", "", *dtype_table(report), *img("cut_dtype", "dtype")]
    if report.get("split_shapes"):
        out += ["## Split shapes: vanilla beside U", "",
                "Same model, seed and examples. Vanilla (`--split.shape=vanilla`): the server holds the blocks "
                "from the cut on, `ln_f`, the head and the loss, so the client sends its targets (token ids) "
                "with the activations. U (`--split.shape=u`): the client keeps `ln_f`, the head and the loss "
                "(and blocks from `--split.head_cut` on); each direction carries two (B, T, d) tensors, no "
                "integer tensor. In U, the client's fwd+bwd includes its back end (the head).", "",
                *shapes_table(report)]
    return out


def render_markdown(report: dict[str, Any], brief: bool = False) -> str:
    """The whole report (or, ``brief``, the phase table and the headline comparison)."""
    s = report["settings"]
    head, cmp_lines = _settings_lines(report), _comparison_lines(report["comparison"])
    if brief:
        return "\n".join(head + phase_table(report) + cmp_lines)
    plots = report.get("plots", {})

    def img(key: str, alt: str) -> list[str]:
        return [f"![{alt}]({plots[key]})", ""] if key in plots else []

    out = ["# SplitLoRA latency report", "", *_machine_lines(report), *_caution(report), *head,
           f"Data: {s['data']}; lr {s['lr']}, seed {s['seed']}, server order {s['order']}. CenLoRA runs "
           "batch clients × batch in one process, so every method processes the same examples per round. "
           "Every figure comes from the runtime's timers and byte counters (metrics.jsonl, summary.json); "
           "medians and p90 are over all clients' steps after the warm-up.", "",
           "## Per-phase time per client step", "",
           "SplitLoRA phases (runtime/steps.py): client forward to the cut; cut up = the forward RPC minus "
           "the server's wait and forward; server wait = queueing for the server (it admits one client at a "
           "time); server forward + backward of its blocks; cut down = from the backward's start to the "
           "gradient's arrival at the cut, minus the server backward; client backward; optimizer = the "
           "server_step RPC + the client's AdamW. CenLoRA/FedLoRA: forward, backward, AdamW of the whole "
           "model. Aggregation (all_reduce of client adapters) is timed apart from the steps.", "",
           *phase_table(report), *cmp_lines, *img("phases", "phases"),
           "## Bytes across the cut and for aggregation", "",
           "Per client step (SplitLoRA): up = activations + targets + loss mask, down = the activation "
           "gradient. Aggregation payload = the client's adapters (sent and received once per all-reduce "
           "round); with one client nothing is sent. A round = aggregate-every steps + one aggregation.", "",
           *bytes_table(report), *img("bytes", "bytes"),
           "Aggregation time: each client's record starts when it enters the all_reduce, so it includes "
           "waiting for the slowest client (\"with wait\" = the round's longest record). The client that "
           "arrives last waits least, so \"collective\" = the round's shortest record ≈ the all_reduce "
           "itself.", "", *aggregation_table(report),
           "## Throughput, epoch-equivalent time and peak memory", "",
           "tokens/s: all clients together, over the steady window's wall time. Epoch-equivalent: the E2E "
           "training set (42,061 examples) at this rate (batches padded to seq_len). Peak memory: peak RSS "
           "per process during training (summary.json), with the bytes of the model part it holds in "
           "brackets.", "", *runs_table(report),
           "## Scaling with the number of clients", "",
           "CenLoRA at N clients is one process with batch N × batch. On a machine with fewer cores than "
           "processes, the clients of FedLoRA compute in parallel only as far as cores allow, and a job with "
           "more processes also takes a larger share of a machine that other work shares.", "",
           *scaling_table(report), *img("scaling", "scaling"), *_optional_sections(report, img),
           "## Network simulation (simulated, kept apart from measured time)", "", *network_section(report),
           *img("time_to_target", "time to target"), *links_section(report.get("links") or []),
           *decoding_section(report),
           "## Checks", "",
           "The per-phase times of a step add up to its measured step time by construction "
           "(cut up / cut down are the remainders of two client-side intervals; a negative remainder would "
           "be clamped to 0 and show as a sum above 1). The last column is an independent check: the step "
           "and aggregation records against each client's whole-loop wall time (the rest is data loading "
           "and logging).", "", *checks_section(report)]
    return "\n".join(out) + "\n"
