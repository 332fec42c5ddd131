"""Beam search and greedy decoding against transformers' generate, batching, split parts, config checks."""

from __future__ import annotations

import collections

import pytest
import torch

from models.decode_chain import BeamKVCache
from models.generate import (
    DecodeConfig,
    _group_max,
    _refresh_group_max,
    _topk_rows,
    beam_search,
    greedy,
)
from models.gpt2 import GPT2, KVCache
from models.split import split_model

V, MAX_NEW = 120, 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy CPU OpenMP's waiting
    threads make every small op many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_pair(directory, vocab_size: int):
    """(transformers GPT2LMHeadModel, our GPT2 loaded from its checkpoint), same weights.

    The weights are made large (std 0.4, embedding x 3) so the random model is peaky
    and prompt-dependent: its continuations vary, stop tokens get chosen, and the
    n-gram ban changes results. LayerNorms keep their default init.
    """
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" not in name:
                p.normal_(0.0, 0.4)
        hf.transformer.wte.weight.mul_(3.0)
    hf.save_pretrained(directory)
    return hf, GPT2.from_pretrained(directory).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _random_pair(tmp_path_factory.mktemp("gen_gpt2"), V)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, V, (n,), generator=g).tolist() for n in (5, 9, 3, 12, 7, 4, 6, 10)]


@pytest.fixture(scope="module")
def stops(models, prompts) -> tuple[int, ...]:
    """Two stop tokens the model does emit, but not always first: the 5th and 8th most
    frequent tokens of its greedy continuations (chosen from the model, so that a change
    of random stream cannot make the tests vacuous)."""
    _, ours = models
    counts = collections.Counter(t for o in greedy(ours, prompts, 20, ()) for t in o)
    common = [t for t, _ in counts.most_common(8)]
    return (common[4], common[7])


def _hf_generate(hf, prompt: list[int], stops, **kw) -> list[int]:
    """transformers' continuation of one prompt, cut after its first stop token."""
    ids = torch.tensor([prompt])
    kw = {"max_new_tokens": MAX_NEW, **kw}
    with torch.no_grad():
        out = hf.generate(
            ids, attention_mask=torch.ones_like(ids), eos_token_id=list(stops), pad_token_id=stops[0],
            do_sample=False, **kw,
        )[0, len(prompt) :].tolist()  # fmt: skip
    for i, t in enumerate(out):
        if t in stops:
            return out[: i + 1]
    return out


def _has_repeated_ngram(seq: list[int], n: int) -> bool:
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


BEAM_SETTINGS = [
    dict(num_beams=5, length_penalty=0.8, no_repeat_ngram_size=3, repetition_penalty=1.0, early_stopping=False),
    dict(num_beams=4, length_penalty=1.0, no_repeat_ngram_size=0, repetition_penalty=1.3, early_stopping=False),
    dict(num_beams=3, length_penalty=-0.5, no_repeat_ngram_size=2, repetition_penalty=1.0, early_stopping=True),
    dict(num_beams=6, length_penalty=2.0, no_repeat_ngram_size=3, repetition_penalty=0.8, early_stopping="never"),
]


@pytest.mark.parametrize("settings", BEAM_SETTINGS, ids=lambda s: f"beams{s['num_beams']}")
def test_beam_search_matches_transformers(models, prompts, stops, settings):
    hf, ours = models
    prompts = prompts + [prompts[2] + [stops[0]]]  # like the recipe's context + [50256]: ends in a stop token
    cfg = DecodeConfig(**settings, stop_tokens=stops, max_new_tokens=MAX_NEW, repeat_scope="sequence")
    mine = beam_search(ours, prompts, cfg, keep_stop_token=True)
    hf_kw = dict(settings, no_repeat_ngram_size=settings["no_repeat_ngram_size"] or None)
    theirs = [_hf_generate(hf, p, stops, **hf_kw) for p in prompts]
    assert mine == theirs
    # Not vacuous: some hypotheses stop on each stop token, some run to max_new_tokens,
    # and lengths differ (finished prompts leave the batch at different steps).
    if settings["num_beams"] == 5:
        assert {o[-1] for o in mine if o[-1] in stops} == set(stops)
        assert any(len(o) == MAX_NEW and o[-1] not in stops for o in mine)
        assert len({len(o) for o in mine}) >= 3


def test_wide_vocab_matches_transformers(tmp_path, prompts):
    """A vocabulary wide enough for the grouped top-k (and its refresh after penalties)."""
    hf, ours = _random_pair(tmp_path, 16384)
    assert _group_max(torch.zeros(1, 16384), 15) is not None  # 5 beams, 2 stops: K = 15 per row
    counts = collections.Counter(t for o in greedy(ours, prompts, 12, ()) for t in o)
    stops = tuple(t for t, _ in counts.most_common(6)[4:6])
    cases = [
        dict(num_beams=5, length_penalty=0.8, no_repeat_ngram_size=2, repetition_penalty=1.0),
        dict(num_beams=5, length_penalty=1.0, no_repeat_ngram_size=3, repetition_penalty=1.5),
        dict(num_beams=5, length_penalty=1.0, no_repeat_ngram_size=0, repetition_penalty=0.3),  # raises scores
    ]
    for settings in cases:
        mine = beam_search(
            ours, prompts, DecodeConfig(**settings, stop_tokens=stops, max_new_tokens=12, repeat_scope="sequence"),
            keep_stop_token=True,
        )
        hf_kw = dict(settings, max_new_tokens=12)
        assert mine == [_hf_generate(hf, p, stops, **hf_kw) for p in prompts]
    assert any(o[-1] in stops for o in mine)


def test_no_repeat_ngram_is_honoured_and_matters(models, prompts, stops):
    _, ours = models
    for n in (2, 3, 4):
        cfg = DecodeConfig(num_beams=4, no_repeat_ngram_size=n, stop_tokens=stops, max_new_tokens=MAX_NEW,
                           repeat_scope="sequence")
        outs = beam_search(ours, prompts, cfg, keep_stop_token=True)
        assert not any(_has_repeated_ngram(p + o, n) for p, o in zip(prompts, outs))  # the prompt counts too
        free = beam_search(
            ours, prompts, DecodeConfig(**{**vars(cfg), "no_repeat_ngram_size": 0}), keep_stop_token=True
        )
        assert any(_has_repeated_ngram(p + o, n) for p, o in zip(prompts, free))  # the rule had work to do
    greedy_outs = greedy(ours, prompts, MAX_NEW, stops, no_repeat_ngram_size=3, repeat_scope="sequence")
    assert not any(_has_repeated_ngram(p + o, 3) for p, o in zip(prompts, greedy_outs))


def _reference_greedy(model, prompt: list[int], stops, n: int, penalty: float) -> list[int]:
    """The E2E recipe's reference rule, step by step with whole forwards: the n-gram ban and
    the repetition penalty look at the generated tokens only, never at the prompt."""
    out: list[int] = []
    for _ in range(MAX_NEW):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out]))[0, -1].float()  # (V,)
        for t in set(out):
            logits[t] = logits[t] * penalty if logits[t] < 0 else logits[t] / penalty
        if n and len(out) >= n - 1:
            tail = tuple(out[len(out) - n + 1:])
            for i in range(len(out) - n + 1):
                if tuple(out[i:i + n - 1]) == tail:
                    logits[out[i + n - 1]] = float("-inf")
        out.append(int(logits.argmax()))
        if out[-1] in stops:
            break
    return out


@pytest.mark.parametrize("ngram,penalty", [(2, 1.0), (3, 1.3)])
def test_generated_scope_matches_the_reference_rule(models, prompts, stops, ngram, penalty):
    """repeat_scope="generated" (the default): batched greedy equals the reference rule, and
    beam search with one beam equals greedy (without a repetition penalty, which beam search
    applies to log-probs and greedy to logits)."""
    _, ours = models
    mine = greedy(ours, prompts, MAX_NEW, stops, no_repeat_ngram_size=ngram, repetition_penalty=penalty,
                  keep_stop_token=True)
    assert mine == [_reference_greedy(ours, p, stops, ngram, penalty) for p in prompts]
    cfg = DecodeConfig(num_beams=1, no_repeat_ngram_size=ngram, repetition_penalty=penalty, stop_tokens=stops,
                       max_new_tokens=MAX_NEW)
    assert penalty != 1.0 or beam_search(ours, prompts, cfg, keep_stop_token=True) == mine


def test_generated_scope_lets_a_prompt_ngram_be_copied(models):
    """Prompt = seed + the model's own continuation c of seed + seed again. In "sequence" scope
    a 3-gram ban forbids c[0] next ((seed[-2], seed[-1], c[0]) is in the prompt); in the
    default "generated" scope the model may copy it, and for some seeds it does."""
    _, ours = models
    copied = 0
    for seed in ([7, 19, 3], [5, 40, 11], [30, 2, 9], [12, 13, 14]):
        c = greedy(ours, [seed], 6, ())[0]
        inside = greedy(ours, [seed + c + seed], 6, (), no_repeat_ngram_size=3, repeat_scope="sequence")[0]
        outside = greedy(ours, [seed + c + seed], 6, (), no_repeat_ngram_size=3)[0]
        assert inside[0] != c[0]
        copied += outside[0] == c[0]
    assert copied >= 1


@pytest.mark.parametrize("ngram,penalty", [(0, 1.0), (3, 1.0), (0, 1.5), (2, 0.7)])
def test_greedy_matches_transformers(models, prompts, stops, ngram, penalty):
    hf, ours = models
    mine = greedy(
        ours, prompts, MAX_NEW, stops, no_repeat_ngram_size=ngram, repetition_penalty=penalty,
        repeat_scope="sequence", keep_stop_token=True,
    )  # fmt: skip
    theirs = [
        _hf_generate(hf, p, stops, num_beams=1, no_repeat_ngram_size=ngram or None, repetition_penalty=penalty)
        for p in prompts
    ]
    assert mine == theirs
    if (ngram, penalty) == (0, 1.0):
        assert any(o[-1] in stops for o in mine) and any(len(o) == MAX_NEW for o in mine)


@pytest.mark.parametrize("ngram", [0, 3])
def test_one_beam_is_greedy(models, prompts, stops, ngram):
    _, ours = models
    cfg = DecodeConfig(
        num_beams=1, length_penalty=0.8, no_repeat_ngram_size=ngram, stop_tokens=stops, max_new_tokens=MAX_NEW
    )
    assert beam_search(ours, prompts, cfg) == greedy(ours, prompts, MAX_NEW, stops, no_repeat_ngram_size=ngram)


def test_stop_token_stripped_by_default(models, prompts, stops):
    _, ours = models
    cfg = DecodeConfig(num_beams=5, no_repeat_ngram_size=3, stop_tokens=stops, max_new_tokens=MAX_NEW)
    kept = beam_search(ours, prompts, cfg, keep_stop_token=True)
    stripped = beam_search(ours, prompts, cfg)
    assert stripped == [o[:-1] if o[-1] in stops else o for o in kept]
    assert all(t not in stops for o in stripped for t in o)


def test_batched_equals_one_by_one(models, prompts, stops):
    _, ours = models
    cfg = DecodeConfig(
        num_beams=5, repetition_penalty=1.2, no_repeat_ngram_size=3, stop_tokens=stops, max_new_tokens=MAX_NEW
    )
    batched = beam_search(ours, prompts, cfg)
    assert batched == [beam_search(ours, [p], cfg)[0] for p in prompts]
    batched = greedy(ours, prompts, MAX_NEW, stops, no_repeat_ngram_size=2, repetition_penalty=1.2)
    assert batched == [
        greedy(ours, [p], MAX_NEW, stops, no_repeat_ngram_size=2, repetition_penalty=1.2)[0] for p in prompts
    ]
    assert beam_search(ours, [], cfg) == [] and greedy(ours, [], MAX_NEW, stops) == []


@pytest.mark.parametrize("cut", [0, 1, 2])
def test_split_parts_decode_like_whole(models, prompts, stops, cut):
    _, ours = models
    client, server = split_model(ours, cut)
    cfg = DecodeConfig(num_beams=4, no_repeat_ngram_size=3, stop_tokens=stops, max_new_tokens=MAX_NEW)
    assert beam_search([client, server], prompts, cfg) == beam_search(ours, prompts, cfg)
    assert greedy([client, server], prompts, MAX_NEW, stops) == greedy(ours, prompts, MAX_NEW, stops)


def test_modes_and_hooks_restored(models, prompts, stops):
    _, ours = models
    ours.train()
    ours.transformer.h["0"].eval()  # a mixed state must come back as it was
    before = {name: m.training for name, m in ours.named_modules()}
    beam_search(ours, prompts[:2], DecodeConfig(num_beams=2, stop_tokens=stops, max_new_tokens=4))
    assert {name: m.training for name, m in ours.named_modules()} == before
    assert not ours.lm_head._forward_pre_hooks
    ours.eval()
    ids = torch.tensor([prompts[0]])
    assert ours(ids).shape == (1, len(prompts[0]), V)  # full logits again


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_beams", 0), ("num_beams", 2.0), ("num_beams", True), ("max_new_tokens", 0),
        ("no_repeat_ngram_size", -1), ("repetition_penalty", 0.0), ("repetition_penalty", "x"),
        ("length_penalty", float("nan")), ("length_penalty", float("inf")), ("stop_tokens", "ab"),
        ("stop_tokens", (1, -2)), ("stop_tokens", (1.5,)), ("early_stopping", "sometimes"), ("early_stopping", 1),
    ],
)  # fmt: skip
def test_bad_config_values(field, value):
    with pytest.raises(ValueError, match=f"DecodeConfig.{field}"):
        DecodeConfig(**{field: value})


def test_config_normalises():
    cfg = DecodeConfig(stop_tokens=[5, 5, 7], length_penalty=1)
    assert cfg.stop_tokens == (5, 7) and cfg.length_penalty == 1.0 and DecodeConfig(stop_tokens=3).stop_tokens == (3,)


def test_bad_prompts(models):
    _, ours = models
    with pytest.raises(ValueError, match="at least one token"):
        beam_search(ours, [[1, 2], []])
    with pytest.raises(ValueError, match="n_positions"):
        greedy(ours, [[1] * 60], max_new_tokens=6)
    greedy(ours, [[1] * 60], max_new_tokens=5)  # 60 + 5 - 1 positions fit in 64


def test_grouped_topk_matches_topk():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 50257, generator=g)
    x[1, ::3] = float("-inf")  # banned tokens
    x[2, 100:] = float("-inf")  # most groups hold nothing but -inf
    x[3, 50200:] = x[3, 50200:] + 10.0  # the best lie in the ragged tail
    vals, idx = _topk_rows(x, 30, _group_max(x, 30))
    ref_vals, ref_idx = x.topk(30, dim=1)
    assert torch.equal(vals, ref_vals) and torch.equal(idx, ref_idx)  # no ties in random floats
    # Change entries after the maxima were taken (as the penalties do), then refresh them.
    gmax = _group_max(x, 30)
    rows, cols = torch.tensor([0, 0, 4, 4]), ref_idx[[0, 0, 4, 4], [0, 1, 2, 50 % 30]]
    x[rows, cols] = torch.tensor([float("-inf"), -5.0, 7.0, -1.0])
    _refresh_group_max(gmax, x, rows, cols)
    assert torch.equal(gmax, _group_max(x, 30))
    assert torch.equal(_topk_rows(x, 30, gmax)[0], x.topk(30, dim=1).values)
    x[4, :] = 0.0  # all tied: any 30 columns are right
    vals, idx = _topk_rows(x[4:], 30, _group_max(x[4:], 30))
    assert torch.equal(vals, torch.zeros(1, 30)) and len(set(idx[0].tolist())) == 30
    assert _group_max(x[:, :1000], 30) is None  # narrow rows: plain top-k


def test_beam_kv_cache_equals_kv_cache(tiny_model):
    """Prefill, expand to beams, decode, reorder and drop rows: same logits as KVCache."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 97, (2, 6), generator=g)
    steps = [torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([2, 2, 0, 4, 5, 3]), torch.tensor([5, 1, 1])]
    new_tokens = [torch.randint(0, 97, (len(rows), 1), generator=g) for rows in steps]
    out = []
    with torch.inference_mode():
        for cache in (KVCache(), BeamKVCache(max_rows=6, capacity=9)):
            logits = [tiny_model(ids, kv_cache=cache)[:, -1]]
            for rows, tok in zip(steps, new_tokens):
                cache.reorder(rows)
                logits.append(tiny_model(tok, kv_cache=cache)[:, -1])
            out.append(logits)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
