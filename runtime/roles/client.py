"""A client rank's process (ranks 1..R) for SplitLoRA and FedLoRA.

The loop is the same for every strategy: each round, the rank's sampled clients
(``runtime/fed/``: one client per rank by default) take their local steps on their
private shards (through the server for SplitLoRA), strategy hooks around each optimizer
step, and every ``fed.aggregate_every`` steps one aggregation round over the client-only
group.
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
from runtime.build import adapters_skeleton, build_full_model, build_part, head_cut, set_threads
from runtime.config import Config
from runtime.control import coordinator
from runtime.control.dist import SERVER, World, abort, group_barrier, world_barrier
from runtime.control.watchdog import Watchdog
from runtime.decode_share import ShareOverGroup, state_digest
from runtime.fed.hosted import HostedClient, share_frozen_copy
from runtime.fed.local_round import LocalRound
from runtime.fed.population import Population, round_weights
from runtime.inputs import ClientData, RunPlan
from runtime.io.artifacts import save_model
from runtime.io.checkpoint import CheckpointError, load_rank, save_rank, set_rng_state
from runtime.io.telemetry import now, peak_memory
from runtime.roles.common import LOG_FLUSH, eval_due, eval_record, evaluate_at_end, final_eval, maybe_inject_fault
from runtime.split import server as split_server
from runtime.split.cut import CutCodec
from runtime.split.inference import SplitModel
from runtime.split.shapes import get_shape
from runtime.steps import Stepper

T = TypeVar("T")


def build_client_module(cfg: Config, device: torch.device, cut: int) -> torch.nn.Module:
    module = build_part(cfg, "client", cut) if cfg.method == "splitlora" else build_full_model(cfg)
    return module.to(device).train()


class ClientRun:
    """A client rank's training run: the logical clients it hosts (one, or several with
    ``fed.num_clients``), their rounds, probes, checkpoints and collectives."""

    def __init__(self, cfg: Config, world: World, run_dir: Path, datas: list[ClientData], plan: RunPlan) -> None:
        set_threads(cfg.runtime.client_threads)
        self.cfg, self.world, self.run_dir, self.plan = cfg, world, run_dir, plan
        n = len(plan.counts)
        self.population = Population(n, world.n_clients, plan.per_round or n, cfg.train.seed)
        self.cuts = cfg.split.cuts(world.n_clients)
        self.cut = self.cuts[world.client_index]
        base = build_client_module(cfg, world.device, self.cut)
        many = len(datas) > 1 or not self.population.full
        # Copies first: they share what is frozen now, before any strategy freezes an adapter factor.
        modules = [base] + [share_frozen_copy(base) for _ in range(len(datas) - 1 + (not self.population.full))]
        # SplitLoRA: the split shape's step through the server; FedLoRA: a whole model here.
        self.shape = get_shape(cfg.split.shape) if cfg.method == "splitlora" else None
        self.codec = CutCodec(cfg.split.cut_dtype, via_host=cfg.runtime.cuda_cut == "host")
        ranks, slowdowns = cfg.fed.rank_list(), cfg.runtime.slowdowns(n)
        splitlora = cfg.method == "splitlora"
        common = {"n_clients": n, "local_steps": plan.local_steps, "device": world.device, "own_rng": many,
                  "cuts": self.cuts if splitlora else None,
                  "lockstep": splitlora and cfg.runtime.order == "round_robin"}
        self.clients = []
        for module, data in zip(modules, datas):
            client = HostedClient(cfg, data.client_index, module, data, rank_budget=ranks[data.client_index]
                                  if ranks else cfg.lora.r, step_fn=self.one_step, **common)
            client.slowdown = slowdowns[data.client_index]
            self.clients.append(client)
        # Sampling: the rank's copy of the global state (docs/clients.md), full rank budget, zero weight.
        self.listener = None if self.population.full else HostedClient(
            cfg, datas[0].client_index, modules[-1], datas[0], rank_budget=cfg.lora.r, step_fn=None,
            listener=True, **common)
        self.name = f"client{world.rank}"
        self.rounds = 0
        self._whole: torch.nn.Module | None = None  # SplitLoRA: the whole model, once assembled
        self._share: ShareOverGroup | bool | None = None  # eval.share_decoding, once decided (False: not shared)
        self.group = world.client_group
        self.live = list(range(1, world.world_size))  # client ranks still in the run (continue policy)
        if plan.start_step:
            self.restore(plan.start_step)

    @property
    def first(self) -> HostedClient:
        return self.clients[0]

    def one_step(self, stepper: Stepper, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        if self.shape is None:
            return stepper.local_step(batch)
        return self.shape.client_step(stepper, self.world.rank, batch, self.codec, self.cut,
                                      head_cut(self.cfg, stepper.module.config.n_layer))

    def restore(self, step: int) -> None:
        state = load_rank(self.run_dir, step, self.name)
        if "clients" not in state:
            raise CheckpointError(f"{self.run_dir}: {self.name}'s checkpoint of step {step} predates logical clients "
                                  "(one entry per hosted client); it cannot be resumed by this version")
        entries = state["clients"]
        if [e["index"] for e in entries] != [c.index for c in self.clients]:
            raise CheckpointError(f"{self.name}'s checkpoint holds clients {[e['index'] + 1 for e in entries]}, "
                                  f"this rank hosts {[c.index + 1 for c in self.clients]}")
        for client, entry in zip(self.clients, entries):
            client.load_state_dict(entry)
        if self.listener is not None:
            self.listener.load_state_dict(state["listener"])
        self.rounds = state["rounds"]
        set_rng_state(state["rng"])

    def collective(self, fn: Callable[[], T]) -> T:
        """A client-group collective that survives one dead client rank under
        ``fed.on_client_failure=continue`` (the rank's clients leave the run with it)."""
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
            self.group = world.fallback_groups[dead]
            return fn()

    def save_checkpoint(self, step: int) -> None:
        save_rank(self.run_dir, step, self.name, {
            "clients": [c.state_dict() for c in self.clients], "rounds": self.rounds,
            "listener": self.listener.state_dict() if self.listener is not None else None})
        self.collective(lambda: group_barrier(self.group, self.world.device))  # every client has written its file
        if self.world.rank == self.live[0]:
            rpc.rpc_sync(SERVER, coordinator.coord_checkpoint, args=(step,))  # server file + ckpt/latest
        self.collective(lambda: group_barrier(self.group, self.world.device))

    def participants(self, round_idx: int) -> list[HostedClient]:
        """This rank's clients that train in round ``round_idx``."""
        sampled = set(self.population.sample(round_idx))
        return [c for c in self.clients if c.index in sampled]

    def train(self) -> tuple[list[dict[str, Any]], float]:
        """The rounds' local steps with their aggregations; returns the step records and the wall time."""
        plan, every, rank = self.plan, self.cfg.fed.aggregate_every, self.world.rank
        buffer: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        pending = []
        t_start = now()
        participants = self.participants(plan.start_step // every + 1)
        for step in range(plan.start_step + 1, plan.local_steps + 1):
            round_idx = (step - 1) // every + 1
            maybe_inject_fault(rank, step)
            if (step - 1) % every == 0:
                participants = self.participants(round_idx)
                self._begin_round(participants, round_idx, step - 1)
            for client in participants:  # client order: the same global order on any number of ranks
                with client.active():
                    rec = client.timed_step(step, round_idx, rank)
                records.append(rec)
                buffer.append(rec)
            if step % every == 0 or step == plan.local_steps:
                buffer.extend(self._aggregate(step, round_idx, participants))
            if eval_due(self.cfg, step) and rank == self.live[0]:
                buffer.append(self.eval_record(step))
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

    def _begin_round(self, participants: list[HostedClient], round_idx: int, steps_before: int) -> None:
        if self.listener is not None:
            self.listener.strategy.begin_round(self.listener.ctx, round_idx)
        for client in participants:
            with client.active():
                client.catch_up(self.listener, round_idx - 1)
                client.align_schedule(steps_before)
                client.strategy.begin_round(client.ctx, round_idx)

    def _aggregate(self, step: int, round_idx: int, participants: list[HostedClient]) -> list[dict[str, Any]]:
        """One aggregation round over the client group; returns each participant's metrics record."""
        self.rounds += 1
        t0 = now()
        seats = participants + ([self.listener] if self.listener is not None else [])

        def once() -> list[dict[str, int]]:
            live = [k for k in self.population.sample(round_idx) if self.population.rank_of(k) in self.live]
            weights = round_weights(self.plan.counts, live, self.cfg.fed.weighting)
            local = LocalRound(self.group, len(seats), frozenset({len(participants)} if self.listener else ()),
                               timeout=self.cfg.runtime.rpc_timeout)
            single = len(seats) == 1  # the one-client-per-rank collective, exactly (FLoRA's all_gather too)
            return local.run([lambda seat, c=c: c.aggregate(round_idx, self.group if single else seat, weights)
                              for c in seats])

        stats = self.collective(once)
        took = now() - t0
        return [{"kind": "aggregate", "client": c.index + 1, "rank": self.world.rank, "step": step,
                 "round": self.rounds, "t": time.time(), "strategy": c.strategy.name, "time": took,
                 "bytes": st["up_bytes"], **st, **{f"cum_{k}": v for k, v in c.comm_total.items()}}
                for c, st in zip(participants, stats)]

    def global_view(self) -> torch.nn.Module:
        """The model this rank evaluates and exports: its first client's, holding the global state."""
        self.first.catch_up(self.listener, self.rounds)
        return self.first.module

    def summarize(self, records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
        """Validation and evaluation (first live client rank only) and this rank's summary."""
        cfg, world, first = self.cfg, self.world, self.first
        memory = peak_memory(world.device, first.module)  # training only
        val, eval_scores, inference = None, None, None
        if cfg.fed.on_client_failure == "continue":
            self.live[:] = rpc.rpc_sync(SERVER, coordinator.coord_live_clients)
        if world.rank == self.live[0]:
            val, eval_scores, inference = self.evaluate()
        elif self.decode_share() is not None:
            inference = self.evaluate()[2]  # this rank's share of the decoding
        memory_eval = peak_memory(world.device)  # after validation and scores, before an export's assembly
        if world.rank == self.live[0] and cfg.out.save_model:
            save_model(self.run_dir, self.export_model(), cfg, with_base=first.strategy.modifies_base)
        comm = {k: sum(c.comm_total[k] for c in self.clients) for k in first.comm_total}
        weights = client_weights(self.plan.counts, cfg.fed.weighting)
        return {"host": socket.gethostname(), "samples": sum(c.data.n_samples for c in self.clients),
                "weight": sum(weights[c.index] for c in self.clients),
                "steps": self.plan.local_steps, "wall_s": wall, "rank_budget": first.ctx.rank_budget,
                "strategy": first.strategy.name, "aggregation_rounds": self.rounds,
                "aggregation_bytes": comm["up_bytes"], "comm": comm, "val_loss": val, "eval": eval_scores,
                "bytes_up": sum(r.get("bytes_up", 0) for r in records),
                "bytes_down": sum(r.get("bytes_down", 0) for r in records),
                "data": first.data.describe(), "memory": memory, "memory_eval": memory_eval,
                "memory_final": peak_memory(world.device), "split_inference": inference,
                "hosted": {str(c.index + 1): c.summary() for c in self.clients}, "records": records}

    def eval_record(self, step: int) -> dict[str, Any]:
        """``eval.every``'s record of the model as it is after this step's aggregation: the whole model
        (FedLoRA, or SplitLoRA under ``eval.whole_model``, assembled afresh) or through the split (the
        server holds its part for it, so no client's step runs meanwhile)."""
        if self.split_inference:
            model: torch.nn.Module | SplitModel = self.split_model()
        elif self.shape is None:
            model = self.global_view()
        else:
            model = assemble_whole_model(self.cfg, self.global_view(), self.cut).to(self.world.device)
        return eval_record(model, self.first.data, self.world.device, step, self.rounds, client=self.world.rank)

    def split_model(self) -> SplitModel:
        """This rank's part (holding the global state) as a model whose server half runs on the server."""
        part = self.global_view()  # catches the first client up once
        return SplitModel(self.shape, part, SERVER, self.world.rank, self.codec, self.cut,
                          head_cut(self.cfg, part.config.n_layer))

    def evaluate(self) -> tuple[float | None, dict | None, dict | None]:
        """The validation loss and scores of the trained model: SplitLoRA through the split (this rank's
        part here, the server's there) unless ``eval.whole_model``; FedLoRA on the whole model it holds.
        Returns (loss, scores, the split inference's bytes and round trips or None)."""
        cfg, device = self.cfg, self.world.device
        if not self.split_inference:
            batches = self.first.data.eval_batches()
            return (*final_eval(cfg, self.whole_model().to(device), batches, self.run_dir, device), None)
        model = self.split_model()
        share = self.decode_share()
        if share is not None and not share.scores:
            evaluate_at_end(cfg, model, self.run_dir, device, share)
            val, scores = None, None
        else:
            val, scores = final_eval(cfg, model, self.first.data.eval_batches(), self.run_dir, device, share)
        return val, scores, {"bytes_up": model.meter["up"], "bytes_down": model.meter["down"],
                             "round_trips": model.meter["calls"], "decode_shares": 1 if share is None else share.count}

    @property
    def split_inference(self) -> bool:
        """Evaluation runs through the split (SplitLoRA, unless ``eval.whole_model``)."""
        return self.shape is not None and not self.cfg.eval.whole_model and self.shape.split_inference

    def decode_share(self) -> ShareOverGroup | None:
        """This rank's share of ``--eval.at_end``'s decoding (``eval.share_decoding``), when every
        client rank is live (the client group is whole), decodes through the split, and holds the same
        part, bit for bit (one cut for all; the same global state): else None. Decided once, together."""
        if self._share is None:
            cfg, live = self.cfg, self.live
            shared = (cfg.eval.at_end and cfg.eval.share_decoding and self.split_inference and len(live) > 1
                      and len(live) == self.world.n_clients and len(set(self.cuts)) == 1
                      and not getattr(self.first.module, "is_classifier", False))
            share = ShareOverGroup(live.index(self.world.rank), len(live), self.group) if shared else None
            if share is not None and not share.same_everywhere(state_digest(self.global_view())):
                share = None
            self._share = share or False
        return self._share or None

    def export_model(self) -> torch.nn.Module:
        """What ``model/`` is written from. SplitLoRA on an unchanged pretrained GPT-2 base: only the
        two parties' adapters, in the whole model's skeleton on the meta device (the export holds
        adapters only, so the whole model is never assembled); otherwise the whole model."""
        cfg, first = self.cfg, self.first
        adapters_only = (self.shape is not None and bool(cfg.model.path) and cfg.train.finetune == "lora"
                         and not first.strategy.modifies_base and not getattr(first.module, "is_classifier", False))
        if not adapters_only or self._whole is not None:
            return self.whole_model()
        adapters = {k: v.detach().cpu() for k, v in self.global_view().state_dict().items() if ".adapters." in k}
        adapters.update(server_adapters(self.cut)[0])
        return adapters_skeleton(cfg, adapters)

    def whole_model(self) -> torch.nn.Module:
        """The whole trained model (FedLoRA: this rank's; SplitLoRA: assembled, see ``assemble_whole_model``)."""
        if self.shape is None:
            return self.global_view()
        if self._whole is None:
            self._whole = assemble_whole_model(self.cfg, self.global_view(), self.cut).to(self.world.device)
        return self._whole


def run_client(cfg: Config, world: World, run_dir: Path, datas: list[ClientData], plan: RunPlan) -> bool:
    """Train this rank's clients; returns False when a client dropped out (then RPC shuts down non-gracefully)."""
    run = ClientRun(cfg, world, run_dir, datas, plan)

    def on_server_failure(peer: str, exc: BaseException) -> None:
        abort(world.role, f"the server is unreachable ({type(exc).__name__}); it failed, was killed, or the "
                          "network between them is down")

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
        lora, head = server_adapters(cut)
        if head:  # a head the server trained (model.train_head)
            whole.head.load_state_dict(head)
        load_lora_state_dict(whole, lora, strict=False)
    return whole


def server_adapters(cut: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The server part's adapters this client's model uses, and its trained head (or {}), fetched.

    With per-client cuts the server also holds blocks below this client's cut: this client's
    model uses its own copies there (as in its training).
    """
    state = rpc.rpc_sync(SERVER, split_server.server_lora_state)
    state = {k: v for k, v in state.items() if (block_of(k) or 0) >= cut or k.startswith("head.")}
    head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    return {k: v for k, v in state.items() if not k.startswith("head.")}, head
