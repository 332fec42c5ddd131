"""The server's process (rank 0): the metrics sink and progress for every method; for SplitLoRA
also the server part and its serving (``runtime/split/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from runtime.build import (
    load_trained_state,
    server_thread_count,
    set_threads,
    trainable_parameters,
)
from runtime.config import Config
from runtime.control import coordinator
from runtime.control.dist import World, abort, client_name, world_barrier
from runtime.control.watchdog import Watchdog
from runtime.inputs import RunPlan
from runtime.io.checkpoint import RoleCheckpoint, mark_latest
from runtime.io.telemetry import MetricsWriter, now, peak_memory
from runtime.optim import build_optimizer, build_scheduler
from runtime.roles.common import run_summary
from runtime.split import server as split_server


def run_server(cfg: Config, world: World, run_dir: Path, plan: RunPlan) -> dict[str, Any]:
    set_threads(server_thread_count(cfg))
    writer = MetricsWriter(run_dir / "metrics.jsonl", cfg.out.tensorboard)
    coord = coordinator.Coordinator(writer, world.n_clients, plan.client_steps())
    coordinator.install(coord)
    checkpoint = RoleCheckpoint(run_dir, "server")
    if cfg.method == "splitlora":
        _start_split_server(cfg, world, plan, coord, checkpoint)

    def on_checkpoint(step: int) -> None:
        srv = split_server.current()
        if srv is not None:
            checkpoint.save(step, srv.lora_state(), srv.opt, srv.sched, server_steps=srv.steps)
        mark_latest(run_dir, step)

    coord.on_checkpoint = on_checkpoint

    def on_client_failure(peer: str, exc: BaseException) -> None:
        rank = int(peer.removeprefix("client"))
        reason = f"{peer} is unreachable ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
        if watchdog.others_reachable(peer) is False:  # no client answers: the server's own link, most likely
            abort("server", f"no client is reachable ({reason}, and every other client too): this node's network "
                            "may be down; aborting every rank")
        if cfg.fed.on_client_failure == "continue" and len(coord.live_clients()) > 1 and not coord.dropped:
            coord.drop(rank, reason)
        else:
            abort("server", f"client {rank} failed: {reason}; aborting every rank "
                            f"(fed.on_client_failure={cfg.fed.on_client_failure})")

    watchdog = Watchdog([client_name(r) for r in range(1, world.world_size)], on_client_failure,
                        timeout=min(10.0, cfg.runtime.rpc_timeout))
    coord.watchdog = watchdog
    world_barrier()
    watchdog.start()  # clients start stepping only once the server is serving
    t_start = now()
    # Clients drive the run through RPC; this thread only waits for them to finish.
    coord.all_done.wait()
    watchdog.stop()
    wall = now() - t_start
    coord.close()
    writer.close()
    clients = {str(k): v for k, v in sorted(coord.finished.items())}
    records = [r for c in coord.finished.values() for r in c.pop("records", [])]
    val = next((c.get("val_loss") for c in coord.finished.values() if c.get("val_loss") is not None), None)
    summary = run_summary(cfg, plan, records, wall, val, clients)
    summary["eval"] = next((c.get("eval") for c in coord.finished.values() if c.get("eval")), None)
    summary["clients_per_round"] = plan.per_round or len(plan.counts)
    summary["client_ranks"] = world.n_clients
    # Per logical client (docs/clients.md): samples, rank budget, rounds taken part in, steps, bytes.
    summary["logical_clients"] = dict(sorted(((k, v) for c in clients.values() for k, v in c.get("hosted", {}).items()),
                                             key=lambda kv: int(kv[0])))
    srv = split_server.current()
    summary["server_memory"] = peak_memory(world.device, srv.part if srv is not None else None)
    if srv is not None:  # one update per client step (sequential) or per batch (batched)
        summary["server"] = {"mode": srv.mode.name, "updates": srv.steps}
        if srv.decoding is not None and srv.decoding.opened:  # decoding served (runtime/split/inference.py)
            summary["server"]["decoding"] = srv.decoding.stats()
    summary["dropped_clients"] = {str(k): v for k, v in coord.dropped.items()}
    split_server.install(None)
    coordinator.install(None)
    return summary



def _start_split_server(cfg: Config, world: World, plan: RunPlan, coord: coordinator.Coordinator,
                        checkpoint: RoleCheckpoint) -> None:
    """Build the server part, its optimizer and schedule, install the SplitServer; restore on resume."""
    cuts = cfg.split.cuts(world.n_clients)
    part = build_server_part(cfg, min(cuts)).to(world.device)
    part.train()
    params = trainable_parameters(part)
    opt = build_optimizer(cfg, params)
    # The server steps once per client step: K (sampled) clients x the run's steps in total.
    sched = build_scheduler(cfg, opt, plan.local_steps * (plan.per_round or len(plan.counts)))
    server = split_server.SplitServer(
        part, opt, sched, device=world.device, clients=list(range(1, world.world_size)),
        order=cfg.runtime.order, label_smoothing=cfg.train.label_smoothing, timeout=cfg.runtime.rpc_timeout,
        cuts={rank: cuts[rank - 1] for rank in range(1, world.world_size)}, batching=_batching(cfg, coord))
    split_server.install(server)
    if plan.start_step:
        state = checkpoint.restore(plan.start_step, opt, sched)
        load_trained_state(part, state["lora"], cfg)
        server.steps = state["server_steps"]


def _batching(cfg: Config, coord: coordinator.Coordinator) -> split_server.Batching | None:
    """Batched serving's settings; every batch's composition goes to metrics.jsonl."""
    if not cfg.split.server_batching:
        return None
    return split_server.Batching(window_s=cfg.split.batch_window_ms / 1000.0,
                                 max_clients=cfg.split.max_batch_clients, on_batch=lambda rec: coord.log([rec]))


def build_server_part(cfg: Config, cut: int) -> torch.nn.Module:
    from runtime.build import build_part

    return build_part(cfg, "server", cut)
