"""Train with CenLoRA, SplitLoRA or FedLoRA.

    # SplitLoRA, 2 clients + server, on the pretrained micro base (built once, cached), CPU:
    torchrun --standalone --nproc_per_node=3 -m launch.train --config configs/first-run.yaml
    # the plumbing smoke defaults (random tiny model; it cannot learn a language):
    torchrun --standalone --nproc_per_node=3 -m launch.train
    # the centralized reference, one process:
    torchrun --standalone --nproc_per_node=1 -m launch.train --method cenlora
    # FedLoRA (whole model on each client), real weights:
    torchrun --standalone --nproc_per_node=4 -m launch.train --method fedlora \\
        --model.name gpt2-medium --model.path /path/to/gpt2-medium

Rank 0 is the server (SplitLoRA: blocks after the cut + LM head + loss; FedLoRA: only
coordination), ranks 1..N are clients. Overrides are ``--section.key=value`` (or
``--section.key value``) and ``--config FILE.json|yaml``; see runtime/config/schema.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import traceback
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from runtime.config import Config, ConfigError, validate_for_world
from runtime.config.parse import build_config


def one_line(exc: BaseException) -> str:
    """A one-line description; errors raised on a peer arrive wrapped with its traceback."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    head = lines[0]
    causes = [ln for ln in lines[1:] if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", ln)]
    if causes and causes[-1] not in head:
        head = f"{head} {causes[-1]}"
    return f"{type(exc).__name__}: {head}"


def _fail(role: str, exc: BaseException, code: int) -> int:
    print(f"splitlora: error [{role}]: {one_line(exc)}", file=sys.stderr, flush=True)
    return code


def prepare(argv: list[str]) -> tuple[Config, int, int, int]:
    """Parse and validate everything that can be checked before any process group starts.

    Returns (config, rank, world size, step to resume from). With ``--resume DIR`` the saved
    config is the base, the command line may override what does not change the run's
    identity, and DIR's latest complete checkpoint must load.
    """
    from runtime.build import check_model_fits_task, model_config, run_num_labels
    from runtime.control.dist import read_env_world
    from runtime.io.checkpoint import check_resume_config, latest_step, load_rank, read_saved_config

    cfg = build_config(argv)
    rank, world_size, _ = read_env_world()
    start_step = 0
    if cfg.resume:
        run_dir = Path(cfg.resume)
        saved = read_saved_config(run_dir)
        base = {k: v for k, v in saved.items() if k not in ("launch", "resume")}
        cfg = build_config(argv, base=base)
        cfg.out.dir, cfg.out.name = str(run_dir.parent), run_dir.name
        check_resume_config(saved, cfg, world_size)
        start_step = latest_step(run_dir)
        own = "cenlora" if cfg.method == "cenlora" else ("server" if rank == 0 else f"client{rank}")
        if own != "server" or cfg.method == "splitlora":
            load_rank(run_dir, start_step, own)  # fail now, cleanly, on a truncated/corrupted file
    if cfg.model.wants_cached_base():
        from runtime.pretrain import cached_base

        cfg.model.path = str(cached_base(cfg))  # built once per user (file-locked), then reused
    check_model_fits_task(cfg)
    if cfg.data.task == "classify" and not cfg.model.num_labels:
        cfg.model.num_labels = run_num_labels(cfg)  # read the labels once, here; config.json records them
    validate_for_world(cfg, world_size, model_config(cfg).n_layer)
    if cfg.data.task != "classify" and (cfg.data.source == "e2e" or (cfg.data.source == "auto" and (
            cfg.data.dir or os.environ.get("SPLITLORA_DATA")))):
        from runtime.data.locate import find_data_dir

        find_data_dir(cfg.data.dir)  # missing data: one clear error on every rank, before any group
    if rank == 0 and cfg.model.name == "tiny" and not cfg.model.path and "--config" not in argv:
        print("splitlora: note: a random tiny base with GPT-2's 50k vocabulary: the loss stays near ln 50257 = 10.8 "
              "(a plumbing smoke run); for a model that learns on a CPU add --config configs/first-run.yaml",
              file=sys.stderr, flush=True)
    if rank == 0 and cfg.model.name != "tiny" and "--config" not in argv and cfg.train.lr == 5e-3:
        print("splitlora: note: the defaults are a smoke run (lr 5e-3, 40 steps); for the E2E recipe "
              "add --config configs/e2e-recipe.yaml", file=sys.stderr, flush=True)
    return cfg, rank, world_size, start_step


@record
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        from runtime.config.help import config_help

        print(__doc__)
        print("Options (every config key: --section.key=VALUE, or in a --config file):\n")
        print(config_help())
        return 0
    role = f"rank {os.environ.get('RANK', '0')}"
    from runtime.io.checkpoint import CheckpointError

    try:
        cfg, rank, world_size, start_step = prepare(argv)
    except ConfigError as exc:
        # Every rank parses the same command line: one message (rank 0's) is enough.
        return _fail(role, exc, 2) if os.environ.get("RANK", "0") == "0" else 2
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        return _fail(role, exc, 2)
    try:
        return _run(cfg, rank, world_size, start_step)
    except KeyboardInterrupt:
        return _fail(role, KeyboardInterrupt("interrupted"), 130)
    except BaseException as exc:  # noqa: BLE001 - every failure must end this rank non-zero, now
        if os.environ.get("SPLITLORA_TRACEBACK"):
            traceback.print_exc()
        sys.stderr.write("\n")  # end a progress bar's line first
        _fail(role, exc, 1)
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip atexit/RPC teardown: with a dead peer it can block; torchrun ends the others.
        os._exit(1)


def _run(cfg: Config, rank: int, world_size: int, start_step: int) -> int:
    import torch

    from runtime.inputs import RunPlan, load_clients_data
    from runtime.io.artifacts import run_name, write_json

    if cfg.method == "cenlora":
        from runtime.control.dist import pick_device
        from runtime.roles.centralized import run_cenlora

        run_dir = Path(cfg.out.dir) / run_name(cfg)
        device = pick_device(cfg, 0)
        _start(cfg, run_dir, {"world_size": 1, "device": str(device), "host": socket.gethostname()}, start_step)
        summary = run_cenlora(cfg, run_dir, device, start_step)
        write_json(run_dir / "summary.json", summary)
        _report(run_dir, summary)
        return 0

    from runtime.config.validate import n_logical_clients
    from runtime.control.dist import broadcast_object, init_world, shutdown_world
    from runtime.fed.population import Population
    from runtime.roles.client import run_client
    from runtime.roles.server import run_server

    datas = []
    if rank != 0:
        # Load and partition before any group starts: bad data fails here, cleanly.
        n = n_logical_clients(cfg, world_size)
        hosted = Population(n, world_size - 1, cfg.fed.clients_per_round or n, cfg.train.seed).hosted(rank)
        datas = load_clients_data(cfg, hosted, n_clients=n)
        if rank == 1:
            print(f"splitlora: data: {datas[0].partition_info['note']}", file=sys.stderr, flush=True)
    world = init_world(cfg)
    plan = broadcast_object(RunPlan.make(cfg, datas[0].all_counts, datas[0].source, start_step) if rank == 1
                            else None, src=1)
    run_dir = Path(str(broadcast_object(str(Path(cfg.out.dir) / run_name(cfg)) if rank == 0 else None, src=0)))
    if world.is_server:
        _start(cfg, run_dir, {"world_size": world_size, "device": str(world.device), "host": socket.gethostname(),
                              "node_rank": os.environ.get("GROUP_RANK", os.environ.get("SLURM_NODEID")),
                              "data_source": plan.source, "client_samples": plan.counts,
                              "clients": len(plan.counts), "clients_per_round": plan.per_round,
                              "local_steps": plan.local_steps, "client_backend": world.client_backend,
                              "client_backend_reason": world.client_backend_reason, "network": world.network},
               start_step)
        if world.device.type == "cuda":
            print(f"splitlora: client group: {world.client_backend} ({world.client_backend_reason})",
                  file=sys.stderr, flush=True)
        summary = run_server(cfg, world, run_dir, plan)
        write_json(run_dir / "summary.json", summary)
        _report(run_dir, summary)
        graceful = not summary.get("dropped_clients")
        if not graceful:
            time.sleep(2.0)  # let the last clients' finish replies leave before the agent stops
    else:
        graceful = run_client(cfg, world, run_dir, datas, plan)
    del torch
    # A graceful shutdown is a collective of every worker: impossible once a client died.
    shutdown_world(cfg, graceful=graceful)
    return 0


def _start(cfg: Config, run_dir: Path, launch: dict, start_step: int = 0) -> None:
    from runtime.io.artifacts import write_json

    run_dir.mkdir(parents=True, exist_ok=True)
    print(cfg.to_json(), flush=True)
    if start_step:
        # Keep the original config.json (it defines the run); record the resume beside it.
        with open(run_dir / "resumes.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"from_step": start_step, "config": cfg.to_dict(), "launch": launch}) + "\n")
        print(f"splitlora: resuming {run_dir} from step {start_step}", file=sys.stderr, flush=True)
        return
    write_json(run_dir / "config.json", {**cfg.to_dict(), "launch": launch})
    print(f"splitlora: {cfg.method} -> {run_dir}", file=sys.stderr, flush=True)


def _report(run_dir: Path, summary: dict) -> None:
    first, last, val = summary.get("loss_first"), summary.get("loss_last"), summary.get("val_loss")
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    print(f"splitlora: done: loss {fmt(first)} -> {fmt(last)}, val loss {fmt(val)}, "
          f"{summary.get('tokens_per_s') or 0:.0f} tok/s, data: {summary.get('data_source')}; "
          f"outputs in {run_dir}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
