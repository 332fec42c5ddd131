"""A finished SplitLoRA run evaluated through the split, after training (``launch.evaluate``).

Two ranks: rank 0 holds the server's part, rank 1 the (first) client's, each built alone and
loaded with only its own tensors of the run's ``model/`` (the adapters, and the base where the
run saved one); the client decodes through the server as ``--eval.at_end`` does
(``runtime/split/inference.py``). Under ``torchrun --nnodes 2`` each party runs on its own
machine and no machine ever holds the whole model; ``launch.evaluate`` starts both ranks on
this machine when it is not run by torchrun.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from torch import nn

from models.lora import load_lora_state_dict, lora_state_dict
from runtime.build import build_part, head_cut
from runtime.config import Config
from runtime.control.dist import SERVER, init_world, shutdown_world, world_barrier
from runtime.split import server as split_server
from runtime.split.cut import CutCodec
from runtime.split.inference import SplitModel
from runtime.split.shapes import get_shape

T = TypeVar("T")


def _own_tensors(path: Path, keys: set[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file that this part holds, read one by one (not the whole file)."""
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k in keys}


def load_run_part(cfg: Config, run_dir: Path, role: str, cut: int) -> nn.Module:
    """The trained part ``role`` (client | server) of a SplitLoRA run, from its ``model/``."""
    model_dir = run_dir / "model"
    if not (model_dir / "lora.safetensors").is_file():
        raise FileNotFoundError(f"{model_dir}/lora.safetensors not found: was the run finished with "
                                "out.save_model=true?")
    part = build_part(cfg, role, cut)
    own = set(part.state_dict())
    base = _own_tensors(model_dir / "base.safetensors", own)
    if base:
        part.load_state_dict(base, strict=False)
    lora = _own_tensors(model_dir / "lora.safetensors", own)
    wanted = set(lora_state_dict(part))
    if wanted - set(lora):
        raise ValueError(f"{model_dir}/lora.safetensors lacks adapters of the {role}'s part: "
                         f"{sorted(wanted - set(lora))[:5]}")
    load_lora_state_dict(part, lora, strict=False)
    return part.eval()


def evaluate_through_split(cfg: Config, run_dir: Path, evaluate: Callable[[SplitModel, torch.device], T]) -> T | None:
    """Run on each of the two ranks (torchrun's variables set): the server serves, the client
    calls ``evaluate(model, device)`` and gets its result; the server returns None."""
    if cfg.method != "splitlora" or not get_shape(cfg.split.shape).split_inference:
        raise ValueError(f"only a SplitLoRA run evaluates through the split (this one: method={cfg.method}, "
                         f"split.shape={cfg.split.shape})")
    if int(os.environ.get("WORLD_SIZE", "1")) != 2:
        raise ValueError("evaluation through the split runs on two ranks: the server and one client")
    cut = cfg.split.cuts(1)[0]
    world = init_world(cfg)
    try:
        if world.is_server:
            part = load_run_part(cfg, run_dir, "server", cut).to(world.device)
            params = [p for p in part.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params or [nn.Parameter(torch.zeros(1))], lr=0.0)  # never steps
            split_server.install(split_server.SplitServer(
                part, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), device=world.device, clients=[1],
                order="arrival", label_smoothing=0.0, timeout=cfg.runtime.rpc_timeout, cuts={1: cut}))
            world_barrier()  # served
            world_barrier()  # the client is done
            return None
        part = load_run_part(cfg, run_dir, "client", cut).to(world.device)
        model = SplitModel(get_shape(cfg.split.shape), part, SERVER, world.rank,
                           CutCodec(cfg.split.cut_dtype, via_host=cfg.runtime.cuda_cut == "host"), cut,
                           head_cut(cfg, part.config.n_layer))
        world_barrier()
        try:
            return evaluate(model, world.device)
        finally:
            world_barrier()
    finally:
        split_server.install(None)
        shutdown_world(cfg)
