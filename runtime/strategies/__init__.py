"""Aggregation strategies, chosen with ``--fed.strategy NAME``.

    fedavg    average A and B separately (FedAvg-LoRA)
    ffa       FFA-LoRA: A frozen at the shared init, only B trained and averaged
    lora-a2   LoRA-A2: alternating freeze + adaptive rank selection (arXiv 2410.22815)
    flexlora  FlexLoRA: weighted full-size update, SVD, rank-r_k truncation per client
    hetlora   HetLoRA: heterogeneous ranks zero-padded for averaging
    flora     FLoRA: stacked factors merged into the base each round, fresh adapters

Heterogeneous budgets r_k come from ``--fed.client_ranks``; fedavg and ffa ignore them.
"""

from __future__ import annotations

from typing import Any

from runtime.strategies.base import ClientContext, CommStats, Strategy
from runtime.strategies.fedavg import FedAvg
from runtime.strategies.ffa import FFA
from runtime.strategies.flexlora import FlexLoRA
from runtime.strategies.flora import FLoRA
from runtime.strategies.hetlora import HetLoRA
from runtime.strategies.lora_a2 import LoRAA2

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, FFA, LoRAA2, FlexLoRA, HetLoRA, FLoRA)}


def build_strategy(name: str, fed: Any = None) -> Strategy:
    """The strategy ``name``; ``fed`` (a FedConfig) supplies the options its class names in ``options``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown fed.strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    cls = STRATEGIES[name]
    kwargs = {k: getattr(fed, k) for k in cls.options} if fed is not None else {}
    return cls(**kwargs)


__all__ = ["ClientContext", "CommStats", "Strategy", "STRATEGIES", "build_strategy"]
