"""models/flops.py: the closed form against a hand count and against torch's FlopCounterMode.

Tolerance: none. The formula counts the same matrix products as FlopCounterMode (2 FLOPs
per multiply-add, matmuls and attention only), so the counts must be equal exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.utils.flop_counter as fc
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models.flops import Flops, block_flops, client_flops, lora_parameters, part_flops, server_flops
from models.gpt2 import GPT2, PRESETS, build_config
from models.lora import LoRAConfig, apply_lora
from models.split import split_model

B, T, R = 2, 16, 4
TINY = build_config("tiny", embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
ALL_TARGETS = ("q", "k", "v", "attn_proj", "mlp_fc", "mlp_proj")

# CPU's default SDPA kernel (flash for CPU) has no formula in FlopCounterMode; give it the
# counter's own flash formulas (the backward recomputes the scores).
CPU_FLASH = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v),
}


def _lora_model(targets: tuple[str, ...]) -> GPT2:
    torch.manual_seed(0)
    model = GPT2(TINY)
    apply_lora(model, LoRAConfig(r=R, alpha=8.0, dropout=0.1, targets=targets))
    return model.train()  # LoRA dropout active, as in training


def _count(fn, mapping=None) -> int:
    with FlopCounterMode(display=False, custom_mapping=mapping or {}) as counter:
        fn()
    return counter.get_total_flops()


def _profile(part: GPT2, x: torch.Tensor, mapping=None) -> Flops:
    """Measured (forward, backward) FLOPs of one training pass of ``part`` on ``x``."""
    out: list[torch.Tensor] = []
    fwd = _count(lambda: out.append(part(x)), mapping)
    bwd = _count(lambda: out[0].sum().backward(), mapping)  # sum's backward is an expand: no FLOPs
    return Flops(fwd, bwd)


def test_hand_computed_tiny_client_cut1():
    """d = 64, T = 16, r = 4, LoRA on q and v, one block after the frozen embeddings."""
    d = 64
    fwd = 24 * d * d + 4 * T * d + 2 * (2 * R * d + 2 * R * d)  # 98304 + 4096 + 2048
    # c_attn's input gradient is skipped (the embeddings are frozen): c_proj 2d^2 + MLP 16d^2,
    # attention 8Td, per adapter dz + dB + dA = 6rd (no dx).
    bwd = 18 * d * d + 8 * T * d + 2 * (6 * R * d)
    assert (fwd, bwd) == (104448, 84992)
    assert client_flops(TINY, 1, T, R) == Flops(fwd, bwd)


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium"])
def test_docstring_closed_form(name):
    cfg = PRESETS[name]
    d, seq, r = cfg.n_embd, 64, 4
    for cut in (1, 3, cfg.n_layer - 1):
        f = client_flops(cfg, cut, seq, r)
        assert f.forward == cut * (24 * d * d + 4 * seq * d + 8 * d * r)
        assert f.backward == cut * (24 * d * d + 8 * seq * d + 16 * d * r) - 6 * d * d - 4 * d * r
    # The cut adds no compute: the server's first block pays its input gradient, as that
    # block does inside the whole model (the residual stream carries a gradient from block 0).
    whole = part_flops(cfg, cfg.n_layer, seq, r, head=True)
    assert client_flops(cfg, 3, seq, r) + server_flops(cfg, 3, seq, r) == whole
    assert whole.forward == cfg.n_layer * (24 * d * d + 4 * seq * d + 8 * d * r) + 2 * d * cfg.vocab_size


@pytest.mark.parametrize("targets", [("q", "v"), ALL_TARGETS, ("mlp_proj",)])
def test_matches_flop_counter_math_backend(targets):
    """Client and server parts at every cut of the tiny preset, autograd through math SDPA."""
    model = _lora_model(targets)
    x = torch.randint(0, TINY.vocab_size, (B, T))
    for cut in range(1, TINY.n_layer):
        client, server = split_model(model, cut)
        with sdpa_kernel(SDPBackend.MATH):
            got_client = _profile(client, x)
            h = client(x).detach().requires_grad_(True)
            got_server = _profile(server, h)
        assert got_client == client_flops(TINY, cut, T, R, targets).scale(B * T), (targets, cut)
        assert got_server == server_flops(TINY, cut, T, R, targets).scale(B * T), (targets, cut)
        assert got_client.backward > 0


def test_matches_flop_counter_default_cpu_kernel():
    """The kernel training really uses on CPU, counted with the flash formulas: 'recompute'."""
    model = _lora_model(("q", "v"))
    x = torch.randint(0, TINY.vocab_size, (B, T))
    for cut in (1, 3):
        client, _ = split_model(model, cut)
        got = _profile(client, x, CPU_FLASH)
        assert got == client_flops(TINY, cut, T, R, attention="recompute").scale(B * T)
        assert got != client_flops(TINY, cut, T, R, attention="math").scale(B * T)


def test_lora_parameter_count_matches_built_part():
    for targets in (("q", "v"), ALL_TARGETS):
        model = _lora_model(targets)
        for cut in (1, 2, 3):
            client, _ = split_model(model, cut)
            assert client.num_parameters(trainable_only=True) == lora_parameters(TINY, cut, R, targets)
    assert lora_parameters(PRESETS["gpt2"], 12, 1) == 36864  # the GPT2-S figure in docs/how-it-works.md
    assert lora_parameters(PRESETS["gpt2-medium"], 3, 4) == 49152


def test_no_lora_and_bad_inputs():
    f, g = block_flops(64, 8, 0, ("q", "v"), input_requires_grad=False)
    assert f == Flops(24 * 64 * 64 + 4 * 8 * 64, 0) and g is False  # nothing trainable: no backward
    with pytest.raises(ValueError, match="target"):
        client_flops(TINY, 1, T, R, ("q", "x"))
    with pytest.raises(ValueError, match="attention"):
        client_flops(TINY, 1, T, R, attention="fast")
    with pytest.raises(ValueError, match="n_blocks"):
        client_flops(TINY, 9, T, R)
    with pytest.raises(ValueError, match="n_positions"):
        client_flops(TINY, 1, 10_000, R)
