"""split_model: client ∘ server is the whole model, bit for bit, for every cut."""

from __future__ import annotations

import pytest
import torch

from models.gpt2 import KVCache
from models.lora import LoRAConfig, apply_lora, count_trainable_parameters, iter_lora_adapters
from models.split import split_model


def _ids(model, B=2, T=11, seed=0):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("with_lora", [False, True])
def test_client_then_server_equals_whole_bitwise(tiny_model, with_lora):
    model = tiny_model
    if with_lora:
        apply_lora(model, LoRAConfig(r=2, alpha=4.0, dropout=0.1, targets=("q", "v", "mlp_fc")))
        with torch.no_grad():
            for _, adapter in iter_lora_adapters(model):
                adapter.lora_B.normal_(0.0, 0.5)  # make the adapters matter
        model.eval()
    ids = _ids(model)
    with torch.no_grad():
        whole = model(ids)
        for cut in range(model.config.n_layer + 1):
            client, server = split_model(model, cut)
            hidden = client(ids)
            assert hidden.shape == (2, 11, model.config.n_embd)
            assert torch.equal(server(hidden), whole), f"cut={cut}"


def test_parts_own_the_right_modules(tiny_model):
    n = tiny_model.config.n_layer
    for cut in range(n + 1):
        client, server = split_model(tiny_model, cut)
        assert client.block_names == [str(i) for i in range(cut)]
        assert server.block_names == [str(i) for i in range(cut, n)]
        assert client.owns_embeddings and not server.owns_embeddings
        assert client.lm_head is None and server.lm_head is not None
        assert "ln_f" not in client.transformer and "ln_f" in server.transformer
        # parameter names are those of the whole model, split between the parts
        whole_names = {k for k in tiny_model.state_dict()}
        assert set(client.state_dict()) | set(server.state_dict()) == whole_names
        assert not set(client.state_dict()) & set(server.state_dict())
    # the whole model was not touched
    assert tiny_model.block_names == ["0", "1", "2"] and tiny_model.lm_head is not None


def test_server_head_is_frozen_copy_of_wte(tiny_model):
    client, server = split_model(tiny_model, 1)
    head, wte = server.lm_head.weight, client.transformer.wte.weight
    assert not head.requires_grad and wte.requires_grad
    assert torch.equal(head, wte)
    assert head.untyped_storage().data_ptr() != wte.untyped_storage().data_ptr()
    assert head.untyped_storage().data_ptr() != tiny_model.transformer.wte.weight.untyped_storage().data_ptr()
    with torch.no_grad():
        wte.add_(1.0)  # training the client's embedding does not move the server's head
    assert not torch.equal(head, wte)


def test_split_with_lora_counts_and_names(tiny_model):
    apply_lora(tiny_model, LoRAConfig(r=4))
    d = tiny_model.config.n_embd
    client, server = split_model(tiny_model, 1)
    assert count_trainable_parameters(client) == 1 * 2 * 2 * d * 4
    assert count_trainable_parameters(server) == 2 * 2 * 2 * d * 4
    assert [n for n, _ in iter_lora_adapters(server)][0] == "transformer.h.1.attn.c_attn.adapters.q"


def test_split_training_reaches_both_sides(tiny_model):
    apply_lora(tiny_model, LoRAConfig(r=2, dropout=0.0))
    for _, adapter in iter_lora_adapters(tiny_model):
        torch.nn.init.normal_(adapter.lora_B)  # with B = 0, A would get no gradient
    client, server = split_model(tiny_model, 2)
    hidden = client(_ids(tiny_model))
    sent = hidden.detach().requires_grad_(True)  # what crosses the cut
    server(sent).square().mean().backward()
    hidden.backward(sent.grad)
    for part in (client, server):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_split_with_kv_caches(tiny_model):
    client, server = split_model(tiny_model, 2)
    ids = _ids(tiny_model, T=6)
    c_cache, s_cache = KVCache(), KVCache()
    with torch.no_grad():
        steps = [server(client(ids[:, t : t + 1], kv_cache=c_cache), kv_cache=s_cache) for t in range(6)]
        torch.testing.assert_close(torch.cat(steps, 1), tiny_model(ids), atol=1e-5, rtol=0)
    assert set(c_cache.layers) == {"0", "1"} and set(s_cache.layers) == {"2"}


@pytest.mark.parametrize("cut", [-1, 4, 2.0, True, "1"])
def test_bad_cut(tiny_model, cut):
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        split_model(tiny_model, cut)


def test_cannot_split_a_part(tiny_model):
    client, _ = split_model(tiny_model, 1)
    with pytest.raises(ValueError, match="whole"):
        split_model(client, 1)


def test_server_of_the_lowest_cut_serves_a_higher_cut_with_first_block(tiny_model):
    """Per-client cuts: a server holding blocks 1.. serves a client cut at 2 by starting at block 2."""
    from models.split import split_model

    torch.manual_seed(0)
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 7))
    client2, _ = split_model(tiny_model, 2)
    _, server1 = split_model(tiny_model, 1)
    with torch.no_grad():
        out = server1(client2(ids), first_block=2)
        assert torch.equal(out, tiny_model(ids))
