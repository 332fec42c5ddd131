"""The model side of decoding: the chain of stages, their KV caches, the padded batch.

``DecodeChain`` runs a whole ``GPT2`` or its parts (client then server) one after another as
stages, each with its own preallocated ``BeamKVCache``, over left-padded prompts, and turns
each step's logits into the candidates the search needs (``Selection``); ``models.generate``
drives it with its greedy and beam-search loops.

A stage is a ``PartStage`` (a part in this process) or any ``Stage``: split inference
(``runtime/split/inference.py``) puts the server's part behind one, whose cache lives on the
server. Every stage gets, per step, the new positions' inputs and the rows that survive
(``StepInput``); the last stage may select the candidates itself (``Stage.selects``: the
vanilla split's server, which holds the head), given the history's ``Penalties``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .decode_ops import Penalties, Selection, penalty_pairs
from .gpt2 import KVCache, position_ids_from_mask

if TYPE_CHECKING:
    from .generate import DecodeConfig



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


@dataclass
class StepInput:
    """What every stage gets for one forward: ``x`` the new positions' inputs (token ids (R, T),
    or hidden states (R, T, C) after the first stage); ``position_ids`` (R, T) or None;
    ``mask`` (R, L) the padding mask over every position so far (None while nothing is padded);
    ``pad`` (R,) padding per row (``mask`` is ``arange(L) >= pad``); ``rows`` (R,) the rows of
    the previous step that survive, in order (None: all, as they are) — reorder the cache first."""

    x: Tensor
    position_ids: Tensor | None
    mask: Tensor | None
    pad: Tensor
    rows: Tensor | None


class Stage:
    """One link of a ``DecodeChain``. ``open`` once before the prompts, ``__call__`` per forward,
    ``close`` at the end (also on error). A stage with ``selects`` True is last and returns the
    candidates (as ``Selection`` does) instead of logits."""

    selects = False

    def open(self, max_rows: int, capacity: int, last: bool, selection: Selection) -> None:
        pass

    def __call__(self, inp: StepInput, pen: Penalties | None = None) -> Tensor | tuple[Tensor | None, Tensor]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class PartStage(Stage):
    """A model part in this process with its own ``BeamKVCache``; ``kwargs`` go to every call
    (e.g. ``first_block``). As the last stage, only the last position reaches its LM head."""

    def __init__(self, part: nn.Module, **kwargs: object) -> None:
        self.part, self.kwargs = part, kwargs
        self.cache: BeamKVCache | None = None
        self.last = False

    def open(self, max_rows: int, capacity: int, last: bool, selection: Selection) -> None:
        self.cache, self.last = BeamKVCache(max_rows, capacity), last

    def __call__(self, inp: StepInput, pen: Penalties | None = None) -> Tensor:
        if inp.rows is not None:
            self.cache.reorder(inp.rows)
        head = getattr(self.part, "lm_head", None) if self.last else None
        # Only the last position's logits are needed: slice the head's input (R, T, C) to
        # (R, 1, C) so the prompt forward does not compute T x V logits. Hooked per call, so a
        # part shared by several chains (a server's) is never left hooked.
        handle = head.register_forward_pre_hook(lambda _m, args: (args[0][:, -1:], *args[1:])) \
            if isinstance(head, nn.Module) else None
        try:
            return self.part(inp.x, position_ids=inp.position_ids, attn_mask=inp.mask, kv_cache=self.cache,
                             **self.kwargs)
        finally:
            if handle is not None:
                handle.remove()


Decodable = nn.Module | Stage | Sequence[nn.Module | Stage]


def padding_mask(pad: Tensor, length: int) -> Tensor:
    """The padding mask (R, length) of left-padded rows with ``pad`` (R,) padding each."""
    return torch.arange(length, device=pad.device)[None, :] >= pad[:, None]


class DecodeChain:
    """Runs the stages in a chain over a left-padded batch; each forward ends in candidates.

    Holds, per batch row: ``hist`` (R, L) every token fed so far (prompt, left padding,
    generated), ``pad`` (R,) how many of them are padding, ``mask`` (R, L) the padding mask,
    or None while no row is padded (the model's unmasked fast path). ``prefill`` and ``step``
    return what ``selection`` makes of the new logits, after the history's penalties.
    """

    def __init__(self, model: Decodable, prompts: Sequence[Sequence[int]], max_new_tokens: int, beams: int,
                 cfg: DecodeConfig, selection: Selection) -> None:
        parts = [model] if isinstance(model, (nn.Module, Stage)) else list(model)
        if not parts or not all(isinstance(p, (nn.Module, Stage)) for p in parts):
            raise ValueError("model must be an nn.Module or a non-empty sequence of nn.Modules (or decoding Stages)")
        if any(p.selects for p in parts[:-1] if isinstance(p, Stage)):
            raise ValueError("only the last stage of a chain may select the candidates")
        first = parts[0] if isinstance(parts[0], nn.Module) else getattr(parts[0], "part", None)
        self.config = getattr(first, "config", None)
        lengths = [len(p) for p in prompts]
        if any(n == 0 for n in lengths):
            raise ValueError("every prompt needs at least one token")
        n_pos = getattr(self.config, "n_positions", None)
        # The last generated token is never fed back, hence the - 1.
        if prompts and n_pos is not None and max(lengths) + max_new_tokens - 1 > n_pos:
            raise ValueError(
                f"longest prompt ({max(lengths)}) + max_new_tokens ({max_new_tokens}) - 1 exceeds n_positions={n_pos}"
            )
        self.prompts, self.cfg, self.selection = prompts, cfg, selection
        self.modules = [p for p in parts if isinstance(p, nn.Module)]
        self.stages = [p if isinstance(p, Stage) else PartStage(p) for p in parts]
        # Every token fed is a prompt token or one of the first max_new_tokens - 1 generated.
        self.capacity = max(lengths, default=0) + max_new_tokens - 1
        self.max_rows = len(prompts) * beams
        self._stack = contextlib.ExitStack()

    @property
    def vocab_size(self) -> int:
        """V of the logits (the first part's, which holds the token embedding)."""
        if self.config is None:
            raise ValueError("the chain's first part has no config: cannot tell the vocabulary size")
        return self.config.vocab_size

    def __enter__(self) -> DecodeChain:
        self._stack.enter_context(torch.inference_mode())
        # eval() every local part; afterwards every submodule gets its own training flag back.
        flags = [(m, m.training) for part in self.modules for m in part.modules()]
        self._stack.callback(lambda: [setattr(m, "training", training) for m, training in flags])
        for part in self.modules:
            part.eval()
        for i, stage in enumerate(self.stages):
            self._stack.callback(stage.close)
            stage.open(self.max_rows, self.capacity, i == len(self.stages) - 1, self.selection)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def prefill(self) -> tuple[Tensor | None, Tensor]:
        """Run the left-padded prompts; return the candidates of the last position (B rows)."""
        device = next(self.modules[0].parameters()).device if self.modules else torch.device("cpu")
        T = max(len(p) for p in self.prompts)
        rows = [[0] * (T - len(p)) + [int(t) for t in p] for p in self.prompts]
        self.hist = torch.tensor(rows, device=device)  # (B, T), left-padded with 0
        self.pad = torch.tensor([T - len(p) for p in self.prompts], device=device)  # (B,)
        self.prompt_width = T  # generated tokens start at this column of hist, in every row
        self.mask = padding_mask(self.pad, T) if int(self.pad.max()) > 0 else None  # (B, T)
        return self._forward(self.hist, None)

    def step(self, rows: Tensor | None, tokens: Tensor) -> tuple[Tensor | None, Tensor]:
        """Keep batch rows ``rows`` (R_new,), in that order (None: all, as they are), append
        ``tokens`` (R_new,) and run them; return the new candidates (R_new rows)."""
        if rows is not None:
            self.hist, self.pad = self.hist.index_select(0, rows), self.pad.index_select(0, rows)
            self.mask = None if self.mask is None else self.mask.index_select(0, rows)
        self.hist = torch.cat([self.hist, tokens[:, None]], dim=1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        return self._forward(tokens[:, None], rows)

    def penalties(self) -> Penalties:
        """The history's penalties (``repeat_scope``: from the first real token, or after the prompt)."""
        start = self.pad if self.cfg.repeat_scope == "sequence" else torch.full_like(self.pad, self.prompt_width)
        return penalty_pairs(self.hist, start, self.cfg.repetition_penalty, self.cfg.no_repeat_ngram_size)

    def _forward(self, x: Tensor, rows: Tensor | None) -> tuple[Tensor | None, Tensor]:
        past = self.hist.shape[1] - x.shape[1]
        pos = None if self.mask is None else position_ids_from_mask(self.mask, past)  # (R, T)
        inp = StepInput(x, pos, self.mask, self.pad, rows)
        pen = self.penalties()
        for stage in self.stages[:-1]:
            inp.x = stage(inp)
        last = self.stages[-1]
        if last.selects:
            return last(inp, pen)
        return self.selection(last(inp)[:, -1].float(), pen)  # logits (R, V)
