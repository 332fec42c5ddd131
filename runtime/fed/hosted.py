"""One logical client on a client rank: everything that is its own.

A rank builds its model (FedLoRA) once; every client it hosts gets a copy that shares the
frozen tensors (base weights, a frozen head) and owns what it trains and what its
strategy keeps: adapters, a trained head, rank mask, optimizer and schedule, strategy
state, data stream, random-number state (dropout draws the same numbers as in a process
of its own) and counters. A client that is not sampled keeps all of it untouched.

When clients are sampled (K < N), each rank also keeps a *listener*: one more copy, with
the full rank budget, that joins every aggregation with zero weight and zero contribution,
so it always holds the current global state as the strategy defines it. A client sampled
after missing rounds first copies the strategy's ``global_parameters`` from it (FedAvg,
FFA, RoLoRA, LoRA-A2: both factors; FedSA: A only, B stays its own; HetLoRA and FlexLoRA:
both, then its own first r_k ranks, which for FlexLoRA's SVD-ordered factors is the rank-r_k
truncation of the global update) and a trained head: the state it would have received had
it taken part with zero weight.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from runtime.build import head_parameters, load_trained_state, trained_state
from runtime.config import Config
from runtime.inputs import ClientData
from runtime.io.telemetry import now
from runtime.optim import build_optimizer, build_scheduler
from runtime.steps import Stepper
from runtime.strategies import ClientContext, build_strategy
from runtime.strategies.base import average_in_place

StepFn = Callable[[Stepper, dict[str, torch.Tensor]], dict[str, Any]]
COMM_KEYS = ("up_params", "up_bytes", "down_params", "down_bytes")


def share_frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that shares its frozen parameters and its buffers outside the
    adapters (each copy owns its adapters' rank masks, which rank budgets change)."""
    memo: dict[int, Any] = {id(p): p for p in module.parameters() if not p.requires_grad}
    memo.update({id(b): b for name, b in module.named_buffers() if ".adapters." not in name})
    return copy.deepcopy(module, memo)


class HostedClient:
    """Logical client ``index``: its training state, its round's steps and its aggregation."""

    def __init__(self, cfg: Config, index: int, module: nn.Module, data: ClientData, n_clients: int,
                 local_steps: int, device: torch.device, rank_budget: int, step_fn: StepFn | None,
                 own_rng: bool = False, listener: bool = False, cuts: list[int] | None = None,
                 lockstep: bool = False) -> None:
        self.cfg, self.index, self.module, self.data, self.listener = cfg, index, module, data, listener
        self.strategy = build_strategy(cfg.fed.strategy, cfg.fed)
        t, lr = cfg.train, cfg.train.lr * cfg.fed.client_lr_scale
        groups = self.strategy.param_groups(module, lr)
        grouped = {id(p) for g in groups for p in g["params"]}
        self.head = head_parameters(module, cfg)  # model.train_head: trained here, averaged every round
        extra = [p for p in self.head if id(p) not in grouped]  # strategies that list only adapters
        self.opt = build_optimizer(cfg, groups + ([{"params": extra, "lr": lr}] if extra else []), lr)
        self.sched = build_scheduler(cfg, self.opt, local_steps)
        self.ctx = ClientContext(module=module, optimizer=self.opt, client_index=index, n_clients=n_clients,
                                 weights=[0.0] * n_clients, group=None, device=device, rank_budget=rank_budget,
                                 global_rank=cfg.lora.r, seed=cfg.train.seed, cuts=cuts, lockstep=lockstep)
        self.stepper = Stepper(module, self.opt, self.sched, device, t.label_smoothing, t.grad_clip,
                               before_step=lambda: self.strategy.before_step(self.ctx),
                               after_step=lambda: self.strategy.after_step(self.ctx))
        self._step_fn = step_fn
        self.slowdown = 1.0
        self.steps_done = 0  # local steps trained: this client's position in its own data order
        self.synced_round = 0  # the last round whose aggregate this client holds
        self.rounds = 0  # aggregation rounds it took part in
        self.probe_pos = 0  # probe batches consumed
        self.comm_total = dict.fromkeys(COMM_KEYS, 0)
        self.split_bytes = {"bytes_up": 0, "bytes_down": 0}  # SplitLoRA: activations and gradients
        self.examples = 0
        self._stream: Iterator[dict[str, torch.Tensor]] | None = None
        self._probe_stream: Iterator[dict[str, torch.Tensor]] | None = None
        self.rng = torch.get_rng_state() if own_rng else None  # None: the process's own generator
        self.ctx.probe = None if listener else self.probe
        with self.active():
            self.strategy.setup(self.ctx)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """This client's random-number state in the process generator while it computes."""
        if self.rng is None:
            yield
            return
        outer = torch.get_rng_state()  # what the next client is built from stays as it was
        torch.set_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outer)

    # ------------------------------------------------------------------ training

    def one_step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        assert self._step_fn is not None, "a listener does not train"
        return self._step_fn(self.stepper, batch)

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self._stream is None:  # its own order: (seed, client, its step), as in a process of its own
            self._stream = self.data.batches(1 << 62, start_step=self.steps_done)
        return next(self._stream)

    def probe(self, n: int) -> None:
        """n training steps that update nothing on the server and leave the schedule where it was."""
        if self._probe_stream is None:  # a separate pass for probes; leaves the main order alone
            self._probe_stream = self.data.batches(1 << 62, start_step=self.probe_pos)
        sched_state = self.sched.state_dict()
        lrs = [g["lr"] for g in self.opt.param_groups]  # the scheduler's load_state_dict leaves these advanced
        self.stepper.update_server = False
        try:
            for _ in range(n):
                self.one_step(next(self._probe_stream))
                self.probe_pos += 1
        finally:
            self.stepper.update_server = True
            self.sched.load_state_dict(sched_state)  # probes do not advance the schedule
            for g, lr in zip(self.opt.param_groups, lrs):
                g["lr"] = lr

    def align_schedule(self, step: int) -> None:
        """Put the schedule at the run's step ``step`` (steps done): the lr follows the run's clock,
        not the client's own count of steps, which is smaller for a client that was sampled out."""
        if self.sched.last_epoch == step:
            return
        self.sched.last_epoch = step
        lrs = [base * fn(step) for base, fn in zip(self.sched.base_lrs, self.sched.lr_lambdas)]
        for g, lr in zip(self.opt.param_groups, lrs):
            g["lr"] = lr
        self.sched._last_lr = lrs  # what get_last_lr() reports

    def timed_step(self, step: int, round_idx: int, rank: int) -> dict[str, Any]:
        """One local step (stretched for a simulated slow device) and its metrics record."""
        batch = self.next_batch()
        t0 = now()
        out = self.one_step(batch)
        self.steps_done += 1
        if self.slowdown > 1.0:
            # A slower device: stretch this client's own compute (not the server's, not the wire).
            own = sum(out["time"].get(k, 0.0) for k in ("client_fwd", "client_bwd", "client_opt", "fwd", "bwd", "opt"))
            out["time"]["straggler_sleep"] = (self.slowdown - 1.0) * own
            time.sleep(out["time"]["straggler_sleep"])
        mask = batch["loss_mask"]  # [B, T]
        self.examples += int(mask.shape[0])
        rec = {"kind": "step", "client": self.index + 1, "rank": rank, "round": round_idx, "step": step,
               "loss": out["loss"], "t": time.time(), "step_time": now() - t0, "tokens": int(mask.numel()),
               "examples": int(mask.shape[0]), "loss_tokens": int(mask.sum()), "lr": self.sched.get_last_lr()[0],
               "time": out["time"]}
        rec["tokens_per_s"] = rec["tokens"] / rec["step_time"]
        for k in ("bytes_up", "bytes_down", "server_opt_compute"):
            if k in out:
                rec[k] = out[k]
                if k in self.split_bytes:
                    self.split_bytes[k] += out[k]
        return rec

    # ------------------------------------------------------------------ aggregation

    def catch_up(self, listener: HostedClient | None, round_idx: int) -> None:
        """Hold the global state after round ``round_idx`` (copied from the listener if this client
        missed rounds); the copy counts as downloaded."""
        if listener is None or self.synced_round >= round_idx:
            return
        with torch.no_grad():
            mine, glob = self.strategy.global_parameters(self.ctx), listener.strategy.global_parameters(listener.ctx)
            for p, g in zip(mine + self.head, glob + listener.head):
                p.copy_(g)
            for _, a in self.ctx.adapters():  # its own rank budget (HetLoRA, FlexLoRA): first r_k ranks
                a.lora_A.mul_(a.rank_mask[:, None])
                a.lora_B.mul_(a.rank_mask[None, :])
        n = sum(p.numel() for p in mine + self.head)
        self.comm_total["down_params"] += n
        self.comm_total["down_bytes"] += n * (mine[0].element_size() if mine else 4)
        self.synced_round = round_idx

    def aggregate(self, round_idx: int, group: Any, weights: list[float]) -> dict[str, int]:
        """This client's part of round ``round_idx``'s aggregation (``group``: the client group, or its
        seat among the clients its rank hosts); returns what it sent and received."""
        self.ctx.group, self.ctx.weights = group, weights
        stats = self.strategy.aggregate(self.ctx, round_idx).as_dict()
        if self.head:  # a trained head: FedAvg of its weights, whatever the strategy does with the adapters
            head = average_in_place(self.head, self.ctx).as_dict()
            stats = {k: v + head[k] for k, v in stats.items()}
        self.synced_round = round_idx
        if not self.listener:
            self.rounds += 1
            for k, v in stats.items():
                self.comm_total[k] += v
        return stats

    # ------------------------------------------------------------------ checkpoint and summary

    def state_dict(self) -> dict[str, Any]:
        base = ({k: v for k, v in self.module.state_dict().items() if ".adapters." not in k}
                if self.strategy.modifies_base else {})
        return {"index": self.index, "lora": trained_state(self.module, self.cfg), "base": base,
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "strategy": self.strategy.state_dict(), "rounds": self.rounds, "probe_pos": self.probe_pos,
                "steps_done": self.steps_done, "synced_round": self.synced_round, "comm_total": self.comm_total,
                "split_bytes": self.split_bytes, "examples": self.examples, "rng": self.rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["index"] != self.index:
            raise ValueError(f"checkpoint entry of client {state['index'] + 1} given to client {self.index + 1}")
        load_trained_state(self.module, state["lora"], self.cfg)
        if state.get("base"):
            self.module.load_state_dict(state["base"], strict=False)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.strategy.load_state_dict(state["strategy"])
        for key in ("rounds", "probe_pos", "steps_done", "synced_round", "examples"):
            setattr(self, key, state[key])
        self.comm_total, self.split_bytes = dict(state["comm_total"]), dict(state["split_bytes"])
        if state["rng"] is not None:
            self.rng = state["rng"]

    def summary(self) -> dict[str, Any]:
        """Per logical client: its data, participation and bytes."""
        return {"samples": self.data.n_samples, "rank_budget": self.ctx.rank_budget, "rounds": self.rounds,
                "steps": self.steps_done, "examples": self.examples, "comm": dict(self.comm_total),
                **self.split_bytes}
