"""Latency report: CenLoRA, FedLoRA and SplitLoRA on the same model, data and batch.

    python -m launch.bench --out runs/bench                       # tiny preset, 2 clients
    python -m launch.bench --scaling 1,2,4 --cut-dtypes fp32,bf16 --net.profile lan wifi 4g
    python -m launch.bench --config bench.yaml --out DIR          # keys as the long options
    python -m launch.bench --model gpt2 --clients 1 --steps 8 --batch 4 --seq-len 128
    python -m launch.bench --decode-mrs 16                        # and decoding after training
    sudo python -m launch.bench --netlab 20,5,10/50               # and over emulated links (launch/bench/links.py)

Every method runs as a real torchrun job of ``launch.train`` on synthetic data padded to
``--seq-len`` (so every step moves exactly B·T·d activations across the cut), for
``--steps`` local steps; the first ``--warmup`` steps of every client are left out of
the statistics. CenLoRA gets batch ``clients × batch`` so that every method processes
the same examples per round. All times come from the runtime's timers (metrics.jsonl).

Writes ``DIR/report.json``, ``DIR/report.md`` and PNG plots; the runs stay in
``DIR/runs/<method>-n<clients>[-<dtype>]`` (``--runs-dir`` puts them elsewhere;
``--reuse`` re-reads finished ones instead of running them again). Link profiles
(``--net.profile``) add *simulated* transfer time beside the measured time; see
``launch/bench/netsim.py`` for the model. ``--decode-mrs N``: every run then decodes N validation
MRs (``--eval.at_end``), and the report adds tokens/s and, through the split, bytes and round
trips per generated token, with the link profiles' simulated time per token.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launch.bench import netsim
from launch.bench.report import JOB_FILE, RunSpec, analyze_run
from launch.bench.report_build import build_report, load_avg, machine_info
from launch.jobs import JobError, Terminated, run_group, sigterm_raises
from runtime.split.shapes import DEFAULT_SHAPE, SHAPES

REPO = Path(__file__).resolve().parents[2]
METHODS = ("cenlora", "fedlora", "splitlora")


def run_job(method: str, nproc: int, args: list[str], out: Path, name: str, timeout: float) -> Path:
    """Run one ``launch.train`` job under torchrun; returns its run directory."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "launch.train", f"--method={method}", f"--out.dir={out}", f"--out.name={name}", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    before = load_avg()
    t0 = time.monotonic()
    try:
        proc = run_group(cmd, timeout=timeout, cwd=REPO, capture_output=True, text=True, env=env)
    except subprocess.TimeoutExpired:
        raise JobError(f"bench: {name} stopped after its {timeout:.0f}-s limit") from None
    if proc.returncode != 0:
        lines = proc.stderr.splitlines()
        # The ranks' own one-line errors first: torchrun's closing summary hides them.
        why = [ln for ln in lines if "splitlora: error" in ln][:4] or lines[-15:]
        raise JobError(f"bench: {name} failed (exit {proc.returncode}):\n" + "\n".join(why))
    wall = time.monotonic() - t0
    # Beside the run: how it was started and how busy the machine was (other work inflates timings).
    job = {"command": cmd[1:], "wall_s": wall, "load_avg_before": before, "load_avg_after": load_avg()}
    (out / name / JOB_FILE).write_text(json.dumps(job, indent=1) + "\n")
    print(f"bench: {name:22s} done in {wall:.1f}s", file=sys.stderr, flush=True)
    return out / name


def _csv(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in _csv(text)]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="splitlora-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="JSON or YAML mapping of the options below (long names, - or _)")
    ap.add_argument("--out", default=None, help="report directory (default runs/bench-<time>)")
    ap.add_argument("--runs-dir", default=None, help="where the training runs go (default OUT/runs)")
    ap.add_argument("--model", default="tiny", help="preset (random weights): tiny, gpt2, ...")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of cenlora, fedlora, splitlora")
    ap.add_argument("--clients", type=int, default=2, help="clients of the main comparison")
    ap.add_argument("--scaling", default="", help="comma list of client counts for the scaling table, e.g. 1,2,4")
    ap.add_argument("--steps", type=int, default=20, help="local steps per client")
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the statistics")
    ap.add_argument("--batch", type=int, default=8, help="batch per client")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--cut", type=int, default=3)
    ap.add_argument("--cut-dtypes", default="fp32", help="SplitLoRA cut dtypes to compare, e.g. fp32,bf16")
    ap.add_argument("--shapes", default=DEFAULT_SHAPE,
                    help=f"SplitLoRA split shapes to compare, e.g. {','.join(sorted(SHAPES, reverse=True))}")
    ap.add_argument("--aggregate-every", type=int, default=5, help="local steps between aggregations")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the runtime's)")
    ap.add_argument("--order", default="round_robin", choices=("arrival", "round_robin"),
                    help="server admission order (round_robin: same seed, same result)")
    ap.add_argument("--server-threads", type=int, default=0, help="torch threads on rank 0 (0: every core)")
    ap.add_argument("--client-threads", type=int, default=1, help="torch threads per client")
    ap.add_argument("--threads", type=int, default=None, help="set both thread counts (the old option)")
    ap.add_argument("--eval-examples", type=int, default=32, help="validation examples for the final val loss")
    ap.add_argument("--netlab", default="",
                    help="also run FedLoRA and SplitLoRA at --clients over emulated links (launch.netlab, root): "
                         "comma list of R or UP/DOWN Mbit/s per client; an unshaped baseline runs first")
    ap.add_argument("--decode-mrs", type=int, default=0,
                    help="after training, every run decodes this many validation MRs (beam search; SplitLoRA "
                         "through the split) for the report's decoding table; 0 = no decoding")
    ap.add_argument("--decode-beams", type=int, default=4)
    ap.add_argument("--decode-tokens", type=int, default=32, help="new tokens per MR at most")
    ap.add_argument("--net.profile", dest="net_profile", nargs="+", default=["lan", "wifi", "4g"],
                    help="link profiles: lan wifi 4g custom:<Mbps>:<rtt_ms> (space or comma separated)")
    ap.add_argument("--net.allreduce", dest="net_allreduce", default="ring", choices=("ring", "star"),
                    help="aggregation model for the simulated link time")
    ap.add_argument("--target-loss", type=float, default=None,
                    help="time-to-target loss (default: the best smoothed loss every method reaches)")
    ap.add_argument("--smooth", type=int, default=3, help="moving-average window of the loss curves")
    ap.add_argument("--extra", action="append", default=[], help="more launch.train overrides, e.g. --extra=--lora.r=8")
    ap.add_argument("--note", default="", help="free text put at the top of report.md (e.g. what else ran)")
    ap.add_argument("--reuse", action="store_true", help="re-read finished runs under DIR/runs instead of rerunning")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    return ap


def load_config_file(path: str) -> dict[str, Any]:
    """A bench config file: a mapping of long option names (``seq-len`` or ``seq_len``)."""
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SystemExit(f"bench: {path}: expected a mapping of options")
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_").replace(".", "_")
        if isinstance(v, list) and key not in ("net_profile", "extra"):
            v = ",".join(str(x) for x in v)  # scaling: [1, 2, 4] == "1,2,4"
        out[key] = v
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = build_parser()
    first, _ = ap.parse_known_args(argv)
    if first.config:
        values = load_config_file(first.config)
        known = {a.dest for a in ap._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            ap.error(f"{first.config}: unknown option(s) {', '.join(unknown)}")
        if isinstance(values.get("net_profile"), str):
            values["net_profile"] = [values["net_profile"]]
        ap.set_defaults(**values)
    a = ap.parse_args(argv)
    if a.threads is not None:
        a.server_threads = a.client_threads = a.threads
    a.methods = _csv(a.methods)
    a.scaling = _ints(a.scaling)
    a.cut_dtypes = _csv(a.cut_dtypes)
    a.shapes = _csv(a.shapes)
    if set(a.shapes) - set(SHAPES):
        ap.error(f"--shapes: choose from {', '.join(SHAPES)}; got {a.shapes}")
    bad = [m for m in a.methods if m not in METHODS]
    if bad or not a.methods:
        ap.error(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    if a.steps <= a.warmup:
        ap.error("--steps must exceed --warmup")
    if a.clients < 1 or any(n < 1 for n in a.scaling):
        ap.error("client counts must be >= 1")
    try:
        a.profiles = netsim.parse_profiles(a.net_profile)
    except ValueError as e:
        ap.error(str(e))
    from launch.bench.links import parse_rates

    try:
        a.netlab_rates = parse_rates(a.netlab) if a.netlab else []
    except ValueError as e:
        ap.error(f"--netlab: {e}")
    if a.netlab_rates:
        from launch import netlab

        netlab.check_tools()  # root and iproute2, before any job runs
    return a


def plan_jobs(a: argparse.Namespace) -> list[RunSpec]:
    """Every method at every client count, plus SplitLoRA at --clients for each extra cut dtype."""
    specs = [RunSpec(m, n) for n in sorted({a.clients, *a.scaling}) for m in a.methods]
    if "splitlora" in a.methods:
        specs += [RunSpec("splitlora", a.clients, d) for d in a.cut_dtypes if d != "fp32"]
        specs += [RunSpec("splitlora", a.clients, "fp32", s) for s in a.shapes if s != DEFAULT_SHAPE]
    return specs


def train_args(a: argparse.Namespace, spec: RunSpec) -> list[str]:
    """The launch.train overrides of one job; everything but the method, batch and cut dtype is shared."""
    common = [f"--model.name={a.model}", "--data.source=synthetic", f"--data.seq_len={a.seq_len}",
              "--data.pad_to_seq_len=true", f"--data.max_eval_examples={a.eval_examples}",
              f"--train.max_steps={a.steps}", "--lora.dropout=0", f"--runtime.order={a.order}",
              f"--runtime.server_threads={a.server_threads}", f"--runtime.client_threads={a.client_threads}",
              "--out.save_model=false", f"--fed.aggregate_every={a.aggregate_every}", f"--split.cut={a.cut}"]
    if a.lr is not None:
        common.append(f"--train.lr={a.lr}")
    if a.decode_mrs:  # tokens/s and bytes per token of decoding, in the report
        common += ["--eval.at_end=true", "--eval.split=valid", f"--eval.max_mrs={a.decode_mrs}",
                   f"--eval.num_beams={a.decode_beams}", f"--eval.max_new_tokens={a.decode_tokens}",
                   "--eval.meteor=false"]
    batch = a.batch * spec.n_clients if spec.method == "cenlora" else a.batch
    return [*common, f"--train.batch_size={batch}", f"--split.cut_dtype={spec.cut_dtype}",
            *([f"--split.shape={spec.shape}"] if spec.method == "splitlora" else []), *a.extra]


def settings_of(a: argparse.Namespace, run_dirs: list[Path], argv: list[str]) -> dict[str, Any]:
    """The shared settings, with the model shape and thread counts as the runtime resolved them."""
    from runtime.build import model_config
    from runtime.config.parse import config_from_dict

    d = json.loads((run_dirs[0] / "config.json").read_text())
    mc = model_config(config_from_dict({k: v for k, v in d.items() if k != "launch"}))
    cores = os.cpu_count() or 1
    return {
        "model": a.model, "n_layer": mc.n_layer, "n_embd": mc.n_embd, "vocab_size": mc.vocab_size,
        "methods": a.methods, "clients": a.clients, "scaling": a.scaling, "cut_dtypes": a.cut_dtypes,
        "shapes": a.shapes,
        "batch_per_client": a.batch, "seq_len": a.seq_len, "cut": a.cut, "steps": a.steps, "warmup": a.warmup,
        "aggregate_every": a.aggregate_every, "lr": d["train"]["lr"], "order": a.order, "seed": d["train"]["seed"],
        "data": "synthetic, every batch padded to seq_len", "eval_examples": a.eval_examples,
        "decode": {"mrs": a.decode_mrs, "beams": a.decode_beams, "max_new_tokens": a.decode_tokens},
        "netlab": a.netlab,
        "threads": {"server_threads": a.server_threads, "client_threads": a.client_threads,
                    "server_resolved": a.server_threads or cores, "client_resolved": max(1, a.client_threads),
                    "note": "--runtime.server_threads / --runtime.client_threads; 0 = every core on rank 0 "
                            "(CenLoRA uses the server count)"},
        # --reuse only re-reads finished runs: the command that reproduces them is the one without it.
        "command": "python -m launch.bench " + " ".join(x for x in argv if x != "--reuse"),
        "rendered_from_existing_runs": a.reuse, "note": a.note,
    }


def rounded(obj: Any, digits: int = 7) -> Any:
    """Floats to ``digits`` significant digits (timer noise is far larger; keeps report.json small)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    return obj


def attempt_job(method: str, nproc: int, args: list[str], out: Path, name: str, timeout: float,
                failed: list[str]) -> bool:
    """``run_job``, but a failure is noted in ``failed`` and returns False; a SIGTERM is noted
    too and raised again (``Terminated``) so that the caller runs no more jobs."""
    try:
        run_job(method, nproc, args, out, name, timeout)
        return True
    except JobError as e:
        print(e, file=sys.stderr, flush=True)
        failed.append(str(e).splitlines()[0].removeprefix("bench: "))
        return False
    except Terminated:
        failed.append(f"{name} stopped by SIGTERM; the jobs after it did not run")
        print(f"bench: {failed[-1]}", file=sys.stderr, flush=True)
        raise


def run_jobs(a: argparse.Namespace, specs: list[RunSpec], runs_dir: Path) -> tuple[list, list[str]]:
    """Run (or, ``--reuse``, re-read) every job; a failed one is reported and the others go on;
    a SIGTERM stops the job in progress and runs no more (what finished is still reported).

    Returns the finished runs as (directory, spec) pairs and one line per failed job."""
    done: list[tuple[Path, RunSpec]] = []
    failed: list[str] = []
    with contextlib.suppress(Terminated):
        for spec in specs:
            d = runs_dir / spec.run_id
            if not (a.reuse and (d / "summary.json").exists()):
                if d.exists():
                    shutil.rmtree(d)  # a fresh run: metrics.jsonl is appended to
                if not attempt_job(spec.method, spec.nproc, train_args(a, spec), runs_dir, spec.run_id, a.timeout,
                                   failed):
                    continue
            done.append((d, spec))
    return done, failed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    out = Path(a.out or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    runs_dir = Path(a.runs_dir) if a.runs_dir else out / "runs"
    specs = plan_jobs(a)
    print(f"bench: {len(specs)} job(s): {', '.join(s.run_id for s in specs)}", file=sys.stderr, flush=True)
    links: list[dict[str, Any]] = []
    with sigterm_raises():  # a SIGTERM to this driver stops the job it is running, then reports
        done, failed = run_jobs(a, specs, runs_dir)
        if a.netlab_rates:
            from launch.bench.links import run_links

            with contextlib.suppress(Terminated):
                links = run_links(a, specs, runs_dir, failed, train_args)
    if not done:
        raise SystemExit("bench: no job finished; nothing to report")
    dirs, specs = [d for d, _ in done], [s for _, s in done]
    runs = [analyze_run(d, s, a.warmup) for d, s in zip(dirs, specs)]
    launches = [json.loads((d / "config.json").read_text())["launch"] for d in dirs]
    device = next((x["device"] for x in launches if "device" in x), "cpu")  # CenLoRA records none
    report = build_report(runs, settings_of(a, dirs, argv), machine_info(device, runs), a.profiles,
                          a.net_allreduce, a.target_loss, a.smooth)
    report["failed_jobs"] = failed
    report["links"] = links  # --netlab: measured over emulated links (launch/bench/links.py)
    # The client group's backend per run (NCCL only where each client has a GPU of its own).
    report["client_backends"] = {spec.run_id: x["client_backend"] for spec, x in zip(specs, launches)
                                 if "client_backend" in x}
    from launch.bench.report_md import render_markdown

    out.mkdir(parents=True, exist_ok=True)
    if not a.no_plots:
        from launch.bench.report_plots import write_plots

        report["plots"] = write_plots(report, out)
    (out / "report.json").write_text(json.dumps(rounded(report), indent=1) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    print(render_markdown(report, brief=True))
    print(f"bench: report in {out}/report.md", file=sys.stderr)
    if failed:
        print(f"bench: {len(failed)} job(s) failed; the report holds the others", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
