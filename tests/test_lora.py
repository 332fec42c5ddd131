"""LoRA: identity at init, merge/unmerge, parameter counts, state dicts, switches and masks."""

from __future__ import annotations

import pytest
import torch

from models.gpt2 import GPT2, build_config
from models.lora import (
    LoRAAdapter,
    LoRAConfig,
    apply_lora,
    count_trainable_parameters,
    iter_lora_adapters,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    set_lora_trainable,
    unmerge_lora,
)
from models.split import split_model


def _ids(model, seed=0):
    return torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(seed))


def _randomize_b(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, adapter in iter_lora_adapters(model):
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=gen) * 0.3)


ALL_TARGETS = ("q", "k", "v", "attn_proj", "mlp_fc", "mlp_proj")


@pytest.mark.parametrize("targets", [("q", "v"), ALL_TARGETS, ("k",)])
def test_zero_b_leaves_outputs_unchanged(tiny_model, targets):
    ids = _ids(tiny_model)
    with torch.no_grad():
        before = tiny_model(ids)
        apply_lora(tiny_model, LoRAConfig(r=4, targets=targets)).eval()
        torch.testing.assert_close(tiny_model(ids), before, atol=1e-6, rtol=0)


def test_names_and_freezing(tiny_model):
    base_names = set(tiny_model.state_dict())
    apply_lora(tiny_model, LoRAConfig(r=2))
    trainable = sorted(n for n, p in tiny_model.named_parameters() if p.requires_grad)
    assert trainable[:2] == [
        "transformer.h.0.attn.c_attn.adapters.q.lora_A",
        "transformer.h.0.attn.c_attn.adapters.q.lora_B",
    ]
    assert len(trainable) == 3 * 2 * 2 and all(".lora_" in n for n in trainable)
    # base parameter names are unchanged, so base checkpoints still load
    assert base_names <= set(tiny_model.state_dict())
    c_attn = tiny_model.transformer.h["0"].attn.c_attn
    assert c_attn.adapters["q"].lora_A.shape == (2, 32) and c_attn.adapters["v"].lora_B.shape == (32, 2)
    assert set(c_attn.adapters) == {"q", "v"}


def test_slice_targets_touch_only_their_slice(tiny_model):
    apply_lora(tiny_model, LoRAConfig(r=2, dropout=0.0, targets=("k",)))
    _randomize_b(tiny_model)
    layer = tiny_model.transformer.h["0"].attn.c_attn
    x = torch.randn(3, 32)
    delta = layer(x) - torch.nn.functional.linear(x, layer.weight, layer.bias)  # (3, 96)
    assert delta[:, :32].abs().max() == 0 and delta[:, 64:].abs().max() == 0
    assert delta[:, 32:64].abs().max() > 0
    torch.testing.assert_close(delta[:, 32:64], layer.adapters["k"](x))


def test_merge_unmerge(tiny_model):
    apply_lora(tiny_model, LoRAConfig(r=4, targets=ALL_TARGETS)).eval()
    _randomize_b(tiny_model)
    weights = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if not p.requires_grad}
    ids = _ids(tiny_model)
    with torch.no_grad():
        unmerged = tiny_model(ids)
        merge_lora(tiny_model)
        assert not torch.equal(
            tiny_model.transformer.h["1"].attn.c_attn.weight, weights["transformer.h.1.attn.c_attn.weight"]
        )
        torch.testing.assert_close(tiny_model(ids), unmerged, atol=1e-5, rtol=0)
        with pytest.raises(RuntimeError, match="already merged"):
            merge_lora(tiny_model)
        unmerge_lora(tiny_model)
        torch.testing.assert_close(tiny_model(ids), unmerged, atol=1e-5, rtol=0)
    for n, p in tiny_model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="not merged"):
        unmerge_lora(tiny_model)


@pytest.mark.parametrize(("preset", "per_r"), [("gpt2", 36_864), ("gpt2-medium", 98_304)])
@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_trainable_counts_closed_form(preset, per_r, r):
    with torch.device("meta"):  # no memory for the weights
        model = apply_lora(GPT2(build_config(preset)), LoRAConfig(r=r))
    cfg = model.config
    assert count_trainable_parameters(model) == cfg.n_layer * 2 * (cfg.n_embd * r + r * cfg.n_embd)
    assert count_trainable_parameters(model) == per_r * r
    client, _ = split_model(model, 3)
    assert count_trainable_parameters(client) == 3 * 2 * 2 * cfg.n_embd * r


def test_lora_state_dict_round_trip(tiny_model):
    apply_lora(tiny_model, LoRAConfig(r=2))
    _randomize_b(tiny_model, seed=1)
    sd = {k: v.clone() for k, v in lora_state_dict(tiny_model).items()}
    assert len(sd) == 3 * 2 * 2 and all(k.endswith((".lora_A", ".lora_B")) for k in sd)
    with torch.no_grad():
        for _, adapter in iter_lora_adapters(tiny_model):
            adapter.reset_parameters()
    assert not all(torch.equal(v, lora_state_dict(tiny_model)[k]) for k, v in sd.items())
    assert load_lora_state_dict(tiny_model, sd) == ([], [])
    for k, v in lora_state_dict(tiny_model).items():
        assert torch.equal(v, sd[k])
    # loading into the matching part of a split works with strict=False
    client, _ = split_model(tiny_model, 1)
    missing, unexpected = load_lora_state_dict(client, sd, strict=False)
    assert missing == [] and len(unexpected) == 2 * 2 * 2


def test_load_lora_state_dict_errors(tiny_model):
    apply_lora(tiny_model, LoRAConfig(r=2))
    sd = lora_state_dict(tiny_model)
    bad = dict(sd)
    bad.pop("transformer.h.0.attn.c_attn.adapters.q.lora_A")
    bad["transformer.h.9.attn.c_attn.adapters.q.lora_A"] = torch.zeros(2, 32)
    with pytest.raises(ValueError, match=r"missing \['transformer.h.0.*unexpected \['transformer.h.9"):
        load_lora_state_dict(tiny_model, bad)
    wrong_shape = dict(sd)
    wrong_shape["transformer.h.0.attn.c_attn.adapters.q.lora_A"] = torch.zeros(3, 32)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_lora_state_dict(tiny_model, wrong_shape)


def test_freeze_switches(tiny_model):
    apply_lora(tiny_model, LoRAConfig(r=2))
    set_lora_trainable(tiny_model, A=False, B=True)
    names = [n for n, p in tiny_model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith("lora_B") for n in names)
    assert count_trainable_parameters(tiny_model) == 3 * 2 * 32 * 2
    set_lora_trainable(tiny_model, A=True, B=False)
    assert all(n.endswith("lora_A") for n, p in tiny_model.named_parameters() if p.requires_grad)
    set_lora_trainable(tiny_model)
    assert count_trainable_parameters(tiny_model) == 3 * 2 * 2 * 32 * 2


def test_rank_mask_removes_that_rank():
    torch.manual_seed(0)
    adapter = LoRAAdapter(6, 5, r=3, alpha=6.0)
    torch.nn.init.normal_(adapter.lora_B)
    x = torch.randn(4, 6)
    adapter.rank_mask[1] = 0.0
    keep = [0, 2]
    expected = x @ adapter.lora_A[keep].T @ adapter.lora_B[:, keep].T * (6.0 / 3)
    torch.testing.assert_close(adapter(x), expected)
    torch.testing.assert_close(x @ adapter.delta_weight().T, expected)


def test_mask_gradients_zeroes_rows_of_a_and_columns_of_b():
    torch.manual_seed(0)
    adapter = LoRAAdapter(6, 5, r=4, alpha=4.0)
    torch.nn.init.normal_(adapter.lora_B)
    adapter(torch.randn(3, 6)).sum().backward()
    keep = torch.tensor([True, False, True, False])
    adapter.mask_gradients(keep)
    assert adapter.lora_A.grad[~keep].abs().sum() == 0 and adapter.lora_B.grad[:, ~keep].abs().sum() == 0
    assert (adapter.lora_A.grad[keep].abs().sum(1) > 0).all()
    assert (adapter.lora_B.grad[:, keep].abs().sum(0) > 0).all()
    with pytest.raises(ValueError, match="rank_keep"):
        adapter.mask_gradients(torch.ones(3, dtype=torch.bool))


def test_lora_dropout_only_in_training():
    torch.manual_seed(0)
    adapter = LoRAAdapter(16, 4, r=2, alpha=2.0, dropout=0.5)
    torch.nn.init.normal_(adapter.lora_B)
    x = torch.randn(3, 16)
    assert not torch.equal(adapter(x), adapter(x))
    adapter.eval()
    torch.testing.assert_close(adapter(x), x @ adapter.delta_weight().T)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(r=0), "r must"),
        (dict(r=2.0), "r must"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(targets=("q", "o")), "'o'"),
        (dict(targets=()), "empty"),
        (dict(targets=("q", "q")), "duplicates"),
        (dict(layers=()), "layers"),
        (dict(layers=(1, -1)), "layers"),
        (dict(layers=(1, 1)), "duplicates"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRAConfig(**kwargs)


def test_bad_config_mutated_after_creation_and_double_apply(tiny_model):
    cfg = LoRAConfig()
    cfg.r = -1
    with pytest.raises(ValueError, match="r must"):
        apply_lora(tiny_model, cfg)
    apply_lora(tiny_model, LoRAConfig())
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(tiny_model, LoRAConfig())


def test_layers_adapt_only_those_blocks_also_in_a_part(tiny_model):
    """Blocks are named by their global index, so a part adapts the same blocks as the whole model."""
    import copy

    client, server = split_model(copy.deepcopy(tiny_model), 1)  # 3 blocks: client 0, server 1..2
    for part in (tiny_model, client, server):
        apply_lora(part, LoRAConfig(r=2, layers=(0, 2)))
    adapted = {n.split(".")[2] for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert adapted == {"0", "2"}
    assert {n.split(".")[2] for n, _ in iter_lora_adapters(client)} == {"0"}
    assert {n.split(".")[2] for n, _ in iter_lora_adapters(server)} == {"2"}
