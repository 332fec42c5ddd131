"""Aggregation strategies with tiny tensors: exactness of the maths, LoRA-A2's selection and masking."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from models.gpt2 import GPT2, GPT2Config
from models.lora import LoRAAdapter, LoRAConfig, apply_lora, iter_lora_adapters
from models.loss import model_loss
from runtime.config import ConfigError, validate_for_world
from runtime.config.parse import build_config
from runtime.strategies import STRATEGIES, ClientContext, build_strategy
from runtime.strategies.fedavg import aggregate_fedavg
from runtime.strategies.ffa import aggregate_ffa
from runtime.strategies.flexlora import aggregate_flexlora, truncate_flexlora
from runtime.strategies.flora import stack_flora
from runtime.strategies.hetlora import aggregate_hetlora
from runtime.strategies.lora_a2 import (
    LoRAA2,
    aggregate_lora_a2,
    rank_scores,
    round_factor,
    select_slots,
    slot_view,
    sparse_payload,
)

W = [0.3, 0.7]


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _weighted_products(Bs: list[torch.Tensor], As: list[torch.Tensor]) -> torch.Tensor:
    return sum(w * B @ A for w, B, A in zip(W, Bs, As))


# ------------------------------------------------------------------ exactness of the products


def test_fedavg_product_is_not_the_average_of_products():
    Bs, As = [_rand(5, 2, seed=1), _rand(5, 2, seed=2)], [_rand(2, 6, seed=3), _rand(2, 6, seed=4)]
    B, A = aggregate_fedavg([[Bs[0], As[0]], [Bs[1], As[1]]], W)[0], aggregate_fedavg([[As[0]], [As[1]]], W)[0]
    err = (B @ A - _weighted_products(Bs, As)).abs().max()
    assert err > 1e-2  # (sum w B)(sum w A) != sum w B A


def test_ffa_product_is_exact():
    A = _rand(2, 6, seed=3)  # shared, frozen
    Bs = [_rand(5, 2, seed=1), _rand(5, 2, seed=2)]
    (B,) = aggregate_ffa([[Bs[0]], [Bs[1]]], W)
    assert torch.allclose(B @ A, _weighted_products(Bs, [A, A]), atol=1e-12)


@pytest.mark.parametrize("round_idx", [1, 2, 3, 4])
def test_lora_a2_product_is_exact_every_round(round_idx):
    factor = round_factor(round_idx)
    assert factor == ("B" if round_idx % 2 else "A")
    B0, A0 = _rand(5, 3, seed=round_idx), _rand(3, 6, seed=10 + round_idx)  # the global adapter
    g = B0 if factor == "B" else A0
    masks = [torch.tensor([[True, False, True]]), torch.tensor([[False, True, False]])]  # (N=1, r=3)
    deltas = [[_rand(*g.shape, seed=20 + k) * slot_view(masks[k][0], factor)] for k in range(2)]
    (new,) = aggregate_lora_a2([g], deltas, masks, W, factor)
    locals_ = [g + d[0] for d in deltas]  # what each client trained
    if factor == "B":
        expected, got = _weighted_products(locals_, [A0, A0]), new @ A0
    else:
        expected, got = _weighted_products([B0, B0], locals_), B0 @ new
    assert torch.allclose(got, expected, atol=1e-12)


def test_flora_stacking_reproduces_the_weighted_sum_of_products():
    ranks = [1, 3]
    Bs = [_rand(5, r, seed=1 + r) for r in ranks]
    As = [_rand(r, 6, seed=7 + r) for r in ranks]
    B_s, A_s = stack_flora(list(zip(Bs, As)), W)
    assert B_s.shape == (5, 4) and A_s.shape == (4, 6)  # rank sum r_k
    assert torch.allclose(B_s @ A_s, _weighted_products(Bs, As), atol=1e-12)


def test_flexlora_reconstructs_delta_w_when_the_rank_suffices():
    deltas = [_rand(6, 1, seed=1) @ _rand(1, 7, seed=2), _rand(6, 2, seed=3) @ _rand(2, 7, seed=4)]
    dW = aggregate_flexlora(deltas, W)
    assert torch.allclose(dW, sum(w * d for w, d in zip(W, deltas)))
    assert torch.linalg.matrix_rank(dW) == 3
    scaling = 2.5
    B, A = truncate_flexlora(dW, 3, scaling, r_alloc=4)  # client rank 3 >= rank(dW)
    assert B.shape == (6, 4) and A.shape == (4, 7) and B[:, 3].abs().max() == 0 and A[3].abs().max() == 0
    assert torch.allclose(scaling * B @ A, dW, atol=1e-10)
    B2, A2 = truncate_flexlora(dW, 2, scaling, r_alloc=4)  # below rank(dW): the best rank-2 approximation
    s = torch.linalg.svdvals(dW)
    assert torch.isclose(torch.linalg.matrix_norm(scaling * B2 @ A2 - dW, ord=2), s[2], atol=1e-10)


def test_hetlora_zero_pads_then_averages():
    B1, A1 = torch.ones(2, 1), torch.ones(1, 3)  # client 1: rank 1
    B2, A2 = 2 * torch.ones(2, 2), 2 * torch.ones(2, 3)  # client 2: rank 2
    B, A = aggregate_hetlora([(B1, A1), (B2, A2)], [0.25, 0.75], r_alloc=3)
    assert torch.equal(B, torch.tensor([[1.75, 1.5, 0.0]] * 2))  # rank 0: .25*1 + .75*2; rank 1: .75*2 + 0
    assert torch.equal(A, torch.tensor([[1.75] * 3, [1.5] * 3, [0.0] * 3]))


# ------------------------------------------------------------------ LoRA-A2 selection and masking


def test_rank_scores_formula():
    dB = torch.tensor([[3.0, 0.0], [4.0, 1.0]])  # column norms 5, 1
    A = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # row norms 1, 2
    assert torch.allclose(rank_scores(dB, A, "B"), torch.tensor([5.0, 2.0]))
    dA = torch.tensor([[0.0, 6.0, 8.0], [1.0, 0.0, 0.0]])  # row norms 10, 1
    assert torch.allclose(rank_scores(dA, dB, "A"), torch.tensor([50.0, 1.0]))


def test_select_slots_is_global_across_modules():
    scores = torch.tensor([[5.0, 4.0, 0.1], [1.0, 0.5, 3.0]])
    keep = select_slots(scores, 3)
    assert keep.tolist() == [[True, True, False], [False, False, True]]
    assert select_slots(torch.tensor([[9.0, 8.0], [1.0, 0.0]]), 2).tolist() == [[True, True], [False, False]]


def test_sparse_payload_counts_values_and_int32_indices():
    keep = torch.tensor([[True, True, False], [False, False, True]])
    params, nbytes = sparse_payload(keep, [10, 7], element_size=4)  # slot sizes of the two modules
    assert params == 2 * 10 + 7
    assert nbytes == params * 4 + 3 * 4


class _Two(nn.Module):
    """Two bare adapters (in 3, out 2, r 2): just enough for the strategy hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.m0 = LoRAAdapter(3, 2, r=2, alpha=2.0)
        self.m1 = LoRAAdapter(3, 2, r=2, alpha=2.0)


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_lora_a2_selects_by_the_hand_built_scores_and_accounts_bytes(one_process_group):
    mod = _Two()
    with torch.no_grad():
        mod.m0.lora_A.copy_(torch.tensor([[1.0, 0, 0], [0, 2.0, 0]]))  # row norms 1, 2
        mod.m1.lora_A.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))  # row norms 1, 1
    probe_dB = {"m0": torch.tensor([[3.0, 0.0], [4.0, 1.0]]),  # scores 5, 2
                "m1": torch.tensor([[1.0, 0.0], [0.0, 0.5]])}  # scores 1, .5

    def probe(n: int) -> None:
        with torch.no_grad():
            mod.m0.lora_B.add_(probe_dB["m0"])
            mod.m1.lora_B.add_(probe_dB["m1"])

    s = LoRAA2(lr_b_ratio=5.0, probe_steps=1)
    opt = torch.optim.AdamW(s.param_groups(mod, 0.1))
    ctx = ClientContext(module=mod, optimizer=opt, client_index=0, n_clients=1, weights=[1.0], group=None,
                        device=torch.device("cpu"), rank_budget=1, global_rank=2, seed=0, probe=probe)
    s.setup(ctx)
    s.begin_round(ctx, 1)
    assert s.mask.tolist() == [[True, True], [False, False]]  # r_k·N = 2 slots, both in module m0
    assert mod.m0.lora_B.abs().max() == 0 and mod.m1.lora_B.abs().max() == 0  # reset to the global B = 0
    assert not mod.m0.lora_A.requires_grad and mod.m0.lora_B.requires_grad
    with torch.no_grad():
        mod.m0.lora_B.add_(1.0)  # "local training" of the selected slots
    stats = s.aggregate(ctx, 1)
    assert stats.up_params == 2 * 2 and stats.up_bytes == 2 * 2 * 4 + 2 * 4  # 2 columns of out=2, fp32 + int32
    assert stats.down_params == stats.up_params  # one client: the union is its own selection
    assert torch.equal(mod.m0.lora_B, torch.ones(2, 2))
    assert opt.param_groups[1]["lr"] == pytest.approx(5 * opt.param_groups[0]["lr"])  # lr_B = 5 lr_A


def _tiny_lora_model() -> GPT2:
    torch.manual_seed(3)
    model = GPT2(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=3, n_head=4))
    return apply_lora(model, LoRAConfig(r=4, alpha=8.0, dropout=0.0))


def _snapshot(opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v)} for p in params]


def test_lora_a2_masked_entries_never_move_under_adamw_with_weight_decay():
    model = _tiny_lora_model().train()
    adapters = [a for _, a in iter_lora_adapters(model)]
    n = len(adapters)
    assert n == 6
    s = LoRAA2(lr_b_ratio=5.0, probe_steps=2)
    opt = torch.optim.AdamW(s.param_groups(model, 1e-2), weight_decay=0.5, foreach=False)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        ids = torch.randint(0, 97, (2, 12), generator=gen)
        model_loss(model, ids, torch.roll(ids, -1, 1), torch.ones(2, 12)).backward()
        s.before_step(ctx)
        opt.step()
        s.after_step(ctx)
        opt.zero_grad(set_to_none=True)

    ctx = ClientContext(module=model, optimizer=opt, client_index=0, n_clients=1, weights=[1.0], group=None,
                        device=torch.device("cpu"), rank_budget=1, global_rank=4, seed=0,
                        probe=lambda k: [step() for _ in range(k)])
    s.setup(ctx)
    masks: dict[int, torch.Tensor] = {}
    for round_idx in (1, 2, 3):
        factor = round_factor(round_idx)
        params = [a.lora_B if factor == "B" else a.lora_A for a in adapters]
        before_vals = [p.detach().clone() for p in params]
        before_state = _snapshot(opt, params)
        s.begin_round(ctx, round_idx)  # probes 2 real steps, then resets
        assert s.mask.shape == (n, 4) and int(s.mask.sum()) == 1 * n  # r_k·N slots
        for p, v in zip(params, before_vals):
            assert torch.equal(p, v)  # the probe is undone ...
        for p, st in zip(params, before_state):
            now = {k: v for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v)}
            assert now.keys() == st.keys() and all(torch.equal(now[k], st[k]) for k in st)  # ... state too
        if round_idx == 3:
            # Select the complement of round 1's slots: the now-masked entries hold non-zero
            # Adam moments from round 1, which must survive untouched.
            s.mask = ~masks[1]
        mask = masks[round_idx] = s.mask.clone()
        for _ in range(4):
            step()
        moved = 0
        for m, p in enumerate(params):
            keep = slot_view(mask[m], factor).expand_as(p)
            assert torch.equal(p[~keep], before_vals[m][~keep])  # values, weight decay included
            for k, v in opt.state[p].items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    old = before_state[m].get(k, torch.zeros_like(v))
                    assert torch.equal(v[~keep], old[~keep]), (round_idx, m, k)
            moved += int((p[keep] != before_vals[m][keep]).sum())
        assert moved > 0  # the selected slots did train
        if round_idx == 3:
            assert any(bool(opt.state[p]["exp_avg"][~slot_view(mask[m], factor).expand_as(p)].abs().sum() > 0)
                       for m, p in enumerate(params))  # the check above guarded non-zero moments


def test_lora_a2_state_round_trips_for_a_mid_round_resume():
    model = _tiny_lora_model()
    s = LoRAA2()
    gen = torch.Generator().manual_seed(1)

    def probe(n: int) -> None:
        with torch.no_grad():
            for _, a in iter_lora_adapters(model):
                a.lora_A.add_(torch.randn(a.lora_A.shape, generator=gen))

    ctx = ClientContext(module=model, optimizer=torch.optim.AdamW(s.param_groups(model, 1e-3)), client_index=0,
                        n_clients=1, weights=[1.0], group=None, device=torch.device("cpu"), rank_budget=2,
                        global_rank=4, seed=0, probe=probe)
    s.setup(ctx)
    s.begin_round(ctx, 2)  # an A-round
    state = s.state_dict()
    fresh_model = _tiny_lora_model()
    t = LoRAA2()
    t.setup(ClientContext(module=fresh_model, optimizer=torch.optim.AdamW(t.param_groups(fresh_model, 1e-3)),
                          client_index=0, n_clients=1, weights=[1.0], group=None, device=torch.device("cpu"),
                          rank_budget=2, global_rank=4, seed=0))
    t.load_state_dict(state)
    assert t.factor == "A" and torch.equal(t.mask, s.mask) and int(t.mask.sum()) == 2 * 6
    assert all(torch.equal(x, y) for x, y in zip(t.global_factors, s.global_factors))
    assert all(a.lora_A.requires_grad and not a.lora_B.requires_grad for _, a in iter_lora_adapters(fresh_model))


def test_lora_a2_full_budget_skips_the_probe():
    model = _tiny_lora_model()
    s = LoRAA2()
    opt = torch.optim.AdamW(s.param_groups(model, 1e-3))

    def probe(n: int) -> None:
        raise AssertionError("no probe when r_k = r_G")

    ctx = ClientContext(module=model, optimizer=opt, client_index=0, n_clients=1, weights=[1.0], group=None,
                        device=torch.device("cpu"), rank_budget=4, global_rank=4, seed=0, probe=probe)
    s.begin_round(ctx, 1)
    assert s.mask is None and s.n_selected == 6 * 4


# ------------------------------------------------------------------ registry and bad input


def test_registry_and_options():
    assert set(STRATEGIES) == {"fedavg", "ffa", "lora-a2", "flexlora", "hetlora", "flora", "fedex", "fedsa", "rolora",
                               "frlora"}
    cfg = build_config(["--fed.strategy=lora-a2", "--fed.lr_b_ratio=3", "--fed.probe_steps=7"])
    s = build_strategy(cfg.fed.strategy, cfg.fed)
    assert isinstance(s, LoRAA2) and s.lr_b_ratio == 3.0 and s.probe_steps == 7
    assert STRATEGIES["flora"].modifies_base and not STRATEGIES["hetlora"].modifies_base


@pytest.mark.parametrize("argv, world, needle", [
    (["--fed.strategy=nope"], 3, "fed.strategy unknown"),
    (["--fed.client_ranks=1,2,4"], 3, "gives 3 rank(s) but there are 2 clients"),
    (["--lora.r=4", "--fed.client_ranks=2,8"], 3, "every r_k must be <= r_G"),
    (["--fed.client_ranks=0,2"], 3, "must all be >= 1"),
])
def test_bad_strategy_input_is_a_clear_config_error(argv, world, needle):
    with pytest.raises(ConfigError, match=None) as e:
        validate_for_world(build_config(["--method=fedlora", *argv]), world, 4)
    assert needle in str(e.value)


# ------------------------------------------------------------------ launch.heterogeneity (no runs)


def test_heterogeneity_grid_args_and_table():
    from launch.heterogeneity import markdown_table, parse_args, train_args

    a, extra = parse_args(["--ranks", "1,4", "--clients", "2", "--global-rank", "8", "--", "--train.lr=1e-3"])
    assert extra == ["--train.lr=1e-3"] and a.ranks == [1, 4]
    args = train_args(a, "dirichlet:0.5", "lora-a2", 4)
    assert "--lora.r=8" in args and "--fed.client_ranks=4,4" in args and "--data.partition=dirichlet:0.5" in args
    a2, _ = parse_args(["--strategies", "ffa"])
    assert "--lora.r=2" in train_args(a2, "iid", "ffa", 2) and not any("client_ranks" in x for x in train_args(
        a2, "iid", "ffa", 2))
    with pytest.raises(SystemExit):
        parse_args(["--strategies", "nope"])
    rows = [{"partition": "iid", "strategy": "ffa", "rank": 2, "rc": 0, "val_loss": 2.0, "ppl": 7.389,
             "up_bytes_per_client": 2048, "eval": {"BLEU": 0.5}},
            {"partition": "iid", "strategy": "flora", "rank": 2, "rc": 1, "error": "boom"}]
    table = markdown_table(rows, with_eval=True).splitlines()
    assert table[0].startswith("| partition | strategy | rank | val loss | ppl | up / client (KB) | BLEU")
    assert table[2] == "| iid | ffa | 2 | 2.0000 | 7.39 | 2.0 | 0.5000 | – | – | – | – | – / – |"
    assert "failed: boom" in table[3]
