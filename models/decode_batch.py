"""Several decoding sessions' next positions as one forward: a joint step.

Sessions (a server's, one per decoding client) each have their own rows, padding and KV cache
of their own length, so their attention cannot share one (B, nh, 1, L) call without copying
every cache into a padded buffer. Everything else in a block is position-wise: layer norms,
the fused q/k/v, the projections, the MLP and their LoRA adapters. So a joint step runs the
part once over the sessions' new positions concatenated along the batch,
(R_1 + ... + R_n, 1, C), and only attention splits: ``JointStep`` stands in for the KV cache,
and the attention layer (``CausalSelfAttention``) hands it q, k and v; it appends each
session's k, v to that session's cache and runs that session's attention with that session's
own mask, exactly as a step of that session alone would (the same ``_attention_mask`` and the
same SDPA call on the same slices). The weights are read once per step for all sessions,
which is what a decoding step on a CPU or a small GPU batch spends its time on.

The linear layers see more rows than alone, which may change their last bits (a matmul's
blocking depends on its size); attention and everything after the part is per session.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .decode_chain import BeamKVCache
from .gpt2 import _attention_mask

__all__ = ["JointStep"]


class JointStep:
    """The KV cache of one joint step (T = 1) over several sessions.

    ``caches``: each session's cache (already reordered for this step); ``masks``: each
    session's padding mask (R_i, L_i + 1) or None; the sessions' rows follow one another in
    the batch in this order. Pass it as ``kv_cache`` to the part, then ``finish()``.
    """

    def __init__(self, caches: Sequence[BeamKVCache], rows: Sequence[int], masks: Sequence[Tensor | None]) -> None:
        if not (len(caches) == len(rows) == len(masks)):
            raise ValueError("JointStep needs one row count and one mask per cache")
        self.caches, self.masks = list(caches), list(masks)
        ends = torch.tensor(list(rows)).cumsum(0).tolist()
        self.slices = [slice(e - r, e) for e, r in zip(ends, rows)]
        # GPT2.forward reads ``length`` as the past of the whole batch; per session it is each
        # cache's own, so the batch-wide mask it builds is never used (``attend`` builds each).
        self.length = 1

    def attend(self, name: str, q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> Tensor:
        """q, k, v (R, nh, 1, hs) of every session's new position; returns attention's output (R, nh, 1, hs)."""
        out = []
        for cache, mask, rows in zip(self.caches, self.masks, self.slices):
            kk, vv = cache.update(name, k[rows], v[rows])  # (R_i, nh, L_i + 1, hs)
            keep, causal = _attention_mask(rows.stop - rows.start, 1, cache.length, mask, q.device)
            out.append(F.scaled_dot_product_attention(q[rows], kk, vv, attn_mask=keep, dropout_p=dropout_p,
                                                      is_causal=causal))
        return torch.cat(out)

    def finish(self) -> None:
        """Advance every session's cache past the step (GPT2.forward advances only ``self.length``)."""
        for cache in self.caches:
            cache.length += 1
