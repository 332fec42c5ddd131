"""Aggregation strategies, chosen with ``--fed.strategy NAME``."""

from __future__ import annotations

from runtime.strategies.base import ClientContext, CommStats, Strategy
from runtime.strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg}


def build_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown fed.strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]()


__all__ = ["ClientContext", "CommStats", "Strategy", "STRATEGIES", "build_strategy"]
