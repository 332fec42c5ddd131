"""Reproduce the SplitLoRA paper's E2E table: CenLoRA, SplitLoRA and FedLoRA at LoRA ranks 1, 2, 4, 8.

    # GPT-2 S, one GPU shared by every rank (or several: rank k uses GPU k mod n):
    python -m launch.experiments.paper_table --model.name gpt2 --model.path /path/to/gpt2 \\
        --data.dir /path/to/e2e --device cuda --out runs/paper-table
    # then GPT-2 M into the same --out: the table gains its rows
    python -m launch.experiments.paper_table --model.name gpt2-medium --model.path /path/to/gpt2-medium \\
        --data.dir /path/to/e2e --device cuda --out runs/paper-table
    # CPU smoke run of the whole recipe (tiny preset, synthetic data, a few steps):
    python -m launch.experiments.paper_table --smoke --out /tmp/paper-smoke

Each run: ``launch.train`` under torchrun with ``configs/e2e-recipe.yaml`` (CenLoRA in one
process; SplitLoRA and FedLoRA with ``--clients`` clients + a server, cut 3, client
aggregation every ``--aggregate-every`` local steps, clients served round-robin as in the
public code, ``--partition contiguous`` thirds of the training file as there), then
``launch.evaluate`` on the test set: one beam search scored against the ``tokenized``
references, then the same texts rescored against the ``raw`` ones (``--predictions``). Outputs in
``--out``: ``runs/<model>-<method>-r<r>/`` (each with ``eval-raw/``, ``eval-tokenized/``),
``logs/``, ``paper_table.md`` and ``paper_table.json`` (every run's scores, losses and
settings). Finished runs and evaluations are skipped, an interrupted run resumes from its
last checkpoint: rerun the same command to continue. The table is rebuilt from every run
under ``--out``. Extra ``--section.key=value`` arguments go to every training run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from launch.experiments import common
from launch.experiments.paper_numbers import (
    METHOD_LABELS,
    METHODS,
    METRICS,
    MODEL_LABELS,
    paper_scores,
    to_paper_scale,
)
from launch.experiments.tables import DASH, fmt_cell, md_table

STYLES = ("tokenized", "raw")  # tokenized first: the paper's convention
MODEL_ORDER = ("gpt2", "gpt2-medium", "gpt2-large", "mini", "micro", "tiny")
RECIPE = str(common.REPO / "configs" / "e2e-recipe.yaml")
# Smoke scale: small enough that the whole recipe runs on a CPU in minutes.
# The recipe's lr (2e-4 after 500 warm-up steps) would leave a few steps' LoRA at zero:
# the smoke runs use the runtime's smoke lr so that every run really moves its adapters.
SMOKE_TRAIN = ["--data.max_train_examples=240", "--data.max_eval_examples=8", "--train.batch_size=4",
               "--train.lr=0.005", "--train.warmup_steps=0"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model.name", dest="model_name", default="gpt2", help="gpt2 | gpt2-medium (a preset name)")
    ap.add_argument("--model.path", dest="model_path", default=None, help="Hugging Face GPT-2 directory")
    ap.add_argument("--data.dir", dest="data_dir", default=None, help="E2E data directory")
    ap.add_argument("--ranks", default="1,2,4,8", help="LoRA ranks (default 1,2,4,8)")
    ap.add_argument("--methods", default=",".join(METHODS), help="subset of cenlora,splitlora,fedlora")
    ap.add_argument("--partition", choices=("contiguous", "iid"), default="contiguous",
                    help="client data split: contiguous thirds as in the public code (default), or iid")
    ap.add_argument("--clients", type=int, default=3, help="clients of SplitLoRA and FedLoRA (default 3)")
    ap.add_argument("--aggregate-every", type=int, default=33,
                    help="local steps per client between aggregations (default 33: 100 client steps in total)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="training and evaluation device; cuda with one GPU: every rank shares it")
    ap.add_argument("--out", default="runs/paper-table", help="output directory (default runs/paper-table)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny preset, synthetic data unless --data.dir, few steps, 4 MRs, beam 2, no METEOR")
    ap.add_argument("--steps", type=int, default=None, help="local steps per client (default: the recipe's "
                    "5 epochs; --smoke: 3)")
    ap.add_argument("--eval-max-mrs", type=int, default=None, help="score only the first N test MRs "
                    "(default all 630; --smoke: 4)")
    ap.add_argument("--beams", type=int, default=None, help="beam width (default 10; --smoke: 2)")
    ap.add_argument("--meteor", action=argparse.BooleanOptionalAction, default=None,
                    help="score METEOR (needs Java; default on, off with --smoke)")
    ap.add_argument("--ckpt-every", type=int, default=1000, help="checkpoint every N local steps so that an "
                    "interrupted run resumes (default 1000; --smoke: end only)")
    ap.add_argument("--table-only", action="store_true", help="only rebuild the table from what --out holds")
    return ap


def _label(model: str, method: str, r: int) -> str:
    return f"{model} {method} r={r}"


def run_name(model: str, method: str, r: int) -> str:
    return f"{model}-{method}-r{r}"


def train_args(a: argparse.Namespace, model: str, method: str, r: int, extra: list[str]) -> list[str]:
    """The ``launch.train`` overrides of one run (later ones win, so ``extra`` comes last)."""
    args = [f"--config={RECIPE}", f"--method={method}", f"--lora.r={r}", f"--model.name={model}",
            f"--data.partition={a.partition}", f"--fed.aggregate_every={a.aggregate_every}",
            f"--runtime.device={a.device}", "--runtime.order=round_robin", "--eval.at_end=false"]
    if a.model_path:
        args.append(f"--model.path={a.model_path}")
    if a.data_dir:
        args.append(f"--data.dir={a.data_dir}")
    elif a.smoke:
        args.append("--data.source=synthetic")
    if a.smoke:
        args += SMOKE_TRAIN
    if a.steps:
        args.append(f"--train.max_steps={a.steps}")
    if a.ckpt_every:
        args.append(f"--ckpt.every={a.ckpt_every}")
    return args + extra


def eval_args(a: argparse.Namespace, style: str, device: str) -> list[str]:
    args = ["--refs-style", style, "--split", "test", "--device", device]
    if a.eval_max_mrs:
        args += ["--max-mrs", str(a.eval_max_mrs)]
    if a.beams:
        args += ["--beams", str(a.beams)]
    if not a.meteor:
        args.append("--no-meteor")
    if a.data_dir:
        args += ["--data-dir", a.data_dir]
    return args


def _apply_smoke(a: argparse.Namespace) -> None:
    if a.smoke:
        if a.model_path:
            print("paper_table: --smoke uses the tiny preset; ignoring --model.path", file=sys.stderr)
        a.model_name, a.model_path = "tiny", None
        a.steps = a.steps or 3
        a.eval_max_mrs = a.eval_max_mrs or 4
        a.beams = a.beams or 2
        a.meteor = bool(a.meteor)
        a.aggregate_every = min(a.aggregate_every, 2)
        a.ckpt_every = 0
    elif a.meteor is None:
        a.meteor = True


def _eval_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------- results


def collect(out: Path) -> list[dict[str, Any]]:
    """Every finished run under ``out/runs`` with its settings, losses and scores."""
    records = []
    for run_dir in sorted(p for p in (out / "runs").glob("*") if p.is_dir()):
        cfg, summary = common.read_json(run_dir / "config.json"), common.read_json(run_dir / "summary.json")
        if not cfg or not summary:
            continue
        launch = cfg.get("launch", {})
        rec: dict[str, Any] = {
            "run": run_dir.name, "model": cfg["model"]["name"], "model_path": cfg["model"]["path"],
            "method": cfg["method"], "r": cfg["lora"]["r"], "seed": cfg["train"]["seed"],
            "finetune": cfg["train"].get("finetune", "lora"), "layers": cfg["lora"].get("layers", ""),
            "client_lr_scale": cfg["fed"].get("client_lr_scale", 1.0),
            "clients": 0 if cfg["method"] == "cenlora" else launch.get("world_size", 1) - 1,
            "partition": cfg["data"]["partition"], "aggregate_every": cfg["fed"]["aggregate_every"],
            "data_source": summary.get("data_source"), "local_steps": summary.get("local_steps"),
            "loss_first": summary.get("loss_first"), "loss_last": summary.get("loss_last"),
            "val_loss": summary.get("val_loss"), "train_wall_s": summary.get("wall_s"), "scores": {},
        }
        for style in STYLES:
            s = common.read_json(run_dir / f"eval-{style}" / "scores.json")
            if s:
                rec["scores"][style] = {**s["scores"], "n_mrs": s["n_mrs"], "data_source": s["data_source"],
                                        "num_beams": s["decode"]["num_beams"],
                                        "repeat_scope": s["decode"].get("repeat_scope", "sequence")}
                rec["slots"] = s.get("slots") or rec.get("slots")  # the same texts in both styles
        paper = paper_scores(rec["model"], rec["method"], rec["r"])
        rec["paper"] = dict(zip(METRICS, paper)) if paper else None
        records.append(rec)
    return records


def _is_smoke(rec: dict[str, Any]) -> bool:
    mrs = [s.get("n_mrs") for s in rec["scores"].values()]
    return rec["data_source"] != "e2e" or rec["model"] == "tiny" or any(m is not None and m < 630 for m in mrs)


def render(records: list[dict[str, Any]]) -> str:
    """The paper's layout (rows model x method, columns r) per reference style, ours / paper / difference."""
    ranks = sorted({r["r"] for r in records})
    models = sorted({r["model"] for r in records}, key=lambda m: (MODEL_ORDER + (m,)).index(m))
    by_key = {(r["model"], r["method"], r["r"]): r for r in records}
    lines = ["# E2E test set: ours beside the SplitLoRA paper (arXiv 2407.00952)", ""]
    if any(_is_smoke(r) for r in records):
        lines += ["> **SMOKE SCALE — not a reproduction.** Some runs below use the tiny preset, synthetic data, "
                  "a few steps or a subset of the test MRs; they show that the recipe runs end to end, and "
                  "their scores are not comparable with the paper's.", ""]
    lines += ["Cells: BLEU/NIST/METEOR/ROUGE_L/CIDEr, BLEU and ROUGE_L x100 as in the paper. "
              "Rows per model and method: **ours**, the **paper**'s, and **diff** = ours - paper. "
              f"{DASH} = not run, not scored (METEOR needs Java) or not in the paper.", ""]
    for style in STYLES:
        what = ("space-tokenised references of the context||completion files: the paper's convention"
                if style == "tokenized" else "the official human references (E2E challenge numbers)")
        lines += [f"## refs_style = {style}", "", f"Scored against {what}.", ""]
        rows = []
        for model in models:
            for method in METHODS:
                if not any((model, method, r) in by_key for r in ranks):
                    continue
                ours_row, paper_row, diff_row = [], [], []
                for r in ranks:
                    rec = by_key.get((model, method, r))
                    ours = to_paper_scale(rec["scores"][style]) if rec and style in rec["scores"] else None
                    paper = paper_scores(model, method, r)
                    ours_row.append(fmt_cell(METRICS, ours))
                    paper_row.append(fmt_cell(METRICS, paper))
                    diff = None
                    if ours and paper:
                        diff = [None if o is None else o - p for o, p in zip(ours, paper)]
                    diff_row.append(fmt_cell(METRICS, diff, signed=True))
                label = [MODEL_LABELS.get(model, model), METHOD_LABELS[method]]
                rows += [[*label, "ours", *ours_row], ["", "", "paper", *paper_row], ["", "", "diff", *diff_row]]
        lines += [md_table(["model", "method", "", *[f"r={r}" for r in ranks]], rows, ["l", "l", "l"] +
                           ["r"] * len(ranks)), ""]
    lines += ["## Runs", ""]
    rows = [[r["run"], str(r["clients"] or "1 process"), r["partition"], str(r["data_source"]),
             str(r["local_steps"]), _f(r["loss_first"]), _f(r["loss_last"]), _f(r["val_loss"]),
             str(max((s["n_mrs"] for s in r["scores"].values()), default=DASH)),
             str(max((s["num_beams"] for s in r["scores"].values()), default=DASH)), _copied(r.get("slots"))]
            for r in records]
    lines += [md_table(["run", "clients", "partition", "data", "local steps", "loss first", "loss last",
                        "val loss", "test MRs", "beams", "name / near copied"], rows,
                       ["l", "r", "l", "l"] + ["r"] * 7), "",
              "*name / near copied*: share of the test texts that contain their MR's `name` (`near`) value "
              "(`metrics/slots.py`; the first human reference of each E2E test MR: 99.8 % / 99.7 %).", ""]
    return "\n".join(lines)


def _copied(slots: dict[str, Any] | None) -> str:
    if not slots or slots.get("name") is None:
        return DASH
    near = DASH if slots.get("near") is None else f"{100 * slots['near']:.1f} %"
    return f"{100 * slots['name']:.1f} % / {near}"


def _f(x: float | None) -> str:
    return DASH if x is None else f"{x:.4f}"


def write_outputs(out: Path, argv: list[str]) -> tuple[Path, list[dict[str, Any]]]:
    records = collect(out)
    common.write_json(out / "paper_table.json", {"argv": argv, "styles": list(STYLES), "runs": records})
    path = out / "paper_table.md"
    path.write_text(render(records) + "\n", encoding="utf-8")
    return path, records


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a, rest = build_parser().parse_known_args(argv)
    try:
        extra = common.passthrough(rest)
        ranks = common.parse_int_list(a.ranks)
        methods = [m.strip() for m in a.methods.split(",") if m.strip()]
        bad = sorted(set(methods) - set(METHODS))
        if bad or not methods:
            raise ValueError(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
        if a.clients < 1:
            raise ValueError("--clients must be >= 1")
    except ValueError as exc:
        print(f"paper_table: error: {exc}", file=sys.stderr)
        return 2
    _apply_smoke(a)
    a.model_path, a.data_dir = common.absolute(a.model_path), common.absolute(a.data_dir)
    out = Path(a.out).resolve()
    failed: list[str] = []
    if not a.table_only:
        device = _eval_device(a.device)
        jobs = [(m, r) for m in methods for r in ranks]
        progress = common.Progress(len(jobs))
        for i, (method, r) in enumerate(jobs, 1):
            name, label = run_name(a.model_name, method, r), _label(a.model_name, method, r)
            run_dir, nproc = out / "runs" / name, 1 if method == "cenlora" else a.clients + 1
            progress.say(i, label, f"training (torchrun, {nproc} process{'es' * (nproc > 1)}) -> {run_dir}")
            what, rc = common.train(nproc, train_args(a, a.model_name, method, r, extra), run_dir,
                                    out / "logs" / f"{name}.train.log", need_model=True)
            if rc != 0:
                failed.append(f"{label} ({common.why_failed(what)})")
                continue
            summary = common.read_json(run_dir / "summary.json") or {}
            progress.say(i, label, f"training {what}; val loss {_f(summary.get('val_loss'))}")
            decoded: Path | None = None  # the first style's texts: later styles rescore them
            for style in STYLES:
                args = eval_args(a, style, device) + (["--predictions", str(decoded)] if decoded else [])
                what, rc = common.evaluate(run_dir, run_dir / f"eval-{style}", args,
                                           out / "logs" / f"{name}.eval-{style}.log", in_process=a.smoke)
                scores = common.read_json(run_dir / f"eval-{style}" / "scores.json")
                if rc != 0 or not scores:
                    failed.append(f"{label} (evaluation, refs {style})")
                    continue
                decoded = decoded or run_dir / f"eval-{style}" / "predictions.txt"
                progress.say(i, label, f"refs {style}: evaluation {what}: "
                             f"{fmt_cell(METRICS, to_paper_scale(scores['scores']))}")
    path, records = write_outputs(out, argv)
    print(f"paper_table: {len(records)} run(s) in the table: {path} (and {path.with_suffix('.json')})", flush=True)
    if failed:
        print("paper_table: FAILED: " + "; ".join(failed) + f" (logs in {out / 'logs'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
