"""Score-level operations of decoding: repetition penalty, no-repeat n-gram bans, and a
fast row-wise log-sum-exp / top-k for wide (vocabulary-sized) rows. Pure torch."""

from __future__ import annotations

import torch
from torch import Tensor


def _penalise_repeats(
    scores: Tensor, hist: Tensor, start: Tensor, penalty: float, offset: Tensor | None
) -> tuple[Tensor, Tensor]:
    """CTRL repetition penalty on every token of ``hist`` (R, L) from column ``start`` (R,)
    on (before it: left padding, or padding and prompt)."""
    R, L = hist.shape
    rows = torch.arange(R, device=hist.device)[:, None].expand(R, L)
    real = torch.arange(L, device=hist.device)[None, :] >= start[:, None]  # (R, L)
    rows, toks = rows[real], hist[real]  # (n,) each; repeats write the same value
    shift = 0.0 if offset is None else offset[rows]
    vals = scores[rows, toks] - shift
    scores[rows, toks] = torch.where(vals < 0, vals * penalty, vals / penalty) + shift
    return rows, toks


def _ban_repeated_ngrams(scores: Tensor, hist: Tensor, start: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Set to -inf every token that would complete an n-gram already in ``hist`` (R, L) at or
    after column ``start`` (R,) (before it: left padding, or padding and prompt).

    The last n - 1 tokens are matched against the first n - 1 of every n-gram window in
    one tensor comparison (R, W, n - 1); a matching window bans its last token.
    """
    R, L = hist.shape
    if L < n:
        return hist.new_zeros(0), hist.new_zeros(0)
    windows = hist.unfold(1, n, 1)  # (R, W = L - n + 1, n)
    match = (windows[:, :, :-1] == hist[:, L - n + 1 :][:, None, :]).all(-1)  # (R, W)
    match &= torch.arange(L - n + 1, device=hist.device)[None, :] >= start[:, None]  # window all looked at
    r, w = match.nonzero(as_tuple=True)
    banned = windows[r, w, -1]
    scores[r, banned] = float("-inf")
    return r, banned


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
