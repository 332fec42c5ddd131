"""Decoding for GPT-2: beam search and greedy, batched, with a KV cache.

Prompts are decoded together: left-padded to the longest, with a padding mask and
matching position ids, so each step feeds one new token per row. Beam search flattens
beams into the batch (row ``b * num_beams + j`` is beam j of prompt b) and reorders the
KV cache after each step; the prompt is run once per prompt (not per beam) and the
first reorder expands its cache to the beams. ``model`` is a whole ``GPT2`` or a list
of parts (``split_model``'s client then server), chained, each with its own cache.

Semantics are those of transformers ``generate`` (5.x; tests/test_generate.py compares):
- hypothesis score = sum of log-probs / L ** length_penalty, L = generated tokens
  including the stop token (the prompt does not count);
- each step ranks the best (1 + max(1, n_stop)) * num_beams candidates of a prompt; those
  among the num_beams best that end in a stop token become finished hypotheses (a prompt
  keeps its num_beams best), the num_beams best others keep running; at max_new_tokens
  every candidate counts as finished;
- early_stopping False (transformers' default): a prompt is done once it holds num_beams
  finished hypotheses and its best running beam, scored at the current length, cannot
  beat the worst of them; True: done at num_beams finished hypotheses; "never": as
  False, but a positive length penalty scores the running beam at max_new_tokens;
- no-repeat-ngram bans any token that would complete an n-gram already in the sequence;
  repetition penalty (CTRL) multiplies a score < 0 by the penalty and divides a score >= 0
  by it, for every token already in the sequence. "The sequence" is ``repeat_scope``:
  ``"sequence"`` = prompt included (transformers), ``"generated"`` = the generated tokens
  only (the default: the E2E recipe's reference decoder, microsoft/LoRA ``gpt2_beam.py``,
  keeps only generated tokens in the history it bans from; with the prompt included, a
  4-gram ban forbids copying any MR value of 4 or more BPE tokens, e.g. "Raja Indian
  Cuisine"). Like transformers, beam search applies both to log-probs, greedy to logits.

Unlike transformers: a prompt whose result can no longer change leaves the batch at
once (transformers computes it until the whole batch is done), left padding never counts
as a previous token (transformers counts it in the n-gram ban), and the prompt forward
runs on one row per prompt instead of num_beams. Other savings per step: only the last
position reaches the LM head; log-probs come from a row log-sum-exp, not a (R, V)
log_softmax; candidates from a grouped per-row top-k, not one top-k over beams x vocab;
the KV cache lives in preallocated buffers (see _BeamKVCache).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .decode_ops import (  # noqa: F401 - _group_max/_refresh_group_max re-exported for tests
    _ban_repeated_ngrams,
    _group_max,
    _logsumexp,
    _penalise_repeats,
    _refresh_group_max,
    _topk_rows,
)
from .gpt2 import KVCache, position_ids_from_mask

__all__ = ["DecodeConfig", "beam_search", "greedy"]

# Score given to the not-yet-filled finished-hypothesis slots (as transformers does), so
# that any real hypothesis displaces them and "all slots finished" can be tracked.
_EMPTY_SLOT = -1.0e9


REPEAT_SCOPES = ("generated", "sequence")


@dataclass
class DecodeConfig:
    """Beam-search settings; the defaults are the E2E recipe (REFERENCE.md §2).

    Hypothesis score = sum of log-probs / L ** length_penalty, L = generated tokens
    including the stop token (transformers' convention). ``early_stopping``: False
    (transformers' default), True or "never" (see the module docstring).
    """

    num_beams: int = 10
    length_penalty: float = 0.8
    no_repeat_ngram_size: int = 4  # 0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    stop_tokens: tuple[int, ...] = (50256, 628)
    max_new_tokens: int = 64
    early_stopping: bool | str = False
    repeat_scope: str = "generated"  # what the n-gram ban / repetition penalty see: generated | sequence

    def __post_init__(self) -> None:
        def bad(name: str, what: str) -> ValueError:
            return ValueError(f"DecodeConfig.{name} must be {what}, got {getattr(self, name)!r}")

        for name, low in (("num_beams", 1), ("max_new_tokens", 1), ("no_repeat_ngram_size", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"an int >= {low}")
        for name in ("length_penalty", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) < float("inf"):
                raise bad(name, "a finite number")
            setattr(self, name, float(value))
        if not self.repetition_penalty > 0:
            raise bad("repetition_penalty", "> 0")
        if isinstance(self.stop_tokens, int) and not isinstance(self.stop_tokens, bool):
            self.stop_tokens = (self.stop_tokens,)
        stops = self.stop_tokens
        if isinstance(stops, (str, bytes)) or not isinstance(stops, Sequence):
            raise bad("stop_tokens", "a sequence of token ids")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in stops):
            raise bad("stop_tokens", "non-negative ints")
        self.stop_tokens = tuple(dict.fromkeys(stops))  # de-duplicated, order kept
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise bad("early_stopping", "False, True or 'never'")
        if self.repeat_scope not in REPEAT_SCOPES:
            raise bad("repeat_scope", " or ".join(repr(x) for x in REPEAT_SCOPES))


Decodable = nn.Module | Sequence[nn.Module]


def beam_search(
    model: Decodable,
    prompts: Sequence[Sequence[int]],
    cfg: DecodeConfig | None = None,
    *,
    keep_stop_token: bool = False,
) -> list[list[int]]:
    """Best beam-search continuation of each prompt (the prompt itself not included).

    model: a ``GPT2``, or its parts in order (e.g. ``[client, server]``), each called as
        ``part(x, position_ids=, attn_mask=, kv_cache=)``; the last must return logits.
    prompts: token ids, each non-empty; decoded together in one batch.
    keep_stop_token: keep the stop token that ended a hypothesis (default: strip it). A
        continuation without one reached ``max_new_tokens``.
    """
    cfg = DecodeConfig() if cfg is None else cfg
    with _Stepper(model, prompts, cfg.max_new_tokens, cfg.num_beams) as step:
        return _beam_search(step, cfg, keep_stop_token) if prompts else []


def greedy(
    model: Decodable,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    stop_tokens: Sequence[int] = (50256, 628),
    *,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    repeat_scope: str = "generated",
    keep_stop_token: bool = False,
) -> list[list[int]]:
    """Greedy continuation of each prompt; arguments as for ``beam_search``."""
    cfg = DecodeConfig(
        num_beams=1,
        no_repeat_ngram_size=no_repeat_ngram_size,
        repetition_penalty=repetition_penalty,
        repeat_scope=repeat_scope,
        stop_tokens=tuple(stop_tokens),
        max_new_tokens=max_new_tokens,
    )
    with _Stepper(model, prompts, cfg.max_new_tokens, 1) as step:
        return _greedy(step, cfg, keep_stop_token) if prompts else []


# --- the model side: parts, caches, padding ------------------------------------------------


class _BeamKVCache(KVCache):
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


class _Stepper:
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
        self.caches = [_BeamKVCache(len(prompts) * beams, capacity) for _ in self.parts]
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Stepper:
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


def _strip(tokens: list[int], stops: tuple[int, ...], keep_stop: bool) -> list[int]:
    return tokens if keep_stop or not tokens or tokens[-1] not in stops else tokens[:-1]


# --- the search --------------------------------------------------------------------------


def _greedy(step: _Stepper, cfg: DecodeConfig, keep_stop: bool) -> list[list[int]]:
    logits = step.prefill()  # (B, V)
    B = logits.shape[0]
    stops = torch.tensor(cfg.stop_tokens, dtype=torch.long, device=logits.device)
    out: list[list[int]] = [[] for _ in range(B)]
    prompt_of_row = list(range(B))  # rows leave the batch as their prompt finishes
    for t in range(cfg.max_new_tokens):
        step.penalise(logits, cfg)
        tok = logits.argmax(-1)  # (R,)
        finished = torch.isin(tok, stops)
        for row, token in enumerate(tok.tolist()):
            out[prompt_of_row[row]].append(token)
        if t + 1 == cfg.max_new_tokens or bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)  # (R_new,)
            prompt_of_row = [prompt_of_row[r] for r in keep.tolist()]
            logits = step.step(keep, tok.index_select(0, keep))
        else:
            logits = step.step(None, tok)
    return [_strip(o, cfg.stop_tokens, keep_stop) for o in out]


def _beam_search(step: _Stepper, cfg: DecodeConfig, keep_stop: bool) -> list[list[int]]:
    """Beam search over A active prompts x N beams; finished prompts leave the batch."""
    N, M, lp = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    logits = step.prefill()  # (B, V): one row per prompt before the first step
    B, V = logits.shape
    dev = logits.device
    stops = torch.tensor(cfg.stop_tokens, dtype=torch.long, device=dev)
    K = min((1 + max(1, len(cfg.stop_tokens))) * N, N * V)  # candidates kept per prompt and step
    Kr = min(K, V)  # candidates kept per beam (row) in the first selection
    scratch = logits.new_empty(B * N * V)  # for _logsumexp, reused every step
    prompt_of = torch.arange(B, device=dev)  # (A,) original index of each active prompt
    # Running beams: summed log-probs (A, N) and generated tokens (A, N, t). All beams start
    # as copies of the prompt; only beam 0 may be extended at first, so the copies don't
    # yield N identical candidates.
    run_score = torch.full((B, N), _EMPTY_SLOT, device=dev)
    run_score[:, 0] = 0.0
    run_tok = torch.zeros(B, N, 0, dtype=torch.long, device=dev)
    # Finished hypotheses, best first: score (A, N), whether the slot is filled (A, N),
    # tokens (A, N, M) padded with -1, length (A, N).
    fin_score = torch.full((B, N), _EMPTY_SLOT, device=dev)
    fin_full = torch.zeros(B, N, dtype=torch.bool, device=dev)
    fin_tok = torch.full((B, N, M), -1, dtype=torch.long, device=dev)
    fin_len = torch.zeros(B, N, dtype=torch.long, device=dev)
    results: list[list[int]] = [[] for _ in range(B)]
    for t in range(M):
        A, n_gen = run_score.shape[0], t + 1  # n_gen: tokens per hypothesis after this step
        # Log-probs are logits - lse; penalties act on log-probs (as in transformers' beam
        # search) and keep that offset, so ranking the penalised logits ranks log-probs.
        gmax = _group_max(logits, Kr)  # (R, C) or None; R = A before the first step, else A * N
        lse = _logsumexp(logits, scratch, gmax)  # (R,)
        rows, cols = step.penalise(logits, cfg, offset=lse)
        if gmax is not None and len(rows):
            _refresh_group_max(gmax, logits, rows, cols)
        # A prompt's K best of its N x V candidates are among the K best of each beam, so
        # select per row first (far cheaper than one top-k over N x V), then across beams.
        row_score, row_tok = _topk_rows(logits, Kr, gmax)  # (R, Kr)
        row_score = row_score - lse[:, None]  # log-probs
        # Before the first step the cache holds one row per prompt: broadcast it to N beams.
        row_score, row_tok = row_score.view(A, -1, Kr), row_tok.view(A, -1, Kr).expand(A, N, Kr)
        total = (row_score + run_score[:, :, None]).flatten(1)  # (A, N * Kr), column = beam * Kr + rank
        cand_score, cand = total.topk(K, dim=1)  # (A, K), best first
        cand_beam, cand_tok = cand // Kr, row_tok.flatten(1).gather(1, cand)  # (A, K)
        stopped = torch.isin(cand_tok, stops) if n_gen < M else torch.ones_like(cand_tok, dtype=torch.bool)

        # Candidates that stopped and rank among the N best become finished hypotheses.
        new_fin = stopped[:, :N]
        if cfg.early_stopping is True:
            new_fin = new_fin & ~fin_full.all(1, keepdim=True)  # a full prompt takes no more
        if bool(new_fin.any()):
            score = (cand_score[:, :N] / n_gen**lp).masked_fill(~new_fin, float("-inf"))  # (A, N)
            seq = torch.cat([run_tok.gather(1, cand_beam[:, :N, None].expand(A, N, t)), cand_tok[:, :N, None]], 2)
            seq = torch.cat([seq, seq.new_full((A, N, M - n_gen), -1)], dim=2)  # (A, N, M)
            best = torch.cat([fin_score, score], 1).topk(N, dim=1).indices  # (A, N) of 2N
            fin_score = torch.cat([fin_score, score], 1).gather(1, best)
            fin_full = torch.cat([fin_full, new_fin], 1).gather(1, best)
            fin_tok = torch.cat([fin_tok, seq], 1).gather(1, best[:, :, None].expand(A, N, M))
            fin_len = torch.cat([fin_len, torch.full_like(fin_len, n_gen)], 1).gather(1, best)

        # The N best candidates that did not stop keep running.
        keep_score, keep = cand_score.masked_fill(stopped, float("-inf")).topk(N, dim=1)  # (A, N)
        src_beam, new_tok = cand_beam.gather(1, keep), cand_tok.gather(1, keep)  # (A, N)

        # A prompt is done when its result can no longer change (see the module docstring).
        hyp_len = M if cfg.early_stopping == "never" and lp > 0 else n_gen
        worst = torch.where(fin_full, fin_score.min(1, keepdim=True).values, _EMPTY_SLOT)  # (A, N)
        done = ~(keep_score[:, :1] / hyp_len**lp > worst).any(1)  # (A,)
        if cfg.early_stopping is True:
            done |= fin_full.all(1)
        if n_gen == M:
            done[:] = True
        for a in done.nonzero().squeeze(1).tolist():
            tokens = fin_tok[a, 0, : int(fin_len[a, 0])].tolist()
            results[int(prompt_of[a])] = _strip(tokens, cfg.stop_tokens, keep_stop)
        if bool(done.all()):
            break

        live = (~done).nonzero().squeeze(1)  # (A_new,)
        # Cache row each surviving beam continues from; before the first step, the prompt's.
        src_row = live[:, None] if t == 0 else live[:, None] * N + src_beam[live]  # (A_new, N)
        kept = run_tok[live].gather(1, src_beam[live, :, None].expand(-1, N, t))  # (A_new, N, t)
        run_tok = torch.cat([kept, new_tok[live, :, None]], dim=2)
        run_score, prompt_of = keep_score[live], prompt_of[live]
        fin_score, fin_full, fin_tok, fin_len = fin_score[live], fin_full[live], fin_tok[live], fin_len[live]
        logits = step.step(src_row.expand(-1, N).reshape(-1), new_tok[live].reshape(-1))  # (A_new * N, V)
    return results
