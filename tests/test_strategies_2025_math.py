"""The 2025 strategies (fedex, fedsa, rolora, frlora) on tiny tensors: what makes each exact or
not, and their hooks on a tiny model in one process."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from models.gpt2 import GPT2, GPT2Config
from models.lora import LoRAConfig, apply_lora, iter_lora_adapters
from models.loss import model_loss
from runtime.strategies import STRATEGIES, ClientContext, build_strategy
from runtime.strategies.fedavg import aggregate_fedavg
from runtime.strategies.fedex import adapters_with_base, aggregate_fedex
from runtime.strategies.fedsa import aggregate_fedsa
from runtime.strategies.frlora import FRLoRA, frlora_update, principal_factors
from runtime.strategies.lora_a2 import round_factor
from runtime.strategies.rolora import RoLoRA, aggregate_rolora

W = [0.3, 0.7]
S = 2.5  # scaling


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _clients() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two clients' B (5, 2) and A (2, 6)."""
    return [_rand(5, 2, seed=1), _rand(5, 2, seed=2)], [_rand(2, 6, seed=3), _rand(2, 6, seed=4)]


def _average_model(W0: torch.Tensor, Bs: list[torch.Tensor], As: list[torch.Tensor]) -> torch.Tensor:
    """sum_k w_k (W0 + S·B_k A_k): the weighted average of the clients' effective weights."""
    return sum(w * (W0 + S * B @ A) for w, B, A in zip(W, Bs, As))


# ------------------------------------------------------------------ FedEx-LoRA


def test_fedex_residual_makes_the_global_update_exact_where_fedavg_is_not():
    Bs, As = _clients()
    W0 = _rand(5, 6, seed=9)
    B, A, R = aggregate_fedex(list(zip(Bs, As)), W, S)
    assert torch.allclose(B, aggregate_fedavg([[Bs[0]], [Bs[1]]], W)[0])  # the factors are FedAvg's
    assert torch.allclose(A, aggregate_fedavg([[As[0]], [As[1]]], W)[0])
    fedavg_model = W0 + S * B @ A
    assert (fedavg_model - _average_model(W0, Bs, As)).abs().max() > 1e-2  # FedAvg alone: inexact
    assert torch.allclose(W0 + R + S * B @ A, _average_model(W0, Bs, As), atol=1e-12)  # + residual: exact
    assert torch.linalg.matrix_rank(R) <= 3 * 2  # rank <= (K + 1)·r


def test_fedex_residual_vanishes_when_the_clients_agree():
    B, A = _rand(5, 2, seed=1), _rand(2, 6, seed=3)
    _, _, R = aggregate_fedex([(B, A), (B, A)], W, S)
    assert R.abs().max() < 1e-12


# ------------------------------------------------------------------ FedSA-LoRA


def test_fedsa_averages_a_only_and_is_personalised():
    Bs, As = _clients()
    (A_G,) = aggregate_fedsa([[As[0]], [As[1]]], W)
    assert torch.allclose(A_G, W[0] * As[0] + W[1] * As[1])
    models = [S * B @ A_G for B in Bs]  # each client: its own B with the shared A
    assert (models[0] - models[1]).abs().max() > 1e-2  # no single global model
    # Not the average of the clients' models either (B stays local): by design, not an exact aggregate.
    assert (models[0] - _average_model(torch.zeros(5, 6, dtype=torch.float64), Bs, As)).abs().max() > 1e-2


# ------------------------------------------------------------------ RoLoRA


@pytest.mark.parametrize("round_idx", [1, 2, 3, 4])
def test_rolora_alternates_b_first_and_is_exact_every_round(round_idx):
    factor = round_factor(round_idx)
    assert factor == ("B" if round_idx % 2 else "A")
    Bs, As = _clients()
    if factor == "B":  # A frozen and shared: the clients differ in B only
        As = [As[0], As[0]]
        (B,) = aggregate_rolora([[Bs[0]], [Bs[1]]], W)
        got = S * B @ As[0]
    else:  # B frozen and shared
        Bs = [Bs[0], Bs[0]]
        (A,) = aggregate_rolora([[As[0]], [As[1]]], W)
        got = S * Bs[0] @ A
    zero = torch.zeros(5, 6, dtype=torch.float64)
    assert torch.allclose(got, _average_model(zero, Bs, As), atol=1e-12)


def _tiny_lora_model(seed: int = 3, dropout: float = 0.0) -> GPT2:
    torch.manual_seed(seed)
    model = GPT2(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=3, n_head=4))
    return apply_lora(model, LoRAConfig(r=4, alpha=8.0, dropout=dropout))


def _ctx(model, strategy, opt=None) -> ClientContext:
    opt = opt or torch.optim.AdamW(strategy.param_groups(model, 1e-2), weight_decay=0.5, foreach=False)
    return ClientContext(module=model, optimizer=opt, client_index=0, n_clients=1, weights=[1.0], group=None,
                         device=torch.device("cpu"), rank_budget=4, global_rank=4, seed=0)


def _step(model, opt, gen: torch.Generator) -> None:
    """One local step as the runtime takes it (grads set to None afterwards)."""
    ids = torch.randint(0, 97, (2, 12), generator=gen)
    model_loss(model, ids, torch.roll(ids, -1, 1), torch.ones(2, 12)).backward()
    opt.step()
    for p in model.parameters():
        p.grad = None


def test_an_a_round_from_the_initial_adapter_would_train_nothing():
    model = _tiny_lora_model()  # B = 0 at init
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    model_loss(model, ids, torch.roll(ids, -1, 1), torch.ones(2, 12)).backward()
    adapters = [a for _, a in iter_lora_adapters(model)]
    assert all(a.lora_A.grad.abs().max() == 0 for a in adapters)  # why RoLoRA trains B first
    assert any(a.lora_B.grad.abs().max() > 0 for a in adapters)


def test_rolora_frozen_factor_never_moves_under_adamw_with_weight_decay():
    model = _tiny_lora_model()
    s = RoLoRA()
    ctx = _ctx(model, s)
    s.setup(ctx)
    gen = torch.Generator().manual_seed(1)
    adapters = [a for _, a in iter_lora_adapters(model)]
    for round_idx in (1, 2):
        s.begin_round(ctx, round_idx)
        frozen = [a.lora_A if s.factor == "B" else a.lora_B for a in adapters]
        trained = [a.lora_B if s.factor == "B" else a.lora_A for a in adapters]
        before = [p.detach().clone() for p in frozen + trained]
        for _ in range(3):
            _step(model, ctx.optimizer, gen)
        assert all(torch.equal(p, b) for p, b in zip(frozen, before[:len(frozen)]))
        assert all(not torch.equal(p, b) for p, b in zip(trained, before[len(frozen):]))


def test_rolora_state_round_trips_for_a_mid_round_resume():
    s = RoLoRA()
    s.setup(_ctx(_tiny_lora_model(), s))
    s.begin_round(_ctx(_tiny_lora_model(), s), 2)
    fresh = _tiny_lora_model()
    t = RoLoRA()
    t.setup(_ctx(fresh, t))
    t.load_state_dict(s.state_dict())
    assert t.factor == "A"
    assert all(a.lora_A.requires_grad and not a.lora_B.requires_grad for _, a in iter_lora_adapters(fresh))


# ------------------------------------------------------------------ FRLoRA


def test_principal_factors_are_the_top_r_truncation():
    W0 = _rand(7, 5, seed=5)
    B0, A0 = principal_factors(W0, 2, S)
    assert B0.shape == (7, 2) and A0.shape == (2, 5) and B0.dtype == W0.dtype
    sv = torch.linalg.svdvals(W0)
    assert torch.isclose(torch.linalg.matrix_norm(W0 - S * B0 @ A0, ord=2), sv[2], atol=1e-10)  # best rank 2
    assert torch.allclose(torch.linalg.svdvals(S * B0 @ A0)[:2], sv[:2], atol=1e-10)


def test_frlora_update_gives_the_weighted_average_model_where_fedavg_does_not():
    Bs, As = _clients()
    W0 = _rand(5, 6, seed=9)
    B0, A0 = principal_factors(W0, 2, S)
    base = W0 - S * B0 @ A0  # set-up: the adapter carries W0's principal part
    # Client k's model: base + S·B_k A_k (trained from (B0, A0)).
    models = [base + S * B @ A for B, A in zip(Bs, As)]
    dW = frlora_update(list(zip(Bs, As)), W, (B0, A0), S)
    restarted = base + dW + S * B0 @ A0  # every client after the round
    assert torch.allclose(restarted, W[0] * models[0] + W[1] * models[1], atol=1e-12)  # exact
    B, A = aggregate_fedavg([[Bs[0], As[0]], [Bs[1], As[1]]], W)
    assert ((base + S * B @ A) - restarted).abs().max() > 1e-2  # FedAvg of the same factors: not


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _logits(model, seed: int = 7) -> torch.Tensor:
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(ids)


def test_frlora_setup_keeps_the_model_and_a_round_restarts_it(one_process_group):
    model = _tiny_lora_model()  # fresh adapters (B = 0), as the runtime calls setup
    before = _logits(model)
    s = FRLoRA()
    ctx = _ctx(model, s)
    s.setup(ctx)
    assert torch.allclose(_logits(model), before, atol=1e-4)
    for (a, base), (B0, A0) in zip(adapters_with_base(model), s.init):
        assert torch.equal(a.lora_B, B0) and torch.equal(a.lora_A, A0)
        assert torch.linalg.matrix_norm(a.delta_weight(), ord=2) > torch.linalg.matrix_norm(base, ord=2) / 2
    gen = torch.Generator().manual_seed(2)
    model.train()
    for _ in range(2):
        _step(model, ctx.optimizer, gen)
    trained = _logits(model)
    assert (trained - before).abs().max() > 1e-3
    stats = s.aggregate(ctx, 1)  # one client: the average model is its own
    assert torch.allclose(_logits(model), trained, atol=1e-4)
    for (a, _), (B0, A0) in zip(adapters_with_base(model), s.init):
        assert torch.equal(a.lora_B, B0) and torch.equal(a.lora_A, A0)  # restarted
        assert a.lora_A not in ctx.optimizer.state and a.lora_B not in ctx.optimizer.state
    n = 6 * 4 * (32 + 32)
    assert stats.up_params == n and stats.up_bytes == 4 * n and stats.down_bytes == 4 * 6 * 32 * 32
    t = FRLoRA()
    t.setup(_ctx(_tiny_lora_model(), t))
    t.load_state_dict(s.state_dict())
    assert all(torch.equal(x, y) for p, q in zip(s.init, t.init) for x, y in zip(p, q))


def test_fedex_in_one_process_keeps_the_model_and_accounts(one_process_group):
    model = _tiny_lora_model()
    with torch.no_grad():
        for _, a in iter_lora_adapters(model):
            a.lora_B.normal_()
    before = _logits(model)
    s = build_strategy("fedex")
    stats = s.aggregate(_ctx(model, s), 1)
    assert torch.allclose(_logits(model), before, atol=1e-5)  # one client: residual 0
    n = 6 * 4 * (32 + 32)
    assert stats.up_bytes == 4 * n and stats.down_bytes == 4 * (n + 6 * 32 * 32)


def test_registry_flags():
    assert {"fedex", "fedsa", "rolora", "frlora"} <= set(STRATEGIES)
    assert STRATEGIES["fedex"].modifies_base and STRATEGIES["frlora"].modifies_base
    assert not STRATEGIES["fedsa"].modifies_base and not STRATEGIES["rolora"].modifies_base
