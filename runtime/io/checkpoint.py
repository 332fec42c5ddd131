"""Checkpoints and exact resume.

A checkpoint at local step k is one file per rank under ``ckpt/step_<k>/`` (``server.pt``,
``client<r>.pt`` or ``cenlora.pt``), then ``ckpt/latest`` naming that folder — written last,
atomically, once every rank's file is on disk. A kill at any moment leaves ``latest``
pointing at a complete checkpoint. Files hold only tensors and plain Python values and
are loaded with ``torch.load(weights_only=True)``: no pickle code runs.

What a rank saves: its LoRA (and base weights a strategy changed), optimizer and schedule
state, strategy state, step counters, and every RNG state (torch, CUDA, numpy, python).
The data order is a pure function of (seed, client, step), so the step is the loader's
position. With ``runtime.order=round_robin`` on CPU, a resumed run equals an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.config import Config
from runtime.io.artifacts import atomic_write_bytes, torch_save

# Fields a resumed run may not change: they define the model, the split or the federation.
FROZEN_FIELDS = ("method", "model.name", "model.path", "split.cut", "lora.r", "lora.alpha", "lora.targets",
                 "fed.strategy", "fed.client_ranks", "fed.aggregate_every", "fed.num_clients", "fed.clients_per_round",
                 "train.seed", "train.batch_size",
                 "train.max_steps", "train.epochs", "data.partition", "data.source", "data.max_train_examples")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or does not fit this run."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "ckpt" / f"step_{step}"


def save_rank(run_dir: Path, step: int, name: str, state: dict[str, Any]) -> Path:
    path = step_dir(run_dir, step) / f"{name}.pt"
    torch_save(path, {**state, "step": step, "rng": rng_state(), "format": 1})
    return path


def mark_latest(run_dir: Path, step: int) -> None:
    """Point ``ckpt/latest`` at step ``step`` (call once every rank's file is written)."""
    atomic_write_bytes(run_dir / "ckpt" / "latest", f"step_{step}\n".encode())


def latest_step(run_dir: Path) -> int:
    pointer = run_dir / "ckpt" / "latest"
    if not pointer.is_file():
        raise CheckpointError(f"no complete checkpoint in {run_dir}: {pointer} is missing (was ckpt.every set?)")
    text = pointer.read_text().strip()
    if not text.startswith("step_") or not text[5:].isdigit():
        raise CheckpointError(f"{pointer} is corrupted: {text[:40]!r}")
    return int(text[5:])


def load_rank(run_dir: Path, step: int, name: str) -> dict[str, Any]:
    path = step_dir(run_dir, step) / f"{name}.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle opcode, unsafe global ...
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("step") != step or "rng" not in state:
        raise CheckpointError(f"checkpoint {path} is not a splitlora checkpoint of step {step}")
    return state


class RoleCheckpoint:
    """The one checkpoint schema of a role's file (``ckpt/step_<n>/<name>.pt``): its trained
    state (``lora``), ``optimizer`` and ``scheduler`` state, the role's extras (a client's
    strategy state and counters, the server's update count), plus ``step``, ``rng`` and
    ``format`` (``save_rank``). CenLoRA, the server and every client save and restore through it."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.run_dir, self.name = run_dir, name

    def save(self, step: int, lora: dict[str, Any], optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, **extra: Any) -> Path:
        return save_rank(self.run_dir, step, self.name, {"lora": lora, "optimizer": optimizer.state_dict(),
                                                         "scheduler": scheduler.state_dict(), **extra})

    def restore(self, step: int, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
        """Load the optimizer, schedule and random state of ``step``; returns the file's state, whose
        ``lora`` and extras the role loads itself (none of that draws random numbers)."""
        state = load_rank(self.run_dir, step, self.name)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return state


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_resume_config(saved: dict[str, Any], cfg: Config, world_size: int) -> None:
    """Refuse to resume with a config that changes the model, cut, method or federation."""
    now = cfg.to_dict()
    diffs = [f"{f} ({_get(saved, f)!r} -> {_get(now, f)!r})" for f in FROZEN_FIELDS if _get(saved, f) != _get(now, f)]
    saved_world = (saved.get("launch") or {}).get("world_size")
    if saved_world is not None and saved_world != world_size:
        diffs.append(f"number of processes ({saved_world} -> {world_size})")
    if diffs:
        raise CheckpointError("cannot resume: the config changes " + "; ".join(diffs))


def read_saved_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: no config.json there (not a run directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupted: {e}") from None
