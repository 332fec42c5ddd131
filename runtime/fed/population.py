"""Who the clients are, where each one lives and which of them train in a round.

N logical clients live on R client ranks, round robin: client k (0-based) on rank
``1 + k mod R``. With N = R that is today's one client per rank; with fewer ranks a rank
hosts ⌈N/R⌉ or ⌊N/R⌋ clients and steps them in client order, so the global order of the
clients' steps is the same for every R.

Each round t (1-based) a seeded sample of K of the N clients trains (Flower's and FedAvg's
client fraction C = K/N). The sample is a pure function of (seed, t): every rank draws it
without talking to the others, and a resumed run draws the same clients, so a checkpoint
needs no sampler state beyond the step. Aggregation weights are renormalised over the
round's participants: w_k = n_k / Σ_{j∈S_t} n_j (``samples``) or 1/K (``uniform``), the
weighting of FedAvg (McMahan et al. 2017, arXiv 1602.05629) for a sampled round.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.aggregate import client_weights


@dataclass(frozen=True)
class Population:
    n_clients: int  # N logical clients
    n_ranks: int  # R client ranks (world size - 1)
    per_round: int  # K clients sampled per round (K = N: full participation)
    seed: int

    @property
    def full(self) -> bool:
        return self.per_round >= self.n_clients

    def hosted(self, rank: int) -> list[int]:
        """The 0-based indices of the clients client rank ``rank`` (1..R) hosts, in order."""
        return list(range(rank - 1, self.n_clients, self.n_ranks))

    def rank_of(self, client: int) -> int:
        return 1 + client % self.n_ranks

    def sample(self, round_idx: int) -> list[int]:
        """The sorted 0-based indices of the clients that train in round ``round_idx`` (1-based)."""
        if self.full:
            return list(range(self.n_clients))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * round_idx)
        return sorted(torch.randperm(self.n_clients, generator=g)[: self.per_round].tolist())


def round_weights(counts: list[int], participants: list[int], weighting: str) -> list[float]:
    """w_k of every client for one round: renormalised over ``participants``, 0 for the others."""
    weights = [0.0] * len(counts)
    for k, w in zip(participants, client_weights([counts[k] for k in participants], weighting)):
        weights[k] = w
    return weights
