"""split_model_u: client front -> server middle -> client back end is the whole model."""

from __future__ import annotations

import pytest
import torch

from models.generate import DecodeConfig, beam_search, greedy
from models.lora import LoRAConfig, apply_lora, iter_lora_adapters
from models.split_u import UBack, UFront, split_model_u


def _ids(model, B=2, T=11, seed=0):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def _with_lora(model):
    apply_lora(model, LoRAConfig(r=2, alpha=4.0, dropout=0.1, targets=("q", "v", "mlp_fc")))
    with torch.no_grad():
        for _, adapter in iter_lora_adapters(model):
            adapter.lora_B.normal_(0.0, 0.5)  # make the adapters matter
    return model.eval()


def _cuts(n):
    return [(cut, head) for cut in range(n) for head in range(cut + 1, n + 1)]


def test_front_middle_back_equals_whole_bitwise(tiny_model):
    model = _with_lora(tiny_model)
    ids = _ids(model)
    n = model.config.n_layer
    with torch.no_grad():
        whole = model(ids)
        select = torch.zeros_like(ids, dtype=torch.bool)
        select[:, 5:] = True
        whole_sel = model(ids, select=select)
        for cut, head in _cuts(n):
            client, server = split_model_u(model, cut, head)
            h = client(ids, stop_block=cut)  # (B, T, C)
            assert h.shape == (2, 11, model.config.n_embd)
            mid = server(h)
            assert mid.shape == h.shape  # the server returns hidden states, never logits
            out = client(mid, from_hidden=True, first_block=head)
            assert torch.equal(out, whole), (cut, head)
            sel = client(mid, from_hidden=True, first_block=head, select=select)
            assert torch.equal(sel, whole_sel), (cut, head)


def test_parts_own_the_right_modules(tiny_model):
    n = tiny_model.config.n_layer
    whole_names = set(tiny_model.state_dict())
    for cut, head in _cuts(n):
        client, server = split_model_u(tiny_model, cut, head)
        assert client.block_names == [str(i) for i in range(cut)] + [str(i) for i in range(head, n)]
        assert server.block_names == [str(i) for i in range(cut, head)]
        assert client.owns_embeddings and not server.owns_embeddings
        assert client.lm_head is not None and server.lm_head is None
        assert "ln_f" in client.transformer and "ln_f" not in server.transformer
        # the client's head is tied to its own embedding: one tensor, as in the whole model
        assert client.lm_head.weight is client.transformer.wte.weight
        assert set(client.state_dict()) | set(server.state_dict()) == whole_names
        assert not set(client.state_dict()) & set(server.state_dict())
        # the server holds no embedding, no head: nothing that maps to or from token ids
        assert all(not n.startswith(("transformer.wte", "transformer.wpe", "lm_head")) for n in server.state_dict())
    assert tiny_model.block_names == ["0", "1", "2"]


def test_default_head_cut_leaves_only_ln_f_and_head_on_the_back(tiny_model):
    client, server = split_model_u(tiny_model, 1)
    assert server.block_names == ["1", "2"] and client.block_names == ["0"]


@pytest.mark.parametrize("cut,head", [(-1, 2), (2, 2), (3, 3), (0, 4), (1, 0)])
def test_bad_cuts(tiny_model, cut, head):
    with pytest.raises(ValueError, match="cut"):
        split_model_u(tiny_model, cut, head)


def test_cannot_split_a_part(tiny_model):
    client, _ = split_model_u(tiny_model, 1)
    with pytest.raises(ValueError, match="whole GPT2"):
        split_model_u(client, 1)


def test_decoding_through_three_parts_equals_the_whole_model(tiny_model):
    model = _with_lora(tiny_model)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]  # ragged: left padding and its mask go through every part
    cfg = DecodeConfig(num_beams=3, max_new_tokens=6, no_repeat_ngram_size=2, stop_tokens=(0,))
    kw = dict(max_new_tokens=6, stop_tokens=(0,), no_repeat_ngram_size=2)
    want_beam, want_greedy = beam_search(model, prompts, cfg), greedy(model, prompts, **kw)
    client, server = split_model_u(model, 1, 2)
    chain = [UFront(client, 1), server, UBack(client, 2)]
    assert beam_search(chain, prompts, cfg) == want_beam
    assert greedy(chain, prompts, **kw) == want_greedy


def test_u_training_step_reaches_all_three_parts(tiny_model):
    apply_lora(tiny_model, LoRAConfig(r=2, alpha=4.0, targets=("q", "v")))
    client, server = split_model_u(tiny_model, 1, 2)
    ids = _ids(tiny_model)
    logits = client(server(client(ids, stop_block=1)), from_hidden=True, first_block=2)
    logits.float().logsumexp(-1).mean().backward()
    grads = {n: p.grad for part in (client, server) for n, p in part.named_parameters() if p.requires_grad}
    # B = 0 at init, so A gets no gradient yet; every B does
    assert grads and all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    blocks = {n.split(".")[2] for n in grads}
    assert blocks == {"0", "1", "2"}  # front (client), middle (server), back end (client)
