"""The model side of decoding: the chain of parts, their KV caches, the padded batch.

``DecodeChain`` runs a whole ``GPT2`` or its parts (client then server) one after another,
each with its own preallocated ``BeamKVCache``, over left-padded prompts; ``models.generate``
drives it with its greedy and beam-search loops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .decode_ops import _ban_repeated_ngrams, _penalise_repeats
from .gpt2 import KVCache, position_ids_from_mask

if TYPE_CHECKING:
    from .generate import DecodeConfig

Decodable = nn.Module | Sequence[nn.Module]


class BeamKVCache(KVCache):
    """A ``KVCache`` in preallocated buffers, for decoding.

    ``KVCache`` grows by ``torch.cat`` and reorders with ``index_select`` into fresh
    tensors: two full copies per step, each a fresh allocation (page faults on CPU), a
    large part of a CPU decoding step for GPT-2 small. Here each k or v of a block lives in
    a (max_rows, nh, capacity, hs) buffer and attention reads the filled (R, nh, T, hs)
    part as a view (each head's keys stay contiguous, which SDPA needs to be fast).
    Appending writes one slice; ``reorder`` copies the filled part once into a spare
    buffer, which takes the old buffer's place (the old one becomes the spare).
    """

    def __init__(self, max_rows: int, capacity: int) -> None:
        super().__init__()
        self.max_rows, self.capacity = max_rows, capacity
        self.buffers: dict[str, list[Tensor]] = {}  # block name -> [k, v], (max_rows, nh, capacity, hs) each
        self.spare: Tensor | None = None
        self.rows = 0

    def update(self, name: str, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        R, nh, T, hs = k.shape
        L = self.length
        if (name in self.buffers) != (L > 0):
            raise ValueError(f"KVCache block {name!r} does not match cache.length {L}; use one KVCache per part")
        if name not in self.buffers:
            self.buffers[name] = [x.new_empty(self.max_rows, nh, self.capacity, hs) for x in (k, v)]
        self.rows = R
        for buf, new in zip(self.buffers[name], (k, v)):
            buf[:R, :, L : L + T].copy_(new)
        self.layers[name] = tuple(buf[:R, :, : L + T] for buf in self.buffers[name])  # (R, nh, L + T, hs) views
        return self.layers[name]

    def reorder(self, index: Tensor) -> None:
        L, R = self.length, len(index)
        for name, bufs in self.buffers.items():
            for i, buf in enumerate(bufs):
                spare = self.spare if self.spare is not None and self.spare.shape == buf.shape else None
                spare = torch.empty_like(buf) if spare is None else spare
                torch.index_select(buf[: self.rows, :, :L], 0, index, out=spare[:R, :, :L])  # in place, no alloc
                bufs[i], self.spare = spare, buf
            self.layers[name] = tuple(buf[:R, :, :L] for buf in bufs)
        self.rows = R


class DecodeChain:
    """Runs the model parts in a chain, each with its own KVCache, over a left-padded batch.

    Holds, per batch row: ``hist`` (R, L) every token fed so far (prompt, left padding,
    generated), ``pad`` (R,) how many of them are padding, ``mask`` (R, L) the padding
    mask, or None while no row is padded (the model's unmasked fast path).
    """

    def __init__(self, model: Decodable, prompts: Sequence[Sequence[int]], max_new_tokens: int, beams: int) -> None:
        self.parts = [model] if isinstance(model, nn.Module) else list(model)
        if not self.parts or not all(isinstance(p, nn.Module) for p in self.parts):
            raise ValueError("model must be an nn.Module or a non-empty sequence of nn.Modules")
        lengths = [len(p) for p in prompts]
        if any(n == 0 for n in lengths):
            raise ValueError("every prompt needs at least one token")
        n_pos = getattr(getattr(self.parts[0], "config", None), "n_positions", None)
        # The last generated token is never fed back, hence the - 1.
        if prompts and n_pos is not None and max(lengths) + max_new_tokens - 1 > n_pos:
            raise ValueError(
                f"longest prompt ({max(lengths)}) + max_new_tokens ({max_new_tokens}) - 1 exceeds n_positions={n_pos}"
            )
        self.prompts = prompts
        # Every token fed is a prompt token or one of the first max_new_tokens - 1 generated.
        capacity = max(lengths, default=0) + max_new_tokens - 1
        self.caches = [BeamKVCache(len(prompts) * beams, capacity) for _ in self.parts]
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> DecodeChain:
        self._stack.enter_context(torch.inference_mode())
        # eval() every part; afterwards every submodule gets its own training flag back.
        flags = [(m, m.training) for part in self.parts for m in part.modules()]
        self._stack.callback(lambda: [setattr(m, "training", training) for m, training in flags])
        for part in self.parts:
            part.eval()
        head = getattr(self.parts[-1], "lm_head", None)
        if isinstance(head, nn.Module):
            # Only the last position's logits are needed: slice the head's input (R, T, C)
            # to (R, 1, C) so the prompt forward does not compute T x V logits.
            handle = head.register_forward_pre_hook(lambda _m, args: (args[0][:, -1:], *args[1:]))
            self._stack.callback(handle.remove)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def prefill(self) -> Tensor:
        """Run the left-padded prompts; return last-position logits (B, V) as float32."""
        device = next(self.parts[0].parameters()).device
        T = max(len(p) for p in self.prompts)
        rows = [[0] * (T - len(p)) + [int(t) for t in p] for p in self.prompts]
        self.hist = torch.tensor(rows, device=device)  # (B, T), left-padded with 0
        self.pad = torch.tensor([T - len(p) for p in self.prompts], device=device)  # (B,)
        self.prompt_width = T  # generated tokens start at this column of hist, in every row
        has_pad = int(self.pad.max()) > 0
        self.mask = torch.arange(T, device=device)[None, :] >= self.pad[:, None] if has_pad else None  # (B, T)
        return self._forward(self.hist)

    def step(self, rows: Tensor | None, tokens: Tensor) -> Tensor:
        """Keep batch rows ``rows`` (R_new,), in that order (None: all, as they are), append
        ``tokens`` (R_new,) and run them; return the new last-position logits (R_new, V)."""
        if rows is not None:
            for cache in self.caches:
                cache.reorder(rows)
            self.hist, self.pad = self.hist.index_select(0, rows), self.pad.index_select(0, rows)
            self.mask = None if self.mask is None else self.mask.index_select(0, rows)
        self.hist = torch.cat([self.hist, tokens[:, None]], dim=1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        return self._forward(tokens[:, None])

    def _forward(self, x: Tensor) -> Tensor:
        past = self.caches[0].length
        pos = None if self.mask is None else position_ids_from_mask(self.mask, past)  # (R, T)
        for part, cache in zip(self.parts, self.caches):
            x = part(x, position_ids=pos, attn_mask=self.mask, kv_cache=cache)
        return x[:, -1].float()  # (R, V)

    def penalise(self, scores: Tensor, cfg: DecodeConfig, offset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Apply repetition penalty and no-repeat-ngram bans to ``scores`` (R, V) in place;
        return the (rows, columns) changed, (n,) each, possibly repeated.

        With ``offset`` (R,), the penalty acts on ``scores - offset`` (log-probs, when
        ``scores`` are logits and ``offset`` their log-sum-exp).
        """
        none = self.hist.new_zeros(0)
        # First column each row's penalties look at (R,): after the padding, or after the prompt.
        start = self.pad if cfg.repeat_scope == "sequence" else torch.full_like(self.pad, self.prompt_width)
        rep = none, none
        if cfg.repetition_penalty != 1.0:
            rep = _penalise_repeats(scores, self.hist, start, cfg.repetition_penalty, offset)
        ban = none, none
        if cfg.no_repeat_ngram_size > 0:
            ban = _ban_repeated_ngrams(scores, self.hist, start, cfg.no_repeat_ngram_size)
        return torch.cat([rep[0], ban[0]]), torch.cat([rep[1], ban[1]])
