"""Our GPT-2 against transformers' GPT2LMHeadModel, the KV cache, padding, loading, presets."""

from __future__ import annotations

import shutil

import pytest
import torch

from models.gpt2 import GPT2, PRESETS, GPT2Config, KVCache, build_config, position_ids_from_mask
from models.loss import lm_loss

ATOL = 1e-4


@pytest.fixture(scope="module")
def loaded(hf_checkpoint):
    hf, directory = hf_checkpoint
    return hf, GPT2.from_pretrained(directory).eval()


def _hf_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(ids).logits


def test_config_read_from_checkpoint(loaded):
    _, model = loaded
    cfg = model.config
    assert (cfg.vocab_size, cfg.n_positions, cfg.n_embd, cfg.n_layer, cfg.n_head) == (101, 40, 32, 3, 4)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert all(p.requires_grad and p.device.type == "cpu" for p in model.parameters())


def test_full_sequence_matches_transformers(loaded):
    hf, model = loaded
    ids = torch.randint(0, 101, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids)
    torch.testing.assert_close(ours, _hf_logits(hf, ids), atol=ATOL, rtol=0)


def test_bin_checkpoint_without_prefix_matches(hf_checkpoint, hf_checkpoint_bin):
    hf, _ = hf_checkpoint
    model = GPT2.from_pretrained(hf_checkpoint_bin).eval()
    ids = torch.randint(0, 101, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), _hf_logits(hf, ids), atol=ATOL, rtol=0)


def test_kv_cache_token_by_token(loaded):
    hf, model = loaded
    ids = torch.randint(0, 101, (2, 10), generator=torch.Generator().manual_seed(2))
    cache = KVCache()
    with torch.no_grad():
        steps = [model(ids[:, t : t + 1], kv_cache=cache) for t in range(ids.shape[1])]
    assert cache.length == 10
    assert cache.layers["0"][0].shape == (2, 4, 10, 8)  # (B, nh, T, hs)
    torch.testing.assert_close(torch.cat(steps, dim=1), _hf_logits(hf, ids), atol=ATOL, rtol=0)


def test_kv_cache_prompt_then_chunks(loaded):
    hf, model = loaded
    ids = torch.randint(0, 101, (2, 14), generator=torch.Generator().manual_seed(3))
    cache = KVCache()
    with torch.no_grad():
        # prompt of 6, then single steps, then a chunk of 3 (needs the offset causal mask)
        out = [model(ids[:, :6], kv_cache=cache)]
        out += [model(ids[:, t : t + 1], kv_cache=cache) for t in range(6, 11)]
        out.append(model(ids[:, 11:], kv_cache=cache))
    torch.testing.assert_close(torch.cat(out, dim=1), _hf_logits(hf, ids), atol=ATOL, rtol=0)


def test_left_padded_batch_with_cache_equals_single_sequences(loaded):
    hf, model = loaded
    gen = torch.Generator().manual_seed(4)
    seqs = [torch.randint(1, 101, (n,), generator=gen) for n in (9, 5, 7)]
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, T - len(s) :] = s
        mask[i, T - len(s) :] = True
    new = torch.randint(1, 101, (len(seqs), 3), generator=gen)  # three decoding steps
    cache = KVCache()
    with torch.no_grad():
        prompt_logits = model(ids, attn_mask=mask, position_ids=position_ids_from_mask(mask), kv_cache=cache)
        step_logits = []
        for t in range(new.shape[1]):
            mask = torch.cat([mask, torch.ones(len(seqs), 1, dtype=torch.bool)], dim=1)
            pos = position_ids_from_mask(mask, past_length=cache.length)
            step_logits.append(model(new[:, t : t + 1], attn_mask=mask, position_ids=pos, kv_cache=cache))
        step_logits = torch.cat(step_logits, dim=1)
        for i, s in enumerate(seqs):
            full = torch.cat([s, new[i]])[None]
            ref = model(full)[0]  # (len + 3, V)
            assert torch.isfinite(prompt_logits[i]).all()
            torch.testing.assert_close(prompt_logits[i, T - len(s) :], ref[: len(s)], atol=ATOL, rtol=0)
            torch.testing.assert_close(step_logits[i], ref[len(s) :], atol=ATOL, rtol=0)
            torch.testing.assert_close(ref, _hf_logits(hf, full)[0], atol=ATOL, rtol=0)


def test_kv_cache_reorder(loaded):
    _, model = loaded
    ids = torch.randint(0, 101, (3, 6), generator=torch.Generator().manual_seed(5))
    cache = KVCache()
    with torch.no_grad():
        model(ids[:, :5], kv_cache=cache)
        index = torch.tensor([2, 2, 0])
        cache.reorder(index)
        step = model(ids[index, 5:], kv_cache=cache)
        torch.testing.assert_close(step[:, -1], model(ids[index])[:, -1], atol=ATOL, rtol=0)


def test_shared_cache_between_parts_is_reported(loaded):
    _, model = loaded
    cache = KVCache()
    cache.length = 4  # positions the cache claims, but block "0" holds none
    with pytest.raises(ValueError, match="separate KVCache"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_bad_attn_mask_shape(loaded):
    _, model = loaded
    with pytest.raises(ValueError, match="attn_mask"):
        model(torch.zeros(2, 3, dtype=torch.long), attn_mask=torch.ones(2, 4, dtype=torch.bool))


def test_too_long_sequence(loaded):
    _, model = loaded
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.zeros(1, 41, dtype=torch.long))


def test_from_pretrained_config_overrides(hf_checkpoint):
    _, directory = hf_checkpoint
    model = GPT2.from_pretrained(directory, embd_pdrop=0.05)
    assert model.config.embd_pdrop == 0.05
    with pytest.raises(ValueError, match="unknown GPT2Config field"):
        GPT2.from_pretrained(directory, not_a_field=1)


def test_from_pretrained_resolves_hf_cache_names(hf_checkpoint, tmp_path):
    hf, directory = hf_checkpoint
    # Hugging Face cache layout: models--{org}--{name}/refs/main + snapshots/{commit}/
    repo = tmp_path / "models--openai-community--gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    shutil.copytree(directory, repo / "snapshots" / "0123abcd")
    model = GPT2.from_pretrained("gpt2", cache_dir=tmp_path).eval()
    ids = torch.arange(8)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), _hf_logits(hf, ids), atol=ATOL, rtol=0)


def test_from_pretrained_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not in"):
        GPT2.from_pretrained("gpt2-no-such-model", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT2.from_pretrained(tmp_path)  # an empty directory


def test_presets_and_validation():
    assert build_config("tiny").n_layer == 4 and build_config("tiny").vocab_size == 50257
    assert (build_config("gpt2-medium").n_layer, build_config("gpt2-medium").n_embd) == (24, 1024)
    assert (build_config("gpt2-large").n_head, build_config("gpt2-large").n_embd) == (20, 1280)
    assert build_config("gpt2", attn_pdrop=0.0).attn_pdrop == 0.0
    assert PRESETS["gpt2"].attn_pdrop == 0.1  # overrides do not touch the preset
    with pytest.raises(ValueError, match="tiny"):
        build_config("gpt3")
    with pytest.raises(ValueError, match="divisible"):
        GPT2Config(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="embd_pdrop"):
        build_config("tiny", embd_pdrop=1.0)
    with pytest.raises(ValueError, match="n_layer"):
        build_config("tiny", n_layer=0)


def test_parameter_count_gpt2_small_on_meta():
    with torch.device("meta"):
        model = GPT2(build_config("gpt2"))
    assert model.num_parameters() == 124_439_808  # the released GPT-2 small, tied head counted once


def test_tiny_preset_learns_on_cpu():
    torch.manual_seed(0)
    model = GPT2(build_config("tiny", embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
    ids = torch.randint(0, 50257, (2, 16))
    targets, mask = ids.roll(-1, dims=1), torch.ones(2, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = lm_loss(model(ids), targets, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


# --- loss ----------------------------------------------------------------------------


def test_lm_loss_hand_computed():
    # one row, V = 2, logits (0, log 3) -> p = (1/4, 3/4); two tokens, only the first counts
    logits = torch.tensor([[[0.0, torch.log(torch.tensor(3.0))], [5.0, -5.0]]])
    targets = torch.tensor([[1, 1]])
    mask = torch.tensor([[1.0, 0.0]])
    nll = -torch.log(torch.tensor(0.75))
    smooth = -(torch.log(torch.tensor(0.25)) + torch.log(torch.tensor(0.75))) / 2
    torch.testing.assert_close(lm_loss(logits, targets, mask), nll)
    torch.testing.assert_close(lm_loss(logits, targets, mask, label_smoothing=0.1), 0.9 * nll + 0.1 * smooth)


def test_lm_loss_is_masked_cross_entropy_over_the_batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=gen, dtype=torch.float64).to(torch.bfloat16)
    targets = torch.randint(0, 11, (3, 5), generator=gen)
    mask = (torch.rand(3, 5, generator=gen) > 0.4).float()
    keep = mask.bool()
    expected = torch.nn.functional.cross_entropy(logits.float()[keep], targets[keep])
    loss = lm_loss(logits, targets, mask)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)


def test_lm_loss_empty_mask_and_bad_input():
    logits = torch.randn(1, 2, 3, requires_grad=True)
    loss = lm_loss(logits, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="label_smoothing"):
        lm_loss(logits, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), label_smoothing=1.0)
    with pytest.raises(ValueError, match="expected logits"):
        lm_loss(logits, torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2))


def test_model_loss_equals_lm_loss_on_full_logits(tiny_model):
    from models.loss import lm_loss, model_loss

    torch.manual_seed(0)
    ids = torch.randint(0, tiny_model.config.vocab_size, (3, 9))
    targets = torch.randint(0, tiny_model.config.vocab_size, (3, 9))
    mask = (torch.rand(3, 9) > 0.4).float()
    tiny_model.eval()
    full = lm_loss(tiny_model(ids), targets, mask, 0.1)
    selected = model_loss(tiny_model, ids, targets, mask, 0.1)
    assert torch.allclose(full, selected, atol=1e-6)
    assert tiny_model(ids, select=mask > 0).shape == (int(mask.sum()), tiny_model.config.vocab_size)
