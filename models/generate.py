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
the KV cache lives in preallocated buffers (see models/decode_chain.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .decode_chain import Decodable, DecodeChain
from .decode_ops import (  # noqa: F401 - _group_max/_refresh_group_max/_topk_rows re-exported for tests
    Selection,
    _group_max,
    _refresh_group_max,
    _topk_rows,
)

__all__ = ["DecodeConfig", "beam_search", "greedy"]

# Score given to the not-yet-filled finished-hypothesis slots (as transformers does), so
# that any real hypothesis displaces them and "all slots finished" can be tracked.
_EMPTY_SLOT = -1.0e9


REPEAT_SCOPES = ("generated", "sequence")


@dataclass
class DecodeConfig:
    """Beam-search settings; the defaults are the E2E recipe (microsoft/LoRA examples/NLG).

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
    if not prompts:
        return []
    chain = DecodeChain(model, prompts, cfg.max_new_tokens, cfg.num_beams, cfg, Selection())
    # Candidates kept per prompt and step (K), and per beam in the first selection (Kr).
    K = min((1 + max(1, len(cfg.stop_tokens))) * cfg.num_beams, cfg.num_beams * chain.vocab_size)
    chain.selection = Selection(k=min(K, chain.vocab_size), repetition_penalty=cfg.repetition_penalty)
    with chain as step:
        return _beam_search(step, cfg, keep_stop_token, K)


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
    if not prompts:
        return []
    with DecodeChain(model, prompts, cfg.max_new_tokens, 1, cfg,
                     Selection(k=0, repetition_penalty=cfg.repetition_penalty)) as step:
        return _greedy(step, cfg, keep_stop_token)


def _strip(tokens: list[int], stops: tuple[int, ...], keep_stop: bool) -> list[int]:
    return tokens if keep_stop or not tokens or tokens[-1] not in stops else tokens[:-1]


# --- the search --------------------------------------------------------------------------


def _greedy(step: DecodeChain, cfg: DecodeConfig, keep_stop: bool) -> list[list[int]]:
    _, tok = step.prefill()  # (B,): the argmax of the penalised logits
    B = tok.shape[0]
    stops = torch.tensor(cfg.stop_tokens, dtype=torch.long, device=tok.device)
    out: list[list[int]] = [[] for _ in range(B)]
    prompt_of_row = list(range(B))  # rows leave the batch as their prompt finishes
    for t in range(cfg.max_new_tokens):
        finished = torch.isin(tok, stops)
        for row, token in enumerate(tok.tolist()):
            out[prompt_of_row[row]].append(token)
        if t + 1 == cfg.max_new_tokens or bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)  # (R_new,)
            prompt_of_row = [prompt_of_row[r] for r in keep.tolist()]
            _, tok = step.step(keep, tok.index_select(0, keep))
        else:
            _, tok = step.step(None, tok)
    return [_strip(o, cfg.stop_tokens, keep_stop) for o in out]


class _Finished:
    """A prompt's finished hypotheses, best first, for A active prompts x N slots.

    ``score`` (A, N) (``_EMPTY_SLOT`` where unfilled), ``full`` (A, N) whether the slot is
    filled, ``tokens`` (A, N, M) padded with -1, ``length`` (A, N).
    """

    def __init__(self, prompts: int, beams: int, max_new: int, device: torch.device) -> None:
        A, N, M = prompts, beams, max_new
        self.score = torch.full((A, N), _EMPTY_SLOT, device=device)
        self.full = torch.zeros(A, N, dtype=torch.bool, device=device)
        self.tokens = torch.full((A, N, M), -1, dtype=torch.long, device=device)
        self.length = torch.zeros(A, N, dtype=torch.long, device=device)

    def add(self, score: torch.Tensor, new: torch.Tensor, seq: torch.Tensor) -> None:
        """Merge candidates (A, N) whose ``new`` is set: scores (A, N), tokens ``seq`` (A, N, n)."""
        A, N, M = self.tokens.shape
        n_gen = seq.shape[2]
        score = score.masked_fill(~new, float("-inf"))
        seq = torch.cat([seq, seq.new_full((A, N, M - n_gen), -1)], dim=2)  # (A, N, M)
        best = torch.cat([self.score, score], 1).topk(N, dim=1).indices  # (A, N) of 2N
        self.score = torch.cat([self.score, score], 1).gather(1, best)
        self.full = torch.cat([self.full, new], 1).gather(1, best)
        self.tokens = torch.cat([self.tokens, seq], 1).gather(1, best[:, :, None].expand(A, N, M))
        self.length = torch.cat([self.length, torch.full_like(self.length, n_gen)], 1).gather(1, best)

    def worst(self) -> torch.Tensor:
        """(A, N): each prompt's worst finished score where the slot is filled, else ``_EMPTY_SLOT``."""
        return torch.where(self.full, self.score.min(1, keepdim=True).values, _EMPTY_SLOT)

    def best(self, a: int) -> list[int]:
        """Tokens of active prompt a's best finished hypothesis."""
        return self.tokens[a, 0, : int(self.length[a, 0])].tolist()

    def keep(self, live: torch.Tensor) -> None:
        """Keep the active prompts ``live`` (A_new,) only."""
        self.score, self.full = self.score[live], self.full[live]
        self.tokens, self.length = self.tokens[live], self.length[live]


def _beam_search(step: DecodeChain, cfg: DecodeConfig, keep_stop: bool, K: int) -> list[list[int]]:
    """Beam search over A active prompts x N beams, K candidates per prompt and step; finished
    prompts leave the batch."""
    N, M, lp = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    # Each row's Kr best penalised log-probs and tokens (R, Kr): one row per prompt before the
    # first step. A prompt's K best of its N x V candidates are among the K best of each beam,
    # so the chain selects per row (far cheaper than one top-k over N x V), the search across beams.
    row_score, row_tok = step.prefill()
    B, Kr = row_score.shape
    dev = row_score.device
    stops = torch.tensor(cfg.stop_tokens, dtype=torch.long, device=dev)
    prompt_of = torch.arange(B, device=dev)  # (A,) original index of each active prompt
    # Running beams: summed log-probs (A, N) and generated tokens (A, N, t). All beams start
    # as copies of the prompt; only beam 0 may be extended at first, so the copies don't
    # yield N identical candidates.
    run_score = torch.full((B, N), _EMPTY_SLOT, device=dev)
    run_score[:, 0] = 0.0
    run_tok = torch.zeros(B, N, 0, dtype=torch.long, device=dev)
    fin = _Finished(B, N, M, dev)
    results: list[list[int]] = [[] for _ in range(B)]
    for t in range(M):
        A, n_gen = run_score.shape[0], t + 1  # n_gen: tokens per hypothesis after this step
        # Before the first step the cache holds one row per prompt: broadcast it to N beams.
        row_score, row_tok = row_score.view(A, -1, Kr), row_tok.view(A, -1, Kr).expand(A, N, Kr)
        total = (row_score + run_score[:, :, None]).flatten(1)  # (A, N * Kr), column = beam * Kr + rank
        cand_score, cand = total.topk(K, dim=1)  # (A, K), best first
        cand_beam, cand_tok = cand // Kr, row_tok.flatten(1).gather(1, cand)  # (A, K)
        stopped = torch.isin(cand_tok, stops) if n_gen < M else torch.ones_like(cand_tok, dtype=torch.bool)

        # Candidates that stopped and rank among the N best become finished hypotheses.
        new_fin = stopped[:, :N]
        if cfg.early_stopping is True:
            new_fin = new_fin & ~fin.full.all(1, keepdim=True)  # a full prompt takes no more
        if bool(new_fin.any()):
            seq = torch.cat([run_tok.gather(1, cand_beam[:, :N, None].expand(A, N, t)), cand_tok[:, :N, None]], 2)
            fin.add(cand_score[:, :N] / n_gen**lp, new_fin, seq)

        # The N best candidates that did not stop keep running.
        keep_score, keep = cand_score.masked_fill(stopped, float("-inf")).topk(N, dim=1)  # (A, N)
        src_beam, new_tok = cand_beam.gather(1, keep), cand_tok.gather(1, keep)  # (A, N)

        # A prompt is done when its result can no longer change (see the module docstring).
        hyp_len = M if cfg.early_stopping == "never" and lp > 0 else n_gen
        done = ~(keep_score[:, :1] / hyp_len**lp > fin.worst()).any(1)  # (A,)
        if cfg.early_stopping is True:
            done |= fin.full.all(1)
        if n_gen == M:
            done[:] = True
        for a in done.nonzero().squeeze(1).tolist():
            results[int(prompt_of[a])] = _strip(fin.best(a), cfg.stop_tokens, keep_stop)
        if bool(done.all()):
            break

        live = (~done).nonzero().squeeze(1)  # (A_new,)
        # Cache row each surviving beam continues from; before the first step, the prompt's.
        src_row = live[:, None] if t == 0 else live[:, None] * N + src_beam[live]  # (A_new, N)
        kept = run_tok[live].gather(1, src_beam[live, :, None].expand(-1, N, t))  # (A_new, N, t)
        run_tok = torch.cat([kept, new_tok[live, :, None]], dim=2)
        run_score, prompt_of = keep_score[live], prompt_of[live]
        fin.keep(live)
        row_score, row_tok = step.step(src_row.expand(-1, N).reshape(-1), new_tok[live].reshape(-1))  # (A_new * N, Kr)
    return results
