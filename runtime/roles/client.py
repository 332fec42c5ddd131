"""A client's process (ranks 1..N) for SplitLoRA and FedLoRA.

The loop is the same for every strategy: local steps on the private shard (through the
server for SplitLoRA), strategy hooks around each optimizer step, and every
``fed.aggregate_every`` steps one aggregation round over the client-only group.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed.rpc as rpc

from models.lora import load_lora_state_dict
from models.pieces import block_of
from runtime.aggregate import client_weights
from runtime.build import (
    build_full_model,
    build_part,
    head_cut,
    head_parameters,
    load_trained_state,
    set_threads,
    trained_state,
)
from runtime.config import Config
from runtime.control import coordinator
from runtime.control.dist import SERVER, World, abort, group_barrier, world_barrier
from runtime.control.watchdog import Watchdog
from runtime.inputs import ClientData, RunPlan
from runtime.io.artifacts import save_model
from runtime.io.checkpoint import RoleCheckpoint
from runtime.io.telemetry import now, peak_memory
from runtime.optim import build_optimizer, build_scheduler
from runtime.roles.common import LOG_FLUSH, final_eval, maybe_inject_fault, test_due, test_record
from runtime.split import server as split_server
from runtime.split.cut import CutCodec
from runtime.split.shapes import get_shape
from runtime.steps import Stepper
from runtime.strategies import ClientContext, build_strategy
from runtime.strategies.base import average_in_place

T = TypeVar("T")


def build_client_module(cfg: Config, device: torch.device, cut: int) -> torch.nn.Module:
    module = build_part(cfg, "client", cut) if cfg.method == "splitlora" else build_full_model(cfg)
    return module.to(device).train()


class ClientRun:
    """One client's training run: the state its step loop, probes, checkpoints and collectives share."""

    def __init__(self, cfg: Config, world: World, run_dir: Path, data: ClientData, plan: RunPlan) -> None:
        set_threads(cfg.runtime.client_threads)
        self.cfg, self.world, self.run_dir, self.data, self.plan = cfg, world, run_dir, data, plan
        self.cuts = cfg.split.cuts(world.n_clients)
        self.cut = self.cuts[world.client_index]
        self.module = build_client_module(cfg, world.device, self.cut)
        self.strategy = build_strategy(cfg.fed.strategy, cfg.fed)
        t, lr = cfg.train, cfg.train.lr * cfg.fed.client_lr_scale
        groups = self.strategy.param_groups(self.module, lr)
        grouped = {id(p) for g in groups for p in g["params"]}
        self.head = head_parameters(self.module, cfg)  # model.train_head: trained here, averaged every round
        extra = [p for p in self.head if id(p) not in grouped]  # strategies that list only adapters
        self.opt = build_optimizer(cfg, groups + ([{"params": extra, "lr": lr}] if extra else []), lr)
        ranks = cfg.fed.rank_list()
        self.weights = client_weights(plan.counts, cfg.fed.weighting)
        self.ctx = ClientContext(module=self.module, optimizer=self.opt, client_index=world.client_index,
                                 n_clients=world.n_clients, weights=self.weights, group=world.client_group,
                                 device=world.device, rank_budget=ranks[world.client_index] if ranks else cfg.lora.r,
                                 global_rank=cfg.lora.r, seed=cfg.train.seed,
                                 cuts=self.cuts if cfg.method == "splitlora" else None,
                                 lockstep=cfg.method == "splitlora" and cfg.runtime.order == "round_robin")
        self.stepper = Stepper(self.module, self.opt, build_scheduler(cfg, self.opt, plan.local_steps), world.device,
                               t.label_smoothing, t.grad_clip, before_step=lambda: self.strategy.before_step(self.ctx),
                               after_step=lambda: self.strategy.after_step(self.ctx))
        self.name = f"client{world.rank}"
        self.checkpoint = RoleCheckpoint(run_dir, self.name)
        # SplitLoRA: the split shape's step through the server; FedLoRA: a whole model here.
        self.shape = get_shape(cfg.split.shape) if cfg.method == "splitlora" else None
        self.codec = CutCodec(cfg.split.cut_dtype, via_host=cfg.runtime.cuda_cut == "host")
        self.slowdown = cfg.runtime.slowdowns(world.n_clients)[world.client_index]  # parsed once, not per step
        self.rounds = 0
        self.comm_total = {"up_bytes": 0, "down_bytes": 0, "up_params": 0, "down_params": 0}
        self.probe_pos = 0  # probe batches consumed: a checkpoint carries it
        self._probe_stream = None
        self.live = list(range(1, world.world_size))  # clients still in the run (continue policy may drop one)
        self.ctx.probe = self.probe
        self.strategy.setup(self.ctx)
        if plan.start_step:
            self.restore(plan.start_step)

    def one_step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        if self.shape is None:
            return self.stepper.local_step(batch)
        return self.shape.client_step(self.stepper, self.world.rank, batch, self.codec, self.cut,
                                      head_cut(self.cfg, self.module.config.n_layer))

    def probe(self, n: int) -> None:
        """n training steps that update nothing on the server and leave the schedule where it was."""
        if self._probe_stream is None:  # a separate pass for probes; leaves the main order alone
            self._probe_stream = self.data.batches(10**9, start_step=self.probe_pos)
        sched_state = self.stepper.sched.state_dict()
        lrs = [g["lr"] for g in self.opt.param_groups]  # the scheduler's load_state_dict leaves these advanced
        self.stepper.update_server = False
        try:
            for _ in range(n):
                self.one_step(next(self._probe_stream))
                self.probe_pos += 1
        finally:
            self.stepper.update_server = True
            self.stepper.sched.load_state_dict(sched_state)  # probes do not advance the schedule
            for g, lr in zip(self.opt.param_groups, lrs):
                g["lr"] = lr

    def restore(self, step: int) -> None:
        state = self.checkpoint.restore(step, self.opt, self.stepper.sched)
        load_trained_state(self.module, state["lora"], self.cfg)
        if state.get("base"):
            self.module.load_state_dict(state["base"], strict=False)
        self.strategy.load_state_dict(state["strategy"])
        self.rounds, self.probe_pos, self.comm_total = state["rounds"], state["probe_pos"], dict(state["comm_total"])

    def collective(self, fn: Callable[[], T]) -> T:
        """A client-group collective that survives one dead client under ``fed.on_client_failure=continue``."""
        cfg, world = self.cfg, self.world
        try:
            return fn()
        except Exception as exc:
            if cfg.fed.on_client_failure != "continue" or len(self.live) < world.n_clients:
                # Give the server's watchdog a moment to name the client that really died
                # (it then aborts, and this rank's watchdog ends it); else report this failure.
                time.sleep(min(10.0, cfg.runtime.rpc_timeout))
                raise RuntimeError(f"a client-group collective failed (a client died?): "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            dead = wait_for_dropped_client(cfg)
            self.live.remove(dead)
            self.ctx.group = world.fallback_groups[dead]
            total = sum(w for i, w in enumerate(self.weights) if i + 1 != dead)
            self.ctx.weights = [0.0 if i + 1 == dead else w / total for i, w in enumerate(self.weights)]
            return fn()

    def save_checkpoint(self, step: int) -> None:
        module = self.module
        base = ({k: v for k, v in module.state_dict().items() if ".adapters." not in k}
                if self.strategy.modifies_base else {})
        self.checkpoint.save(step, trained_state(module, self.cfg), self.opt, self.stepper.sched, base=base,
                             strategy=self.strategy.state_dict(), rounds=self.rounds, probe_pos=self.probe_pos,
                             comm_total=self.comm_total)
        self.collective(lambda: group_barrier(self.ctx.group, self.world.device))  # every client has written its file
        if self.world.rank == self.live[0]:
            rpc.rpc_sync(SERVER, coordinator.coord_checkpoint, args=(step,))  # server file + ckpt/latest
        self.collective(lambda: group_barrier(self.ctx.group, self.world.device))

    def train(self) -> tuple[list[dict[str, Any]], float]:
        """The local steps with their aggregation rounds; returns the step records and the wall time."""
        plan, every = self.plan, self.cfg.fed.aggregate_every
        buffer: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        pending = []
        t_start = now()
        for step, batch in enumerate(self.data.batches(plan.local_steps, plan.start_step), start=plan.start_step + 1):
            maybe_inject_fault(self.world.rank, step)
            if (step - 1) % every == 0:
                self.strategy.begin_round(self.ctx, self.rounds + 1)
            rec = self._timed_step(step, batch)
            records.append(rec)
            buffer.append(rec)
            if step % every == 0 or step == plan.local_steps:
                buffer.append(self._aggregate(step))
            if test_due(self.cfg, step) and self.world.rank == self.live[0]:
                buffer.append(test_record(self.module, self.data, self.world.device, step, self.rounds,
                                          client=self.world.rank))
            if len(buffer) >= LOG_FLUSH:
                pending.append(rpc.rpc_async(SERVER, coordinator.coord_log, args=(buffer,)))
                buffer = []
            if plan.checkpoint_due(self.cfg, step):
                self.save_checkpoint(step)
        wall = now() - t_start
        if buffer:
            pending.append(rpc.rpc_async(SERVER, coordinator.coord_log, args=(buffer,)))
        for fut in pending:
            fut.wait()
        return records, wall

    def _timed_step(self, step: int, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One local step (stretched for a simulated slow device) and its metrics record."""
        t0 = now()
        out = self.one_step(batch)
        slowdown = self.slowdown
        if slowdown > 1.0:
            # A slower device: stretch this client's own compute (not the server's, not the wire).
            own = sum(out["time"].get(k, 0.0) for k in ("client_fwd", "client_bwd", "client_opt", "fwd", "bwd", "opt"))
            out["time"]["straggler_sleep"] = (slowdown - 1.0) * own
            time.sleep(out["time"]["straggler_sleep"])
        mask = batch["loss_mask"]  # [B, T]
        rec = {"kind": "step", "client": self.world.rank, "step": step, "loss": out["loss"], "t": time.time(),
               "step_time": now() - t0, "tokens": int(mask.numel()), "examples": int(mask.shape[0]),
               "loss_tokens": int(mask.sum()), "lr": self.stepper.sched.get_last_lr()[0], "time": out["time"]}
        rec["tokens_per_s"] = rec["tokens"] / rec["step_time"]
        for k in ("bytes_up", "bytes_down", "server_opt_compute"):
            if k in out:
                rec[k] = out[k]
        return rec

    def _aggregate(self, step: int) -> dict[str, Any]:
        """One aggregation round over the client group; returns its metrics record."""
        self.rounds += 1
        t0 = now()
        stats = self.collective(lambda r=self.rounds: self.strategy.aggregate(self.ctx, r)).as_dict()
        if self.head:  # a trained head: FedAvg of its weights, whatever the strategy does with the adapters
            head = self.collective(lambda: average_in_place(self.head, self.ctx)).as_dict()
            stats = {k: v + head[k] for k, v in stats.items()}
        for k, v in stats.items():
            self.comm_total[k] += v
        return {"kind": "aggregate", "client": self.world.rank, "step": step, "round": self.rounds, "t": time.time(),
                "strategy": self.strategy.name, "time": now() - t0, "bytes": stats["up_bytes"], **stats,
                **{f"cum_{k}": v for k, v in self.comm_total.items()}}

    def summarize(self, records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
        """Validation and evaluation (first live client only) and this client's summary."""
        cfg, world = self.cfg, self.world
        memory = peak_memory(world.device, self.module)  # training only: the first client assembles the whole model
        val, eval_scores = None, None
        if cfg.fed.on_client_failure == "continue":
            self.live[:] = rpc.rpc_sync(SERVER, coordinator.coord_live_clients)
        if world.rank == self.live[0]:
            # The first client assembles the whole trained model (aggregated client part +
            # server part); the server only ever hands out its own adapters.
            whole = assemble_whole_model(cfg, self.module, self.cut).to(world.device)
            if cfg.out.save_model:
                save_model(self.run_dir, whole, cfg, with_base=self.strategy.modifies_base)
            val, eval_scores = final_eval(cfg, whole, self.data.eval_batches(), self.run_dir, world.device)
        return {"host": socket.gethostname(), "samples": self.data.n_samples,
                "weight": self.weights[world.client_index], "steps": self.plan.local_steps, "wall_s": wall,
                "rank_budget": self.ctx.rank_budget, "strategy": self.strategy.name,
                "aggregation_rounds": self.rounds, "aggregation_bytes": self.comm_total["up_bytes"],
                "comm": self.comm_total, "val_loss": val, "eval": eval_scores,
                "bytes_up": sum(r.get("bytes_up", 0) for r in records),
                "bytes_down": sum(r.get("bytes_down", 0) for r in records),
                "data": self.data.describe(), "memory": memory, "memory_final": peak_memory(world.device),
                "records": records}


def run_client(cfg: Config, world: World, run_dir: Path, data: ClientData, plan: RunPlan) -> bool:
    """Train this client; returns False when a client dropped out (then RPC shuts down non-gracefully)."""
    run = ClientRun(cfg, world, run_dir, data, plan)

    def on_server_failure(peer: str, exc: BaseException) -> None:
        abort(world.role, f"the server is unreachable ({type(exc).__name__}); it failed or was killed")

    watchdog = Watchdog([SERVER], on_server_failure, timeout=min(10.0, cfg.runtime.rpc_timeout))
    world_barrier()  # the server is ready
    watchdog.start()
    records, wall = run.train()
    summary = run.summarize(records, wall)
    watchdog.stop()  # the server may shut down once every client has finished
    rpc.rpc_sync(SERVER, coordinator.coord_finish, args=(world.rank, summary))
    return len(run.live) == world.n_clients


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
        server_state = {k: v for k, v in server_state.items() if (block_of(k) or 0) >= cut or k.startswith("head.")}
        head = {k.removeprefix("head."): v for k, v in server_state.items() if k.startswith("head.")}
        if head:  # a head the server trained (model.train_head)
            whole.head.load_state_dict(head)
        load_lora_state_dict(whole, server_state, strict=False)
    return whole
