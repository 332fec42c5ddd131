"""CenLoRA: the whole model in one process."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from runtime.build import (
    build_full_model,
    load_trained_state,
    server_thread_count,
    set_threads,
    trainable_parameters,
    trained_state,
)
from runtime.config import Config
from runtime.control import coordinator
from runtime.inputs import RunPlan, load_client_data
from runtime.io.artifacts import save_model
from runtime.io.checkpoint import RoleCheckpoint, mark_latest
from runtime.io.telemetry import MetricsWriter, now, peak_memory
from runtime.optim import build_optimizer, build_scheduler
from runtime.roles.common import eval_due, eval_record, final_eval, run_summary
from runtime.steps import Stepper


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
        if eval_due(cfg, step + 1):
            coord.log([eval_record(model, data, device, step + 1)])
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
    summary = run_summary(cfg, plan, records, wall, val, {"0": data.describe()})
    summary["eval"] = scores
    summary["memory"] = peak_memory(device, model)
    return summary
