"""Aggregation strategies, chosen with ``--fed.strategy NAME``.

    fedavg    average A and B separately (FedAvg-LoRA)
    ffa       FFA-LoRA: A frozen at the shared init, only B trained and averaged
    lora-a2   LoRA-A2: alternating freeze + adaptive rank selection (arXiv 2410.22815)
    flexlora  FlexLoRA: weighted full-size update, SVD, rank-r_k truncation per client
    hetlora   HetLoRA: heterogeneous ranks zero-padded for averaging
    flora     FLoRA: stacked factors merged into the base each round, fresh adapters
    fedex     FedEx-LoRA: FedAvg of A and B + the exact residual folded into the base (arXiv 2410.09432)
    fedsa     FedSA-LoRA: only A aggregated, each client keeps its own B (ICLR 2025)
    rolora    RoLoRA: alternate rounds train and average only B or only A (arXiv 2502.01755)
    frlora    FRLoRA: weighted residual product merged into the base, restart at W0's principal factors (ICLR 2025)

Heterogeneous budgets r_k come from ``--fed.client_ranks``; fedavg, ffa, fedex, fedsa, rolora and
frlora ignore them.
"""

from __future__ import annotations

from typing import Any

from runtime.strategies.base import ClientContext, CommStats, Strategy
from runtime.strategies.fedavg import FedAvg
from runtime.strategies.fedex import FedEx
from runtime.strategies.fedsa import FedSA
from runtime.strategies.ffa import FFA
from runtime.strategies.flexlora import FlexLoRA
from runtime.strategies.flora import FLoRA
from runtime.strategies.frlora import FRLoRA
from runtime.strategies.hetlora import HetLoRA
from runtime.strategies.lora_a2 import LoRAA2
from runtime.strategies.rolora import RoLoRA

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FFA, LoRAA2, FlexLoRA, HetLoRA, FLoRA, FedEx, FedSA, RoLoRA, FRLoRA)}


def build_strategy(name: str, fed: Any = None) -> Strategy:
    """The strategy ``name``; ``fed`` (a FedConfig) supplies the options its class names in ``options``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown fed.strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    cls = STRATEGIES[name]
    kwargs = {k: getattr(fed, k) for k in cls.options} if fed is not None else {}
    return cls(**kwargs)


__all__ = ["ClientContext", "CommStats", "Strategy", "STRATEGIES", "build_strategy"]
