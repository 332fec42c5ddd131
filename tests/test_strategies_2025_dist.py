"""The 2025 strategies' distributed ``aggregate`` equals their plain maths.

One ``mp.spawn`` (gloo), as tests/test_strategies_dist.py: rank 0 is the idle server, ranks
1-2 are clients in a subgroup with weights 0.25 / 0.75. Every client perturbs its trainable
factors with its own noise (standing in for local training), calls ``aggregate`` and reports
what it held before and after (factors, the base rows each adapter adds to, the byte counts);
the tests redo the maths in this process.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.gpt2 import GPT2, GPT2Config
from models.lora import LoRAConfig, apply_lora
from runtime.strategies import ClientContext, build_strategy
from runtime.strategies.fedex import adapters_with_base, aggregate_fedex
from runtime.strategies.fedsa import aggregate_fedsa
from runtime.strategies.frlora import frlora_update, principal_factors
from runtime.strategies.rolora import aggregate_rolora

pytestmark = pytest.mark.slow

W = [0.25, 0.75]
R, OUT, IN, N = 4, 32, 32, 4  # 2 blocks x (q, v)
SCALING = 8.0 / R
FP32 = 4


def _model() -> GPT2:
    torch.manual_seed(0)  # the same base and A on every rank, as in the runtime
    model = GPT2(GPT2Config(vocab_size=53, n_positions=16, n_embd=32, n_layer=2, n_head=4))
    return apply_lora(model, LoRAConfig(r=R, alpha=8.0, dropout=0.0))


def _state(model) -> list[dict[str, torch.Tensor]]:
    """Per adapter: A, B and the base rows it adds to (clones)."""
    return [{"A": a.lora_A.detach().clone(), "B": a.lora_B.detach().clone(), "base": base.detach().clone()}
            for a, base in adapters_with_base(model)]


def _perturb(model, g: torch.Generator) -> None:
    """Local 'training': noise on every factor that is trainable now."""
    with torch.no_grad():
        for a, _ in adapters_with_base(model):
            for p in (a.lora_A, a.lora_B):
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g))


def _client(name: str, rank: int, group, rounds: int) -> list[dict]:
    model = _model()
    strategy = build_strategy(name)
    opt = torch.optim.AdamW(strategy.param_groups(model, 1e-3))
    ctx = ClientContext(module=model, optimizer=opt, client_index=rank - 1, n_clients=2, weights=W, group=group,
                        device=torch.device("cpu"), rank_budget=R, global_rank=R, seed=11)
    strategy.setup(ctx)
    g = torch.Generator().manual_seed(100 * rank + len(name))
    out = []
    for round_idx in range(1, rounds + 1):
        strategy.begin_round(ctx, round_idx)
        start = _state(model)
        _perturb(model, g)
        before = _state(model)
        stats = strategy.aggregate(ctx, round_idx)
        out.append({"start": start, "before": before, "after": _state(model), "stats": stats.as_dict(),
                    "init": [(B0.clone(), A0.clone()) for B0, A0 in getattr(strategy, "init", [])]})
    return out


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    group = dist.new_group(ranks=[1, 2])
    if rank > 0:
        results[rank] = {"fedex": _client("fedex", rank, group, 2), "fedsa": _client("fedsa", rank, group, 1),
                         "rolora": _client("rolora", rank, group, 2), "frlora": _client("frlora", rank, group, 2)}
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs() -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(3, port, results), nprocs=3, join=True)
    return {k: results[k] for k in (1, 2)}


def _model_weight(m: dict[str, torch.Tensor]) -> torch.Tensor:
    """The effective weight rows base + s·B·A of one adapter, (out, in)."""
    return m["base"] + SCALING * m["B"] @ m["A"]


def _average(c1: dict, c2: dict) -> torch.Tensor:
    return W[0] * _model_weight(c1) + W[1] * _model_weight(c2)


def test_fedex_equals_its_maths_and_the_average_model(runs):
    for r in range(2):
        b1, b2 = (runs[c]["fedex"][r]["before"] for c in (1, 2))
        for m in range(N):
            assert torch.equal(b1[m]["base"], b2[m]["base"])  # the same base going in, every round
            B, A, res = aggregate_fedex([(b1[m]["B"], b1[m]["A"]), (b2[m]["B"], b2[m]["A"])], W, SCALING)
            for c in (1, 2):
                after = runs[c]["fedex"][r]["after"][m]
                assert torch.allclose(after["B"], B, atol=1e-6) and torch.allclose(after["A"], A, atol=1e-6)
                assert torch.allclose(after["base"], b1[m]["base"] + res, atol=1e-5)
                assert torch.allclose(_model_weight(after), _average(b1[m], b2[m]), atol=1e-5)  # exact
    stats = runs[1]["fedex"][0]["stats"]
    assert stats["up_bytes"] == N * R * (OUT + IN) * FP32
    assert stats["down_bytes"] == N * (R * (OUT + IN) + OUT * IN) * FP32


def test_fedsa_averages_a_and_keeps_each_b(runs):
    b1, b2 = (runs[c]["fedsa"][0]["before"] for c in (1, 2))
    for m in range(N):
        (A,) = aggregate_fedsa([[b1[m]["A"]], [b2[m]["A"]]], W)
        for c, b in ((1, b1), (2, b2)):
            after = runs[c]["fedsa"][0]["after"][m]
            assert torch.allclose(after["A"], A, atol=1e-6)
            assert torch.equal(after["B"], b[m]["B"]) and torch.equal(after["base"], b[m]["base"])
        assert not torch.equal(runs[1]["fedsa"][0]["after"][m]["B"], runs[2]["fedsa"][0]["after"][m]["B"])
    for c in (1, 2):
        stats = runs[c]["fedsa"][0]["stats"]
        assert stats["up_bytes"] == stats["down_bytes"] == N * R * IN * FP32


def test_rolora_trains_b_then_a_and_is_exact(runs):
    for r, factor in enumerate(("B", "A")):
        rounds = [runs[c]["rolora"][r] for c in (1, 2)]
        frozen = "A" if factor == "B" else "B"
        for m in range(N):
            for x in rounds:
                assert torch.equal(x["before"][m][frozen], x["start"][m][frozen])  # the other factor did not move
            assert torch.equal(rounds[0]["start"][m][frozen], rounds[1]["start"][m][frozen])  # and is shared
            assert torch.equal(rounds[0]["start"][m][factor], rounds[1]["start"][m][factor])
            (F,) = aggregate_rolora([[x["before"][m][factor]] for x in rounds], W)
            for x in rounds:
                assert torch.allclose(x["after"][m][factor], F, atol=1e-6)
                assert torch.allclose(_model_weight(x["after"][m]),
                                      _average(rounds[0]["before"][m], rounds[1]["before"][m]), atol=1e-5)
        size = N * R * (OUT if factor == "B" else IN) * FP32
        assert all(x["stats"]["up_bytes"] == x["stats"]["down_bytes"] == size for x in rounds)


def test_frlora_merges_the_residual_product_and_restarts(runs):
    W0 = [m["base"] for m in _state(_model())]  # the pre-trained rows, rebuilt here
    for r in range(2):
        rounds = [runs[c]["frlora"][r] for c in (1, 2)]
        for m in range(N):
            B0, A0 = principal_factors(W0[m], R, SCALING)
            for x in rounds:
                assert torch.allclose(x["init"][m][0], B0) and torch.allclose(x["init"][m][1], A0)
                assert torch.equal(x["start"][m]["B"], x["init"][m][0])  # each round starts at (B0, A0)
                assert torch.equal(x["start"][m]["A"], x["init"][m][1])
            dW = frlora_update([(x["before"][m]["B"], x["before"][m]["A"]) for x in rounds], W, rounds[0]["init"][m],
                               SCALING)
            for x in rounds:
                after = x["after"][m]
                assert torch.allclose(after["base"], x["before"][m]["base"] + dW, atol=1e-5)
                assert torch.equal(after["B"], x["init"][m][0]) and torch.equal(after["A"], x["init"][m][1])
                assert torch.allclose(_model_weight(after), _average(rounds[0]["before"][m], rounds[1]["before"][m]),
                                      atol=1e-5)  # exact
            if r == 0:  # set-up left the model at W0
                assert torch.allclose(_model_weight(rounds[0]["start"][m]), W0[m], atol=1e-5)
    stats = runs[1]["frlora"][0]["stats"]
    assert stats["up_bytes"] == N * R * (OUT + IN) * FP32 and stats["down_bytes"] == N * OUT * IN * FP32
