"""Cut x rank sweep (the SplitLoRA paper's RQ3): what the cut and the LoRA rank cost a client.

    # CPU smoke scale (tiny preset, synthetic data, a few steps):
    python -m launch.experiments.cut_rank_sweep --model tiny --cuts 1..3 --ranks 1,2,4,8 --steps 20 \\
        --data.source=synthetic --out runs/cut-rank-tiny
    # GPT-2 S on a GPU, every cut:
    python -m launch.experiments.cut_rank_sweep --model gpt2 --model-path /path/to/gpt2 --device cuda \\
        --steps 500 --config configs/e2e-recipe.yaml --data.dir=/path/to/e2e

For every (cut, rank) it trains SplitLoRA for ``--steps`` local steps per client (torchrun,
``--clients`` clients + server, clients served round-robin, every batch padded to
``--seq-len`` so that bytes and FLOPs are measured at one sequence length) and reports:

- client LoRA parameters, counted on the client part as the runtime builds it;
- client FLOPs per token, forward and forward+backward, from ``models/flops.py`` at
  ``--seq-len`` (matmul FLOPs; the formula is checked against FlopCounterMode in tests);
- client peak memory: the largest ``cpu_rss_mib`` (and ``cuda_peak_mib`` on GPU) of the
  clients in ``summary.json``;
- bytes across the cut per client step: mean of ``bytes_up + bytes_down`` in metrics.jsonl;
- validation loss after the fixed budget (``summary.json`` ``val_loss``);
- with ``--eval``: the E2E scores of the trained model on the test split (beam search once,
  scored against the raw and the tokenized references: ``<run>/eval-raw``, ``eval-tokenized``),
  so that BLEU stands beside FLOPs, memory and bytes.

Writes ``sweep.md``, ``sweep.json`` and four PNGs into ``--out``; run directories go to
``--runs-dir`` (default ``<out>/runs``, logs in its ``logs/``). Finished runs are skipped. Extra
``--section.key=value`` arguments go to every training run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from launch.experiments import common
from launch.experiments.tables import DASH, fmt_count, md_table

SCORE_STYLES = ("raw", "tokenized")  # raw first: its beam search is the one made; tokenized rescoring it
BLEU_PLOT = "bleu_vs_rank.png"  # only when the runs were scored (--eval)
PLOTS = ("client_memory_vs_cut.png", "bytes_vs_cut.png", "loss_vs_rank.png", "client_flops_vs_cut.png")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="GPT-2 preset: tiny (default), gpt2, gpt2-medium, gpt2-large")
    ap.add_argument("--model-path", default=None, help="Hugging Face GPT-2 directory (real weights)")
    ap.add_argument("--cuts", default=None, help="cuts, e.g. 1..3 or 1,3,6 (default 1..n_layer-1)")
    ap.add_argument("--ranks", default="1,2,4,8", help="LoRA ranks (default 1,2,4,8)")
    ap.add_argument("--steps", type=int, default=20, help="local steps per client (default 20)")
    ap.add_argument("--clients", type=int, default=2, help="clients (default 2)")
    ap.add_argument("--batch-size", type=int, default=8, help="batch per client (default 8)")
    ap.add_argument("--seq-len", type=int, default=128,
                    help="every batch is padded to this length; FLOPs are computed at it (default 128)")
    ap.add_argument("--attention", choices=("math", "recompute"), default="math",
                    help="attention backward count: math (4 products) or recompute (flash kernels: 5)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--config", default=None, help="a config file for every run (e.g. configs/e2e-recipe.yaml)")
    ap.add_argument("--out", default="runs/cut-rank-sweep", help="output directory")
    ap.add_argument("--runs-dir", default=None, help="where the run directories go (default <out>/runs)")
    ap.add_argument("--table-only", action="store_true", help="only rebuild table and plots from the runs")
    ap.add_argument("--eval", action="store_true", help="decode the E2E test split and score it (BLEU ... CIDEr)")
    ap.add_argument("--beams", type=int, default=None, help="with --eval: beam width (default: the run's, 10)")
    ap.add_argument("--eval-max-mrs", type=int, default=None, help="with --eval: only the first N test MRs")
    ap.add_argument("--meteor", action=argparse.BooleanOptionalAction, default=True,
                    help="with --eval: score METEOR too (needs Java; default on)")
    return ap


def train_args(a: argparse.Namespace, cut: int, r: int, extra: list[str]) -> list[str]:
    args = [f"--config={a.config}"] if a.config else []
    args += ["--method=splitlora", f"--model.name={a.model}", f"--split.cut={cut}", f"--lora.r={r}",
             f"--train.max_steps={a.steps}", f"--train.batch_size={a.batch_size}", f"--data.seq_len={a.seq_len}",
             "--data.pad_to_seq_len=true", "--runtime.order=round_robin", f"--runtime.device={a.device}",
             "--eval.at_end=false", f"--out.save_model={str(a.eval).lower()}"]
    if a.model_path:
        args.append(f"--model.path={a.model_path}")
    return args + extra


# ---------------------------------------------------------------------------- measurements


_PARAM_CACHE: dict[tuple, Any] = {}


def client_lora_parameters(cfg: Any, cut: int) -> int:
    """Trainable parameters of the client part, built as the runtime builds it (on the meta
    device: shapes only, so any model size is cheap)."""
    import torch

    from models.gpt2 import GPT2
    from models.lora import LoRAConfig, apply_lora
    from models.split import split_model
    from runtime.build import model_config

    mc = model_config(cfg)
    targets = tuple(t.strip() for t in cfg.lora.targets.split(",") if t.strip())
    key = (repr(mc), cfg.lora.r, cfg.lora.alpha, targets)
    if key not in _PARAM_CACHE:
        with torch.device("meta"):
            whole = GPT2(mc)
            apply_lora(whole, LoRAConfig(r=cfg.lora.r, alpha=cfg.lora.alpha, targets=targets))
        _PARAM_CACHE[key] = whole
    client, _ = split_model(_PARAM_CACHE[key], cut)
    return client.num_parameters(trainable_only=True)


def measure(run_dir: Path, attention: str) -> dict[str, Any] | None:
    """One finished run's row, from its config.json, summary.json and metrics.jsonl."""
    from models.flops import client_flops
    from runtime.build import model_config
    from runtime.config.parse import config_from_dict

    saved, summary = common.read_json(run_dir / "config.json"), common.read_json(run_dir / "summary.json")
    if not saved or not summary:
        return None
    cfg = config_from_dict({k: v for k, v in saved.items() if k != "launch"})
    cut, r, seq = cfg.split.cut, cfg.lora.r, cfg.data.seq_len
    targets = [t.strip() for t in cfg.lora.targets.split(",") if t.strip()]
    flops = client_flops(model_config(cfg), cut, seq, r, targets, attention)
    clients = summary.get("clients", {}).values()
    mem = [c.get("memory", {}) for c in clients]
    steps = common.step_records(run_dir)
    per_step = [s.get("bytes_up", 0) + s.get("bytes_down", 0) for s in steps]
    cuda = [m["cuda_peak_mib"] for m in mem if "cuda_peak_mib" in m]
    return {
        "run": run_dir.name, "model": cfg.model.name, "cut": cut, "r": r, "seq_len": seq,
        "padded": cfg.data.pad_to_seq_len, "n_clients": summary.get("n_clients"),
        "local_steps": summary.get("local_steps"), "data_source": summary.get("data_source"),
        "device": saved.get("launch", {}).get("device"),
        "client_lora_params": client_lora_parameters(cfg, cut),
        "client_flops_per_token_fwd": flops.forward, "client_flops_per_token_train": flops.train,
        "flops_attention": attention,
        "client_peak_rss_mib": max((m.get("cpu_rss_mib", 0.0) for m in mem), default=None),
        "client_cuda_peak_mib": max(cuda) if cuda else None,
        "server_peak_rss_mib": (summary.get("server_memory") or {}).get("cpu_rss_mib"),
        "client_part_mib": max((m.get("part_mib", 0.0) for m in mem), default=None),
        "server_part_mib": (summary.get("server_memory") or {}).get("part_mib"),
        "bytes_per_step": statistics.fmean(per_step) if per_step else None,
        "bytes_up_per_step": statistics.fmean(s.get("bytes_up", 0) for s in steps) if steps else None,
        "bytes_down_per_step": statistics.fmean(s.get("bytes_down", 0) for s in steps) if steps else None,
        "val_loss": summary.get("val_loss"), "loss_first": summary.get("loss_first"),
        "loss_last": summary.get("loss_last"), "train_wall_s": summary.get("wall_s"),
        "tokens_per_s": summary.get("tokens_per_s"), "scores": (scores := scores_of(run_dir)),
        "bleu_raw": scores.get("raw", {}).get("BLEU"),
    }


def eval_args(a: argparse.Namespace) -> list[str]:
    """``launch.evaluate`` arguments of one reference style's scoring (the style is added per call)."""
    args = ["--split", "test", "--device", "cuda" if a.device == "cuda" else "cpu"]
    args += ["--beams", str(a.beams)] if a.beams else []
    args += ["--max-mrs", str(a.eval_max_mrs)] if a.eval_max_mrs else []
    return args + ([] if a.meteor else ["--no-meteor"])


def evaluate_run(a: argparse.Namespace, run_dir: Path, logs: Path) -> list[str]:
    """Decode once (raw refs), rescore the same texts against the tokenized refs; failures by name."""
    failed = []
    for style in SCORE_STYLES:
        args = [*eval_args(a), "--refs-style", style]
        if style != SCORE_STYLES[0]:
            args += ["--predictions", str(run_dir / f"eval-{SCORE_STYLES[0]}" / "predictions.txt")]
        _, rc = common.evaluate(run_dir, run_dir / f"eval-{style}", args, logs / f"{run_dir.name}.eval-{style}.log",
                                in_process=False)
        if rc != 0:
            failed.append(f"{run_dir.name} (evaluation, refs {style})")
            break
    return failed


def scores_of(run_dir: Path) -> dict[str, Any]:
    """``{"raw": {...}, "tokenized": {...}}`` of the styles scored so far (empty without --eval)."""
    found = {}
    for style in SCORE_STYLES:
        rec = common.read_json(run_dir / f"eval-{style}" / "scores.json")
        if rec:
            found[style] = {**rec["scores"], "n_mrs": rec["n_mrs"], "num_beams": rec["decode"]["num_beams"]}
    return found


def collect(runs_dir: Path, attention: str) -> list[dict[str, Any]]:
    rows = [m for d in sorted(runs_dir.glob("cut*-r*")) if d.is_dir() and (m := measure(d, attention))]
    return sorted(rows, key=lambda x: (x["cut"], x["r"]))


def _smoke(rows: list[dict[str, Any]]) -> bool:
    return any(r["model"] == "tiny" or r["data_source"] != "e2e" or r["device"] == "cpu" for r in rows)


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "# Cut x rank sweep\n\nNo finished runs.\n"
    first = rows[0]
    lines = ["# Cut x rank sweep: client cost of SplitLoRA", ""]
    if _smoke(rows):
        lines += ["> **CPU / SMOKE SCALE — not a reproduction.** Tiny preset or synthetic data or a CPU, and a "
                  "few steps: the numbers show what the recipe measures and how, not the paper's results.", ""]
    lines += [f"Model `{first['model']}`, {first['n_clients']} client(s), {first['local_steps']} local steps per "
              f"client, data {first['data_source']}, device {first['device']}, every batch padded to "
              f"T = {first['seq_len']} tokens.", "",
              "- **client LoRA params**: trainable parameters of the built client part (embeddings + blocks "
              "0..cut-1).",
              f"- **client FLOPs/token**: `models/flops.py` at T = {first['seq_len']} (matmul FLOPs, attention "
              f"backward counted `{first['flops_attention']}`); fwd and fwd+bwd.",
              "- **client / server peak RSS (part)**: largest peak resident memory of a client process, and the "
              "server's, during training (the Python/torch runtime included; each rank builds only its own part), "
              "with the bytes of the part it holds in brackets.",
              "- **bytes/step**: activations up + gradients down (+ targets, mask) per client step, measured.",
              "- **val loss**: validation loss after the fixed budget."]
    scored = [r for r in rows if r.get("scores", {}).get("raw")]
    if scored:
        s = scored[0]["scores"]["raw"]
        lines += [f"- **BLEU raw / tokenized** (x100), **NIST**, **METEOR**, **ROUGE_L** (x100), **CIDEr**: E2E "
                  f"test split, {s['n_mrs']} MRs, beam {s['num_beams']}, against the official raw references "
                  "(BLEU also against the tokenized ones; one decode scored twice)."]
    lines += [""]
    cuda = any(r["client_cuda_peak_mib"] is not None for r in rows)
    header = ["cut", "r", "client LoRA params", "client MFLOP/token fwd", "client MFLOP/token fwd+bwd",
              "client peak RSS MiB (part)", "server peak RSS MiB (part)"]
    header += (["client CUDA peak MiB"] if cuda else []) + ["bytes/step", "val loss"]
    header += ["BLEU raw", "BLEU tok", "NIST", "METEOR", "ROUGE_L", "CIDEr"] if scored else []
    body = []
    for r in rows:
        row = [str(r["cut"]), str(r["r"]), fmt_count(r["client_lora_params"]),
               f"{r['client_flops_per_token_fwd'] / 1e6:.4f}", f"{r['client_flops_per_token_train'] / 1e6:.4f}",
               _with_part(r["client_peak_rss_mib"], r.get("client_part_mib")),
               _with_part(r["server_peak_rss_mib"], r.get("server_part_mib"))]
        row += [_num(r["client_cuda_peak_mib"], 1)] if cuda else []
        row += [fmt_count(r["bytes_per_step"]), _num(r["val_loss"], 4)]
        row += _score_cells(r.get("scores", {})) if scored else []
        body.append(row)
    lines += [md_table(header, body), ""]
    plots = [*PLOTS, BLEU_PLOT] if scored else list(PLOTS)
    lines += ["Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
    return "\n".join(lines)


def _score_cells(scores: dict[str, Any]) -> list[str]:
    raw, tok = scores.get("raw", {}), scores.get("tokenized", {})

    def pct(x: float | None) -> str:
        return DASH if x is None else f"{100 * x:.2f}"

    return [pct(raw.get("BLEU")), pct(tok.get("BLEU")), _num(raw.get("NIST"), 4), _num(raw.get("METEOR"), 4),
            pct(raw.get("ROUGE_L")), _num(raw.get("CIDEr"), 4)]


def _with_part(rss: float | None, part: float | None) -> str:
    return _num(rss, 0) + (f" ({part:.0f})" if part is not None else "")


def _num(x: float | None, decimals: int) -> str:
    return DASH if x is None else f"{x:.{decimals}f}"


def plot(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Client memory vs cut, bytes vs cut, loss vs rank, client FLOPs vs cut (one line per rank or cut)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts, ranks = sorted({r["cut"] for r in rows}), sorted({r["r"] for r in rows})
    at = {(r["cut"], r["r"]): r for r in rows}
    tag = " (CPU smoke scale)" if _smoke(rows) else ""

    def series(key: str, by: str) -> list[tuple[str, list[int], list[float]]]:
        outer, inner = (ranks, cuts) if by == "cut" else (cuts, ranks)
        lines = []
        for o in outer:
            pts = [(i, at[(i, o) if by == "cut" else (o, i)].get(key)) for i in inner
                   if ((i, o) if by == "cut" else (o, i)) in at]
            pts = [(i, v) for i, v in pts if v is not None]
            lines.append((f"r={o}" if by == "cut" else f"cut={o}", [p[0] for p in pts], [p[1] for p in pts]))
        return lines

    specs = [(PLOTS[0], "client_peak_rss_mib", "cut", "client peak RSS (MiB)", 1.0),
             (PLOTS[1], "bytes_per_step", "cut", "bytes across the cut per step (KiB)", 1 / 1024),
             (PLOTS[2], "val_loss", "r", "validation loss", 1.0),
             (PLOTS[3], "client_flops_per_token_train", "cut", "client MFLOP per token (fwd+bwd)", 1e-6)]
    if any(r.get("bleu_raw") is not None for r in rows):
        specs.append((BLEU_PLOT, "bleu_raw", "r", "E2E test BLEU x100 (raw refs)", 100.0))
    written = []
    for name, key, by, ylabel, scale in specs:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for label, xs, ys in series(key, by):
            ax.plot(xs, [y * scale for y in ys], marker="o", label=label)
        if by == "r":
            ax.set_xscale("log", base=2)
        ax.set_xticks(cuts if by == "cut" else ranks)
        ax.set_xticklabels([str(x) for x in (cuts if by == "cut" else ranks)])
        ax.set_xlabel("cut (client blocks)" if by == "cut" else "LoRA rank r")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{rows[0]['model']}: {ylabel.split(' (')[0]}{tag}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written


# ---------------------------------------------------------------------------- main


def _n_layer(a: argparse.Namespace) -> int:
    from runtime.build import model_config
    from runtime.config.parse import build_config

    argv = [f"--model.name={a.model}"] + ([f"--model.path={a.model_path}"] if a.model_path else [])
    return model_config(build_config(argv)).n_layer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a, rest = build_parser().parse_known_args(argv)
    try:
        extra = common.passthrough(rest)
        a.model_path, a.config = common.absolute(a.model_path), common.absolute(a.config)
        n_layer = _n_layer(a)
        cuts = common.parse_int_list(a.cuts or f"1..{n_layer - 1}")
        ranks = common.parse_int_list(a.ranks)
        if not all(1 <= c <= n_layer - 1 for c in cuts):
            raise ValueError(f"--cuts must lie in 1..{n_layer - 1} for a {n_layer}-block model, got {a.cuts}")
        if a.clients < 1 or a.steps < 1:
            raise ValueError("--clients and --steps must be >= 1")
        if any(x.startswith("--lora.layers=") for x in extra):
            raise ValueError("--lora.layers is not supported here: the sweep's client FLOPs and adapter sizes "
                             "assume adapters in every block the client holds")
    except (ValueError, FileNotFoundError) as exc:
        print(f"cut_rank_sweep: error: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out).resolve()
    runs_dir = Path(a.runs_dir).resolve() if a.runs_dir else out / "runs"
    failed = []
    if not a.table_only:
        jobs = [(c, r) for c in cuts for r in ranks]
        progress = common.Progress(len(jobs))
        for i, (cut, r) in enumerate(jobs, 1):
            label, run_dir = f"cut={cut} r={r}", runs_dir / f"cut{cut}-r{r}"
            progress.say(i, label, f"training SplitLoRA ({a.clients} client(s), {a.steps} steps) -> {run_dir}")
            what, rc = common.train(a.clients + 1, train_args(a, cut, r, extra), run_dir,
                                    runs_dir / "logs" / f"cut{cut}-r{r}.train.log")
            if rc != 0:
                failed.append(f"{label} ({common.why_failed(what)})")
                continue
            if a.eval:
                failed += evaluate_run(a, run_dir, runs_dir / "logs")
            row = measure(run_dir, a.attention) or {}
            progress.say(i, label, f"{what}: val loss {_num(row.get('val_loss'), 4)}, "
                         f"{fmt_count(row.get('bytes_per_step'))} B/step, "
                         f"client {_num(row.get('client_peak_rss_mib'), 0)} MiB"
                         + (f", raw BLEU {_score_cells(row['scores'])[0]}" if row.get("scores") else ""))
    rows = collect(runs_dir, a.attention)  # every finished run there: sweeps accumulate
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "sweep.json", {"argv": argv, "rows": rows})
    (out / "sweep.md").write_text(render(rows), encoding="utf-8")
    if rows:
        plot(rows, out)
    print(f"cut_rank_sweep: {len(rows)} run(s): {out / 'sweep.md'}, sweep.json, " + ", ".join(PLOTS), flush=True)
    if failed:
        print(f"cut_rank_sweep: FAILED: {', '.join(failed)} (logs in {runs_dir / 'logs'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
