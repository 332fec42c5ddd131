"""Decoding shared among processes: each decodes a share of the MRs, one gathers and scores.

``--eval.at_end`` in a SplitLoRA run with several client ranks: every live client rank decodes
a share through the split at the same time (the server serves their sessions together, batched
under ``split.server_batching``), and the first live one scores.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


class DecodeShare:
    """Decoding shared among ``count`` processes: this one is ``index`` (0 scores); ``gather``
    (this share's hypotheses, None where another share's) -> every hypothesis on share 0, None
    elsewhere. Subclasses move the lists (``ShareOverGroup``: over the client-only group)."""

    def __init__(self, index: int, count: int) -> None:
        self.index, self.count = index, count

    @property
    def scores(self) -> bool:
        return self.index == 0

    def exchange(self, mine: list[str | None]) -> list[list[str | None]] | None:
        """Every share's list, on share 0 (None elsewhere)."""
        raise NotImplementedError

    def gather(self, mine: list[str | None]) -> list[str] | None:
        parts = self.exchange(mine)
        if parts is None:
            return None
        merged = [next((p[i] for p in parts if p[i] is not None), None) for i in range(len(mine))]
        if any(h is None for h in merged):
            raise RuntimeError("decoding shares left an MR without a hypothesis")
        return merged  # type: ignore[return-value]


class ShareOverGroup(DecodeShare):
    """A ``DecodeShare`` among the live client ranks, gathered over the client-only group
    (all ranks get every list; they are a few kB of text)."""

    def __init__(self, index: int, count: int, group: Any) -> None:
        super().__init__(index, count)
        self.group = group

    def exchange(self, mine: list[str | None]) -> list[list[str | None]] | None:
        parts: list[Any] = [None] * self.count
        dist.all_gather_object(parts, mine, group=self.group)
        return parts if self.scores else None
