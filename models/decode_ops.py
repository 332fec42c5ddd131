"""Score-level operations of decoding: repetition penalty, no-repeat n-gram bans, a fast
row-wise log-sum-exp / top-k for wide (vocabulary-sized) rows, and ``Selection``: what a
search takes from one step's logits. Pure torch.

The penalties are split in two, so that the party holding the history (a split client) and
the party holding the logits (a vanilla split's server) can each do their half: ``penalty_pairs``
reads only the history and names the (row, token) scores to change; ``apply_penalties`` changes
them. Together they are the same operations, in the same order, as applying them in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

# Wide rows (a GPT-2 vocabulary) are split into groups of _GROUP columns, group j holding
# columns j, C + j, 2C + j, ... (C = V // _GROUP groups), so that group maxima are a
# reduction over a strided, vectorised dimension. The k best of a row lie in the k groups
# with the highest maxima: ranking those k * _GROUP values (and the ragged tail) is far
# cheaper than a top-k over V on CPU, and the maxima give the row maximum for free.
_GROUP = 64


def _group_max(x: Tensor, k: int) -> Tensor | None:
    """Group maxima (R, C) of ``x`` (R, V), or None where rows are too narrow to gain."""
    R, V = x.shape
    C = V // _GROUP
    return x[:, : C * _GROUP].view(R, _GROUP, C).amax(1) if C > 4 * k else None


def _refresh_group_max(gmax: Tensor, x: Tensor, rows: Tensor, cols: Tensor) -> None:
    """Recompute in place the maxima of the groups that hold the changed ``x[rows, cols]``."""
    C = gmax.shape[1]
    inside = cols < C * _GROUP  # the tail is not grouped
    rows, group = rows[inside], cols[inside] % C  # (n,)
    members = group[:, None] + C * torch.arange(_GROUP, device=x.device)  # (n, _GROUP) columns
    gmax[rows, group] = x[rows[:, None], members].amax(1)


def _logsumexp(x: Tensor, buf: Tensor, gmax: Tensor | None) -> Tensor:
    """Row-wise log-sum-exp of ``x`` (R, V), using ``buf`` (>= R * V floats) as scratch.

    Much cheaper on CPU than ``log_softmax``, whose (R, V) output beam search never needs:
    it reads the log-probs of only a few candidates per row, as ``x - lse``.
    """
    m = x.amax(1, keepdim=True) if gmax is None else gmax.amax(1, keepdim=True)  # (R, 1)
    tail = x[:, gmax.shape[1] * _GROUP :] if gmax is not None else x[:, :0]
    if tail.shape[1]:
        m = torch.maximum(m, tail.amax(1, keepdim=True))
    e = torch.sub(x, m, out=buf[: x.numel()].view_as(x)).exp_()  # (R, V)
    return e.sum(1).log_() + m[:, 0]  # (R,)


def _topk_rows(x: Tensor, k: int, gmax: Tensor | None) -> tuple[Tensor, Tensor]:
    """``x.topk(k, dim=1)`` for rows (R, V) with group maxima ``gmax`` (see _GROUP)."""
    if gmax is None:
        return x.topk(k, dim=1)
    R, V = x.shape
    C = gmax.shape[1]
    best = gmax.topk(k, dim=1).indices  # (R, k) groups that hold the k best
    cols = best[:, :, None] + C * torch.arange(_GROUP, device=x.device)  # (R, k, _GROUP)
    tail = torch.arange(C * _GROUP, V, device=x.device).expand(R, -1)  # (R, V - C * _GROUP)
    cols = torch.cat([cols.flatten(1), tail], 1)  # (R, k * _GROUP + tail)
    top, pos = x.gather(1, cols).topk(k, dim=1)
    return top, cols.gather(1, pos)


# --- penalties as (row, token) pairs, and the selection of candidates ---------------------


class Penalties(NamedTuple):
    """The score changes a step's history asks for: (n,) row and token indices each.

    ``rep_*``: every token the CTRL repetition penalty acts on (repeats allowed: they write
    the same value); ``ban_*``: every token a no-repeat-n-gram ban sets to -inf.
    """

    rep_rows: Tensor
    rep_toks: Tensor
    ban_rows: Tensor
    ban_toks: Tensor

    def compact(self) -> Penalties:
        """The same changes with repeated pairs dropped, as int32 (for the wire; same result)."""
        def unique(rows: Tensor, toks: Tensor) -> tuple[Tensor, Tensor]:
            if not len(rows):
                return rows.to(torch.int32), toks.to(torch.int32)
            pairs = torch.unique(torch.stack([rows, toks], 1), dim=0)  # (n', 2)
            return pairs[:, 0].to(torch.int32), pairs[:, 1].to(torch.int32)

        return Penalties(*unique(self.rep_rows, self.rep_toks), *unique(self.ban_rows, self.ban_toks))


def penalty_pairs(hist: Tensor, start: Tensor, repetition_penalty: float, ngram: int) -> Penalties:
    """The pairs of ``Penalties`` for a history ``hist`` (R, L) seen from column ``start`` (R,) on."""
    R, L = hist.shape
    none = hist.new_zeros(0)
    rep = none, none
    if repetition_penalty != 1.0:
        rows = torch.arange(R, device=hist.device)[:, None].expand(R, L)
        real = torch.arange(L, device=hist.device)[None, :] >= start[:, None]  # (R, L)
        rep = rows[real], hist[real]
    ban = none, none
    if ngram > 0 and L >= ngram:
        windows = hist.unfold(1, ngram, 1)  # (R, W = L - n + 1, n)
        # The last n - 1 tokens against the first n - 1 of every window (R, W, n - 1); a match bans
        # the window's last token. Only windows that lie wholly in the part looked at count.
        match = (windows[:, :, :-1] == hist[:, L - ngram + 1:][:, None, :]).all(-1)  # (R, W)
        match &= torch.arange(L - ngram + 1, device=hist.device)[None, :] >= start[:, None]
        r, w = match.nonzero(as_tuple=True)
        ban = r, windows[r, w, -1]
    return Penalties(*rep, *ban)


def apply_penalties(scores: Tensor, pen: Penalties, penalty: float,
                    offset: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Apply ``pen`` to ``scores`` (R, V) in place: the repetition penalty (on ``scores - offset``
    where given), then the bans. Returns the (rows, columns) changed, (n,) each."""
    rows, toks = pen.rep_rows.long(), pen.rep_toks.long()
    if len(rows):
        shift = 0.0 if offset is None else offset[rows]
        vals = scores[rows, toks] - shift
        scores[rows, toks] = torch.where(vals < 0, vals * penalty, vals / penalty) + shift
    brows, btoks = pen.ban_rows.long(), pen.ban_toks.long()
    if len(brows):
        scores[brows, btoks] = float("-inf")
    return torch.cat([rows, brows]), torch.cat([toks, btoks])


@dataclass
class Selection:
    """What a search takes from one step's logits (R, V): ``k`` 0 (greedy): the argmax of the
    penalised logits, (R,); ``k`` > 0 (beam search): each row's k best penalised log-probs and
    their tokens, (R, k) each. Penalties act on log-probs in beam search (as in transformers)
    and on logits in greedy decoding."""

    k: int = 0
    repetition_penalty: float = 1.0
    _scratch: Tensor | None = field(default=None, repr=False)

    def __call__(self, logits: Tensor, pen: Penalties) -> tuple[Tensor | None, Tensor]:
        if self.k == 0:
            apply_penalties(logits, pen, self.repetition_penalty)
            return None, logits.argmax(-1)
        if self._scratch is None or self._scratch.numel() < logits.numel():
            self._scratch = logits.new_empty(logits.numel())  # reused while rows do not grow
        gmax = _group_max(logits, self.k)  # (R, C) or None
        lse = _logsumexp(logits, self._scratch, gmax)  # (R,)
        rows, cols = apply_penalties(logits, pen, self.repetition_penalty, offset=lse)
        if gmax is not None and len(rows):
            _refresh_group_max(gmax, logits, rows, cols)
        score, tok = _topk_rows(logits, self.k, gmax)  # (R, k)
        return score - lse[:, None], tok
