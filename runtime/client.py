"""A client's process (ranks 1..N) for SplitLoRA and FedLoRA.

The loop is the same for every strategy: local steps on the private shard (through the
server for SplitLoRA), strategy hooks around each optimizer step, and every
``fed.aggregate_every`` steps one aggregation round over the client-only group.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from models.lora import load_lora_state_dict
from runtime import coordinator, split_server
from runtime.aggregate import client_weights
from runtime.artifacts import save_model
from runtime.build import (
    build_full_model,
    build_part,
    build_scheduler,
    head_cut,
    load_trained_state,
    set_threads,
    trained_state,
)
from runtime.checkpoint import load_rank, save_rank, set_rng_state
from runtime.config import Config
from runtime.dist import SERVER, World, abort, world_barrier
from runtime.inputs import ClientData, RunPlan
from runtime.roles import LOG_FLUSH, eval_loss, evaluate_at_end, maybe_inject_fault
from runtime.steps import Stepper
from runtime.strategies import ClientContext, build_strategy
from runtime.telemetry import now, peak_memory
from runtime.watchdog import Watchdog


def build_client_module(cfg: Config, device: torch.device, cut: int) -> torch.nn.Module:
    module = build_part(cfg, "client", cut) if cfg.method == "splitlora" else build_full_model(cfg)
    return module.to(device).train()


def run_client(cfg: Config, world: World, run_dir: Path, data: ClientData, plan: RunPlan) -> bool:
    """Train this client; returns False when a client dropped out (then RPC shuts down non-gracefully)."""
    set_threads(cfg.runtime.client_threads)
    cuts = cfg.split.cuts(world.n_clients)
    module = build_client_module(cfg, world.device, cuts[world.client_index])
    strategy = build_strategy(cfg.fed.strategy, cfg.fed)
    t = cfg.train
    opt = torch.optim.AdamW(strategy.param_groups(module, t.lr), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                            weight_decay=t.weight_decay, foreach=False)
    ranks = cfg.fed.rank_list()
    weights = client_weights(plan.counts, cfg.fed.weighting)
    ctx = ClientContext(module=module, optimizer=opt, client_index=world.client_index, n_clients=world.n_clients,
                        weights=weights, group=world.client_group, device=world.device,
                        rank_budget=ranks[world.client_index] if ranks else cfg.lora.r, global_rank=cfg.lora.r,
                        seed=cfg.train.seed, cuts=cuts if cfg.method == "splitlora" else None)
    stepper = Stepper(module, opt, build_scheduler(cfg, opt, plan.local_steps), world.device,
                      t.label_smoothing, t.grad_clip, before_step=lambda: strategy.before_step(ctx),
                      after_step=lambda: strategy.after_step(ctx))
    via_host = cfg.runtime.cuda_cut == "host"

    def one_step(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        if cfg.method == "splitlora" and cfg.split.shape == "u":
            return stepper.split_step_u(world.rank, batch, cfg.split.cut_dtype, via_host, cuts[world.client_index],
                                        head_cut(cfg, module.config.n_layer))
        if cfg.method == "splitlora":
            return stepper.split_step(world.rank, batch, cfg.split.cut_dtype, via_host)
        return stepper.local_step(batch)

    probe_pos = [0]  # probe batches consumed: a checkpoint carries it
    probe_stream = None

    def probe(n: int) -> None:
        nonlocal probe_stream
        if probe_stream is None:  # a separate pass for probes; leaves the main order alone
            probe_stream = data.batches(10**9, start_step=probe_pos[0])
        sched_state = stepper.sched.state_dict()
        lrs = [g["lr"] for g in opt.param_groups]  # the scheduler's load_state_dict leaves these advanced
        stepper.update_server = False
        try:
            for _ in range(n):
                one_step(next(probe_stream))
                probe_pos[0] += 1
        finally:
            stepper.update_server = True
            stepper.sched.load_state_dict(sched_state)  # probes do not advance the schedule
            for g, lr in zip(opt.param_groups, lrs):
                g["lr"] = lr

    ctx.probe = probe
    strategy.setup(ctx)
    name = f"client{world.rank}"
    rounds = 0
    comm_total = {"up_bytes": 0, "down_bytes": 0, "up_params": 0, "down_params": 0}
    if plan.start_step:
        state = load_rank(run_dir, plan.start_step, name)
        load_trained_state(module, state["lora"], cfg)
        if state.get("base"):
            module.load_state_dict(state["base"], strict=False)
        opt.load_state_dict(state["optimizer"])
        stepper.sched.load_state_dict(state["scheduler"])
        strategy.load_state_dict(state["strategy"])
        rounds, probe_pos[0], comm_total = state["rounds"], state["probe_pos"], dict(state["comm_total"])
        set_rng_state(state["rng"])

    live = list(range(1, world.world_size))  # clients still in the run (continue policy may drop one)

    def collective(fn):  # noqa: ANN001, ANN202 - a client-group collective, surviving one dead client
        try:
            return fn()
        except Exception as exc:
            if cfg.fed.on_client_failure != "continue" or len(live) < world.n_clients:
                # Give the server's watchdog a moment to name the client that really died
                # (it then aborts, and this rank's watchdog ends it); else report this failure.
                time.sleep(min(10.0, cfg.runtime.rpc_timeout))
                raise RuntimeError(f"a client-group collective failed (a client died?): "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            dead = wait_for_dropped_client(cfg)
            live.remove(dead)
            ctx.group = world.fallback_groups[dead]
            total = sum(w for i, w in enumerate(weights) if i + 1 != dead)
            ctx.weights = [0.0 if i + 1 == dead else w / total for i, w in enumerate(weights)]
            return fn()

    def save_checkpoint(step: int) -> None:
        base = {k: v for k, v in module.state_dict().items() if ".adapters." not in k} if strategy.modifies_base else {}
        save_rank(run_dir, step, name, {"lora": trained_state(module, cfg), "base": base, "optimizer": opt.state_dict(),
                                        "scheduler": stepper.sched.state_dict(), "strategy": strategy.state_dict(),
                                        "rounds": rounds, "probe_pos": probe_pos[0], "comm_total": comm_total})
        collective(lambda: dist.barrier(group=ctx.group))  # every client has written its file
        if world.rank == live[0]:
            rpc.rpc_sync(SERVER, coordinator.coord_checkpoint, args=(step,))  # server file + ckpt/latest
        collective(lambda: dist.barrier(group=ctx.group))

    def on_server_failure(peer: str, exc: BaseException) -> None:
        abort(world.role, f"the server is unreachable ({type(exc).__name__}); it failed or was killed")

    watchdog = Watchdog([SERVER], on_server_failure, timeout=min(10.0, cfg.runtime.rpc_timeout))

    world_barrier()  # the server is ready
    watchdog.start()

    buffer: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    pending = []
    every = cfg.fed.aggregate_every
    slowdown = cfg.runtime.slowdowns(world.n_clients)[world.client_index]
    t_start = now()
    for step, batch in enumerate(data.batches(plan.local_steps, plan.start_step), start=plan.start_step + 1):
        maybe_inject_fault(world.rank, step)
        if (step - 1) % every == 0:
            strategy.begin_round(ctx, rounds + 1)
        t0 = now()
        out = one_step(batch)
        if slowdown > 1.0:
            # A slower device: stretch this client's own compute (not the server's, not the wire).
            own = sum(out["time"].get(k, 0.0) for k in ("client_fwd", "client_bwd", "client_opt", "fwd", "bwd", "opt"))
            out["time"]["straggler_sleep"] = (slowdown - 1.0) * own
            time.sleep(out["time"]["straggler_sleep"])
        rec = {"kind": "step", "client": world.rank, "step": step, "loss": out["loss"], "t": time.time(),
               "step_time": now() - t0, "tokens": int(batch["loss_mask"].numel()),
               "examples": int(batch["loss_mask"].shape[0]), "loss_tokens": int(batch["loss_mask"].sum()),
               "lr": stepper.sched.get_last_lr()[0], "time": out["time"]}
        rec["tokens_per_s"] = rec["tokens"] / rec["step_time"]
        for k in ("bytes_up", "bytes_down", "server_opt_compute"):
            if k in out:
                rec[k] = out[k]
        records.append(rec)
        buffer.append(rec)
        if step % every == 0 or step == plan.local_steps:
            rounds += 1
            t0 = now()
            stats = collective(lambda r=rounds: strategy.aggregate(ctx, r)).as_dict()
            for k, v in stats.items():
                comm_total[k] += v
            buffer.append({"kind": "aggregate", "client": world.rank, "step": step, "round": rounds, "t": time.time(),
                           "strategy": strategy.name, "time": now() - t0, "bytes": stats["up_bytes"], **stats,
                           **{f"cum_{k}": v for k, v in comm_total.items()}})
        if len(buffer) >= LOG_FLUSH:
            pending.append(rpc.rpc_async(SERVER, coordinator.coord_log, args=(buffer,)))
            buffer = []
        if plan.checkpoint_due(cfg, step):
            save_checkpoint(step)
    wall = now() - t_start
    memory = peak_memory(world.device, module)  # training only: the first client assembles the whole model next
    if buffer:
        pending.append(rpc.rpc_async(SERVER, coordinator.coord_log, args=(buffer,)))
    for fut in pending:
        fut.wait()

    val, eval_scores = None, None
    if cfg.fed.on_client_failure == "continue":
        live[:] = rpc.rpc_sync(SERVER, coordinator.coord_live_clients)
    if world.rank == live[0]:
        # The first client assembles the whole trained model (aggregated client part +
        # server part); the server only ever hands out its own adapters.
        whole = assemble_whole_model(cfg, module, cuts[world.client_index]).to(world.device)
        val = eval_loss(whole, data.eval_batches(), world.device)
        if cfg.out.save_model:
            save_model(run_dir, whole, cfg, with_base=strategy.modifies_base)
        eval_scores = evaluate_at_end(cfg, whole, run_dir, world.device)
    summary = {"host": socket.gethostname(), "samples": data.n_samples, "weight": weights[world.client_index],
               "steps": plan.local_steps, "wall_s": wall, "rank_budget": ctx.rank_budget, "strategy": strategy.name,
               "aggregation_rounds": rounds, "aggregation_bytes": comm_total["up_bytes"], "comm": comm_total,
               "val_loss": val, "eval": eval_scores,
               "bytes_up": sum(r.get("bytes_up", 0) for r in records),
               "bytes_down": sum(r.get("bytes_down", 0) for r in records),
               "data": data.describe(), "memory": memory, "memory_final": peak_memory(world.device),
               "records": records}
    watchdog.stop()  # the server may shut down once every client has finished
    rpc.rpc_sync(SERVER, coordinator.coord_finish, args=(world.rank, summary))
    return len(live) == world.n_clients


def wait_for_dropped_client(cfg: Config) -> int:
    """After a failed collective: ask the server which client it dropped (it detects deaths by ping)."""
    deadline = time.monotonic() + cfg.runtime.rpc_timeout
    while time.monotonic() < deadline:
        dropped = rpc.rpc_sync(SERVER, coordinator.coord_dropped_clients)
        if dropped:
            return dropped[0]
        time.sleep(0.5)
    raise RuntimeError("a client-group collective failed but the server reports no dropped client")


def assemble_whole_model(cfg: Config, client_module: torch.nn.Module, cut: int) -> torch.nn.Module:
    """The whole model with this client's (aggregated) part and, for SplitLoRA, the server's adapters.

    The client part's full state is copied (not only its LoRA), so strategies that merge
    updates into the base weights (FLoRA) keep them.
    """
    whole = build_full_model(cfg)
    missing, unexpected = whole.load_state_dict({k: v.detach().cpu() for k, v in client_module.state_dict().items()},
                                                strict=False)
    if unexpected:
        raise RuntimeError(f"client part does not fit the whole model: {unexpected[:5]}")
    if cfg.method == "splitlora":
        server_state = rpc.rpc_sync(SERVER, split_server.server_lora_state)
        # With per-client cuts the server also holds blocks below this client's cut: this
        # client's model uses its own copies there (as in its training).
        server_state = {k: v for k, v in server_state.items() if int(k.split(".h.")[1].split(".")[0]) >= cut}
        load_lora_state_dict(whole, server_state, strict=False)
    return whole
