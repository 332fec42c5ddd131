"""Process entry points: ``run_cenlora`` (one process), ``run_server`` (rank 0) and
``run_client`` (ranks 1..N) for SplitLoRA and FedLoRA.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models.loss import model_loss
from runtime import coordinator
from runtime.artifacts import save_model
from runtime.build import (
    build_full_model,
    load_trained_state,
    model_config,
    server_thread_count,
    set_threads,
    trainable_parameters,
    trained_state,
)
from runtime.checkpoint import RoleCheckpoint, mark_latest
from runtime.config import Config
from runtime.dist import World, abort, client_name, world_barrier
from runtime.inputs import RunPlan, load_client_data
from runtime.optim import build_optimizer, build_scheduler
from runtime.split import server as split_server
from runtime.steps import Stepper
from runtime.telemetry import MetricsWriter, now, peak_memory, summarize
from runtime.watchdog import Watchdog

LOG_FLUSH = 10  # client step records per rpc to the coordinator
FAULT_ENV = "SPLITLORA_INJECT_FAULT"  # test hook: "<raise|kill>:<rank>:<step>"


def maybe_inject_fault(rank: int, step: int) -> None:
    """Fault injection for the reliability tests: raise or SIGKILL this rank at a step."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    kind, r, s = spec.split(":")
    if int(r) == rank and int(s) == step:
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault on rank {rank} at step {step} ({FAULT_ENV}={spec})")


@torch.no_grad()
def eval_loss(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float | None:
    """Mean masked token NLL (no label smoothing) over the evaluation batches."""
    if not batches:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    for b in batches:
        n = float(b["loss_mask"].sum())
        total += model_loss(model, b["input_ids"].to(device), b["targets"].to(device),
                            b["loss_mask"].to(device), 0.0).item() * n
        count += n
    model.train(was_training)
    return total / max(count, 1.0)


def final_eval(cfg: Config, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], run_dir: Path,
               device: torch.device) -> tuple[float | None, dict | None]:
    """The trained whole model's validation loss and scores: a classifier's test loss, accuracy and
    macro-F1 (always); a language model's masked NLL and, with ``--eval.at_end``, its E2E scores."""
    if getattr(model, "is_classifier", False):
        from runtime.classify_eval import classify_scores, write_scores

        scores = classify_scores(model, batches, device)
        if scores is not None:
            write_scores(run_dir, scores, cfg.out.tensorboard)
        return (scores or {}).get("loss"), scores
    return eval_loss(model, batches, device), evaluate_at_end(cfg, model, run_dir, device)


def evaluate_at_end(cfg: Config, model: torch.nn.Module, run_dir: Path, device: torch.device) -> dict | None:
    """``--eval.at_end``: decode and score the trained model into the run directory;
    ``--eval.samples N``: print N greedy texts of validation MRs."""
    if cfg.eval.samples:
        from runtime.evaluation import sample_texts

        samples = sample_texts(model, cfg, cfg.eval.samples, device)
        (run_dir / "samples.txt").write_text("".join(f"{s['mr']}\n  -> {s['text']}\n" for s in samples))
        print("splitlora: samples (greedy, validation MRs):", file=sys.stderr)
        for s in samples:
            print(f"  MR:   {s['mr']}\n  text: {s['text']}", file=sys.stderr)
        sys.stderr.flush()
    if not cfg.eval.at_end:
        return None
    import copy

    from models.generate import DecodeConfig
    from runtime.evaluation import evaluate_model, format_scores

    e = cfg.eval
    decode = DecodeConfig(num_beams=e.num_beams, length_penalty=e.length_penalty,
                          no_repeat_ngram_size=e.no_repeat_ngram_size, max_new_tokens=e.max_new_tokens,
                          repeat_scope=e.repeat_scope)
    record = evaluate_model(copy.deepcopy(model), cfg, run_dir, split=e.split, refs_style=e.refs_style,
                            decode=decode, batch_size=e.batch_size, max_mrs=e.max_mrs, meteor=e.meteor,
                            device=device)
    print(f"splitlora: eval: {format_scores(record)}", file=sys.stderr, flush=True)
    from runtime.tensorboard import open_mirror

    mirror = open_mirror(run_dir, cfg.out.tensorboard)
    if mirror is not None:
        mirror.add({"kind": "scores", "scores": record["scores"]})
        mirror.close()
    return record["scores"]


def test_due(cfg: Config, step: int) -> bool:
    """A classifier's test scores are recorded every ``eval.every`` steps (after that step's aggregation)."""
    return cfg.data.task == "classify" and cfg.eval.every > 0 and step % cfg.eval.every == 0


def test_record(model: torch.nn.Module, data: Any, device: torch.device, step: int, rounds: int = 0,
                client: int = 0) -> dict[str, Any]:
    """The ``test`` metrics record of a whole classifier at ``step`` (accuracy per round for the plots),
    scored by ``client`` (0: cenlora)."""
    from runtime.classify_eval import classify_scores

    t0 = now()
    scores = classify_scores(model, data.eval_batches(), device) or {}
    return {"kind": "test", "client": client, "step": step, "round": rounds, "t": time.time(),
            "eval_s": now() - t0, **scores}


def _phase_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for r in records for k in r.get("time", {})})
    return {k: summarize([r["time"][k] for r in records if k in r.get("time", {})]) for k in keys}


# ------------------------------------------------------------------------- CenLoRA


def run_cenlora(cfg: Config, run_dir: Path, device: torch.device, start_step: int = 0) -> dict[str, Any]:
    set_threads(server_thread_count(cfg))
    model = build_full_model(cfg).to(device)
    model.train()
    data = load_client_data(cfg, client_index=0, n_clients=1)
    print(f"splitlora: data: {data.partition_info['note']}", file=sys.stderr, flush=True)
    plan = RunPlan.make(cfg, [data.n_samples], data.source, start_step)
    params = trainable_parameters(model)
    opt = build_optimizer(cfg, params)
    stepper = Stepper(model, opt, build_scheduler(cfg, opt, plan.local_steps), device,
                      cfg.train.label_smoothing, cfg.train.grad_clip)
    checkpoint = RoleCheckpoint(run_dir, "cenlora")
    if plan.start_step:
        load_trained_state(model, checkpoint.restore(plan.start_step, opt, stepper.sched)["lora"], cfg)
    writer = MetricsWriter(run_dir / "metrics.jsonl", cfg.out.tensorboard)
    coord = coordinator.Coordinator(writer, 1, plan.local_steps - plan.start_step)
    records = []
    t_start = now()
    for step, batch in enumerate(data.batches(plan.local_steps, plan.start_step), start=plan.start_step):
        t0 = now()
        out = stepper.local_step(batch)
        tokens = int(batch["loss_mask"].numel())
        rec = {"kind": "step", "client": 0, "step": step + 1, "loss": out["loss"], "step_time": now() - t0,
               "t": time.time(), "examples": int(batch["loss_mask"].shape[0]),
               "loss_tokens": int(batch["loss_mask"].sum()),
               "tokens": tokens, "lr": stepper.sched.get_last_lr()[0], "time": out["time"]}
        rec["tokens_per_s"] = tokens / rec["step_time"]
        records.append(rec)
        coord.log([rec])
        if test_due(cfg, step + 1):
            coord.log([test_record(model, data, device, step + 1)])
        if plan.checkpoint_due(cfg, step + 1):
            checkpoint.save(step + 1, trained_state(model, cfg), opt, stepper.sched)
            mark_latest(run_dir, step + 1)
    wall = now() - t_start
    coord.close()
    if cfg.out.save_model:
        save_model(run_dir, model, cfg)
    val, scores = final_eval(cfg, model, data.eval_batches(), run_dir, device)
    writer.write({"kind": "eval", "val_loss": val})
    writer.close()
    summary = _summary(cfg, plan, records, wall, val, {"0": data.describe()})
    summary["eval"] = scores
    summary["memory"] = peak_memory(device, model)
    return summary


# ------------------------------------------------------------------------- server (rank 0)


def run_server(cfg: Config, world: World, run_dir: Path, plan: RunPlan) -> dict[str, Any]:
    set_threads(server_thread_count(cfg))
    writer = MetricsWriter(run_dir / "metrics.jsonl", cfg.out.tensorboard)
    coord = coordinator.Coordinator(writer, world.n_clients, (plan.local_steps - plan.start_step) * world.n_clients)
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
    summary = _summary(cfg, plan, records, wall, val, clients)
    summary["eval"] = next((c.get("eval") for c in coord.finished.values() if c.get("eval")), None)
    srv = split_server.current()
    summary["server_memory"] = peak_memory(world.device, srv.part if srv is not None else None)
    if srv is not None:  # one update per client step (sequential) or per batch (batched)
        summary["server"] = {"mode": srv.mode.name, "updates": srv.steps}
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
    # The server steps once per client step: K clients x local steps in total.
    sched = build_scheduler(cfg, opt, plan.local_steps * world.n_clients)
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


# ------------------------------------------------------------------------- summary


def _summary(cfg: Config, plan: RunPlan, records: list[dict[str, Any]], wall: float, val: float | None,
             clients: dict[str, Any]) -> dict[str, Any]:
    steps = [r for r in records if r.get("kind") == "step"]
    first = [r["loss"] for r in steps[: max(1, len(steps) // 10)]]
    last = [r["loss"] for r in steps[-max(1, len(steps) // 10):]]
    tokens = sum(r["tokens"] for r in steps)
    return {
        "method": cfg.method, "model": cfg.model.name, "n_layer": model_config(cfg).n_layer,
        "cut": cfg.split.cut if cfg.method == "splitlora" else None,
        "n_clients": len(plan.counts), "local_steps": plan.local_steps, "order": cfg.runtime.order,
        "data_source": plan.source, "loss_first": sum(first) / len(first) if first else None,
        "loss_last": sum(last) / len(last) if last else None, "val_loss": val,
        "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall if wall > 0 else None,
        "bytes_up": sum(r.get("bytes_up", 0) for r in steps),
        "bytes_down": sum(r.get("bytes_down", 0) for r in steps),
        "phases_s": _phase_summary(steps), "clients": clients,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


