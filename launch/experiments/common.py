"""What the experiment recipes share: launching runs, skipping finished ones, reading results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launch.jobs import run_group

REPO = Path(__file__).resolve().parents[2]


def parse_int_list(text: str) -> list[int]:
    """``"1,2,4,8"`` or ``"1..3"`` (inclusive) or a mix: ``"1..3,8"``."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, sep, hi = part.partition("..")
        try:
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
        except ValueError:
            raise ValueError(f"expected integers like 1,2,4 or 1..3, got {text!r}") from None
    if not out:
        raise ValueError(f"empty list: {text!r}")
    return list(dict.fromkeys(out))


def passthrough(rest: list[str]) -> list[str]:
    """Extra ``--section.key=value`` (or ``--section.key value``) overrides for every training run."""
    out, i = [], 0
    while i < len(rest):
        arg = rest[i]
        key = arg[2:].partition("=")[0]
        if not arg.startswith("--") or "." not in key:
            raise ValueError(f"unknown argument {arg!r}: extra training overrides look like --section.key=value")
        if "=" not in arg:
            if i + 1 >= len(rest):
                raise ValueError(f"{arg} needs a value")
            arg, i = f"{arg}={rest[i + 1]}", i + 1
        out.append(arg)
        i += 1
    return out


class Progress:
    """One line per event: ``[3/24 +12m05s] gpt2 splitlora r=4: training ...``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.t0 = time.monotonic()

    def say(self, index: int, label: str, msg: str) -> None:
        s = int(time.monotonic() - self.t0)
        print(f"[{index}/{self.total} +{s // 60}m{s % 60:02d}s] {label}: {msg}", flush=True)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # a reader never sees a half-written file


def step_records(run_dir: Path) -> list[dict[str, Any]]:
    """The per-client-step records of a run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    recs = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return [r for r in recs if r.get("kind") == "step"]


def run_state(run_dir: Path, need_model: bool = False) -> str:
    """``done`` (summary written), ``resumable`` (a complete checkpoint), ``partial`` or ``absent``."""
    if (run_dir / "summary.json").is_file() and (not need_model or (run_dir / "model/lora.safetensors").is_file()):
        return "done"
    if (run_dir / "config.json").is_file() and (run_dir / "ckpt/latest").exists():
        return "resumable"
    return "partial" if run_dir.exists() else "absent"


# Sections that do not change what a run computes (or are checked by --resume itself).
_IGNORED_SECTIONS = ("out", "resume", "ckpt", "runtime", "eval")
# Fields a run resolves at start when left at 0 (launch.train records the resolved value).
_RESOLVED_AT_START = {("model", "num_labels")}


def config_diff(run_dir: Path, args: list[str]) -> list[str]:
    """Fields where the finished run's config.json differs from what ``args`` would run."""
    from runtime.config.parse import build_config

    want = build_config(args).to_dict()
    have = read_json(run_dir / "config.json") or {}
    diffs = []
    for section, value in want.items():
        if section in _IGNORED_SECTIONS:
            continue
        saved = have.get(section)
        if isinstance(value, dict):
            saved = saved if isinstance(saved, dict) else {}
            diffs += [f"{section}.{k}: {saved.get(k)!r} -> {v!r}" for k, v in value.items()
                      if saved.get(k) != v and not ((section, k) in _RESOLVED_AT_START and v == 0)]
        elif saved != value:
            diffs.append(f"{section}: {saved!r} -> {value!r}")
    return diffs


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


def train(nproc: int, args: list[str], run_dir: Path, log_path: Path, need_model: bool = False) -> tuple[str, int]:
    """Run ``launch.train`` under torchrun into ``run_dir`` unless it is already done.

    Returns (what happened, exit code): ``skipped`` (outputs exist), ``resumed`` (continued
    from the run's latest checkpoint with ``--resume``) or ``ran``. A run directory left
    without a checkpoint is removed and the run starts over.
    """
    state = run_state(run_dir, need_model)
    if state == "done":
        diffs = config_diff(run_dir, args)
        if diffs:
            print(f"  {run_dir} holds a finished run with other settings ({'; '.join(diffs)}): remove it or "
                  "use another output directory", file=sys.stderr, flush=True)
            return "mismatch", 3
        return "skipped", 0
    extra: list[str] = []
    if state == "resumable":
        extra = [f"--resume={run_dir}"]
    elif state == "partial":
        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "launch.train", *args, f"--out.dir={run_dir.parent}", f"--out.name={run_dir.name}", *extra]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        rc = run_group(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if rc != 0:
        print(f"  training failed (exit {rc}); last lines of {log_path}:\n{_tail(log_path)}", file=sys.stderr,
              flush=True)
    return ("resumed" if extra else "ran"), rc


def why_failed(what: str) -> str:
    """A failed ``train`` result in words."""
    return "other settings in its run directory" if what == "mismatch" else "training"


def evaluate(run_dir: Path, out_dir: Path, args: list[str], log_path: Path, in_process: bool) -> tuple[str, int]:
    """Run ``launch.evaluate --run run_dir --out out_dir *args`` unless ``out_dir/scores.json`` exists.

    ``in_process`` calls its ``main`` here (no interpreter start-up per call: what smoke
    runs spend most time on); otherwise a subprocess, which frees its memory (and GPU)
    when it ends and cannot take the sweep down with it.
    """
    if (out_dir / "scores.json").is_file():
        return "skipped", 0
    argv = ["--run", str(run_dir), "--out", str(out_dir), *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ launch.evaluate {' '.join(argv)}\n")
        log.flush()
        if in_process:
            import torch

            from launch import evaluate as evaluate_cli

            # One thread, as torchrun gives each rank: on a shared CPU more threads only
            # oversubscribe it (a 4-MR smoke decode took 21 s with 2 threads, 1.7 s with 1).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    rc = evaluate_cli.main(argv)
                except Exception as exc:  # noqa: BLE001 - one failed evaluation must not end the sweep
                    log.write(f"error: {type(exc).__name__}: {exc}\n")
                    rc = 1
                finally:
                    torch.set_num_threads(threads)
        else:
            rc = subprocess.run([sys.executable, "-m", "launch.evaluate", *argv], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if rc != 0:
        print(f"  evaluation failed (exit {rc}); last lines of {log_path}:\n{_tail(log_path)}", file=sys.stderr,
              flush=True)
    return "ran", rc


def absolute(path: str | None) -> str | None:
    """Runs start in the repository root: make user paths independent of the caller's cwd."""
    return str(Path(path).expanduser().resolve()) if path else None
