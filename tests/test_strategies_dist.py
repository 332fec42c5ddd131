"""Each strategy's distributed ``aggregate`` equals its plain maths.

One ``mp.spawn`` (gloo): rank 0 is the idle server, ranks 1-2 are clients in a subgroup
with weights 0.25 / 0.75 and rank budgets 2 / 4 (r_G = 4). Every client perturbs its
adapters with its own noise (standing in for local training), calls ``aggregate`` and
reports what it held before and after; the tests redo the maths in this process.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.gpt2 import GPT2, GPT2Config
from models.lora import LoRAConfig, apply_lora, iter_lora_adapters, iter_lora_linears
from runtime.strategies import ClientContext, build_strategy
from runtime.strategies.flexlora import aggregate_flexlora, truncate_flexlora
from runtime.strategies.flora import stack_flora
from runtime.strategies.hetlora import aggregate_hetlora
from runtime.strategies.lora_a2 import aggregate_lora_a2, slot_view

pytestmark = pytest.mark.slow

W = [0.25, 0.75]
RANKS = [2, 4]
R_G, OUT, IN, N = 4, 32, 32, 4  # 2 blocks x (q, v)
PLAIN = ("fedavg", "ffa", "hetlora", "flexlora", "flora")


def _model() -> GPT2:
    torch.manual_seed(0)  # the same base and A on every rank, as in the runtime
    model = GPT2(GPT2Config(vocab_size=53, n_positions=16, n_embd=32, n_layer=2, n_head=4))
    return apply_lora(model, LoRAConfig(r=R_G, alpha=8.0, dropout=0.0))


def _ctx(model, strategy, rank: int, group, probe=None) -> ClientContext:
    opt = torch.optim.AdamW(strategy.param_groups(model, 1e-3))
    return ClientContext(module=model, optimizer=opt, client_index=rank - 1, n_clients=2, weights=W, group=group,
                         device=torch.device("cpu"), rank_budget=RANKS[rank - 1], global_rank=R_G, seed=11,
                         probe=probe)


def _state(model) -> dict[str, torch.Tensor]:
    out = {f"{n}.{k}": t.detach().clone() for n, a in iter_lora_adapters(model)
           for k, t in (("A", a.lora_A), ("B", a.lora_B), ("mask", a.rank_mask))}
    out.update({f"{n}.adapters.{k}.base": layer.base_rows(k).detach().clone()
                for n, layer in iter_lora_linears(model) for k in layer.adapters})
    return out


def _plain_strategy(name: str, rank: int, group) -> dict:
    model = _model()
    strategy = build_strategy(name)
    ctx = _ctx(model, strategy, rank, group)
    strategy.setup(ctx)
    g = torch.Generator().manual_seed(100 * rank + len(name))
    with torch.no_grad():
        for _, a in iter_lora_adapters(model):
            keep = a.rank_mask
            if a.lora_A.requires_grad:
                a.lora_A.add_(torch.randn(a.lora_A.shape, generator=g) * keep[:, None])
            a.lora_B.add_(torch.randn(a.lora_B.shape, generator=g) * keep[None, :])
    before = _state(model)
    stats = strategy.aggregate(ctx, 1)
    return {"before": before, "after": _state(model), "stats": stats.as_dict()}


def _lora_a2(rank: int, group) -> list[dict]:
    model = _model()
    strategy = build_strategy("lora-a2")
    g = torch.Generator().manual_seed(7 * rank)

    def probe(n: int) -> None:  # "training" of the round's factor, unmasked
        with torch.no_grad():
            for p in strategy._trained(ctx):
                p.add_(torch.randn(p.shape, generator=g))

    ctx = _ctx(model, strategy, rank, group, probe)
    strategy.setup(ctx)
    rounds = []
    for round_idx in (1, 2):
        strategy.begin_round(ctx, round_idx)
        params = strategy._trained(ctx)
        start = [p.detach().clone() for p in params]
        mask = strategy.mask if strategy.mask is not None else torch.ones(N, R_G, dtype=torch.bool)
        with torch.no_grad():  # local training moves only the selected slots
            for p, keep in zip(params, mask):
                p.add_(torch.randn(p.shape, generator=g) * slot_view(keep, strategy.factor))
        local = [p.detach().clone() for p in params]
        stats = strategy.aggregate(ctx, round_idx)
        rounds.append({"factor": strategy.factor, "start": start, "local": local, "mask": mask.clone(),
                       "after": [p.detach().clone() for p in params],
                       "other": [o.detach().clone() for o in strategy._other(ctx)], "stats": stats.as_dict()})
    return rounds


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    group = dist.new_group(ranks=[1, 2])
    if rank > 0:
        out = {name: _plain_strategy(name, rank, group) for name in PLAIN}
        out["lora-a2"] = _lora_a2(rank, group)
        results[rank] = out
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


def _modules(state: dict) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".A")})


def _fp32(params_per_module: int) -> int:
    return params_per_module * N * 4


def test_fedavg(runs):
    b1, b2 = runs[1]["fedavg"]["before"], runs[2]["fedavg"]["before"]
    for k in b1:
        if k.endswith((".A", ".B")):
            expected = W[0] * b1[k] + W[1] * b2[k]
            for c in (1, 2):
                assert torch.allclose(runs[c]["fedavg"]["after"][k], expected, atol=1e-6), k
    assert runs[1]["fedavg"]["stats"]["up_bytes"] == _fp32(R_G * (OUT + IN))


def test_ffa(runs):
    b1, b2 = runs[1]["ffa"]["before"], runs[2]["ffa"]["before"]
    for m in _modules(b1):
        A = b1[f"{m}.A"]
        assert torch.equal(A, b2[f"{m}.A"])  # shared init, never trained
        for c in (1, 2):
            after = runs[c]["ffa"]["after"]
            assert torch.equal(after[f"{m}.A"], A)
            assert torch.allclose(after[f"{m}.B"], W[0] * b1[f"{m}.B"] + W[1] * b2[f"{m}.B"], atol=1e-6)
            exact = W[0] * b1[f"{m}.B"] @ A + W[1] * b2[f"{m}.B"] @ A
            assert torch.allclose(after[f"{m}.B"] @ A, exact, atol=1e-5)
    assert runs[1]["ffa"]["stats"]["up_bytes"] == _fp32(R_G * OUT)  # B only; r_k ignored


def test_hetlora(runs):
    b = [runs[c]["hetlora"]["before"] for c in (1, 2)]
    for m in _modules(b[0]):
        factors = [(b[k][f"{m}.B"][:, :r], b[k][f"{m}.A"][:r]) for k, r in enumerate(RANKS)]
        B, A = aggregate_hetlora(factors, W, R_G)
        for k, r in enumerate(RANKS):
            after = runs[k + 1]["hetlora"]["after"]
            assert torch.allclose(after[f"{m}.B"][:, :r], B[:, :r], atol=1e-6)
            assert torch.allclose(after[f"{m}.A"][:r], A[:r], atol=1e-6)
            assert after[f"{m}.B"][:, r:].abs().sum() == 0 and after[f"{m}.A"][r:].abs().sum() == 0
            assert after[f"{m}.mask"].tolist() == [1.0] * r + [0.0] * (R_G - r)
    for k, r in enumerate(RANKS):
        stats = runs[k + 1]["hetlora"]["stats"]
        assert stats["up_bytes"] == stats["down_bytes"] == _fp32(r * (OUT + IN))


def test_flexlora(runs):
    b = [runs[c]["flexlora"]["before"] for c in (1, 2)]
    scaling = 8.0 / R_G
    for m in _modules(b[0]):
        deltas = [scaling * b[k][f"{m}.B"] @ (b[k][f"{m}.A"] * b[k][f"{m}.mask"][:, None]) for k in (0, 1)]
        dW = aggregate_flexlora(deltas, W)
        for k, r in enumerate(RANKS):
            after = runs[k + 1]["flexlora"]["after"]
            B, A = truncate_flexlora(dW, r, scaling, R_G)
            got = scaling * after[f"{m}.B"] @ after[f"{m}.A"]
            assert torch.allclose(got, scaling * B @ A, atol=1e-4)
            if r == R_G:  # rank(dW) <= 2 + 4 > 4: the r_G client gets the best rank-4 fit, not dW
                s = torch.linalg.svdvals(dW)
                assert torch.isclose(torch.linalg.matrix_norm(got - dW, ord=2), s[R_G], atol=1e-4)
    for k, r in enumerate(RANKS):
        assert runs[k + 1]["flexlora"]["stats"]["up_bytes"] == _fp32(r * (OUT + IN))


def test_flora(runs):
    b = [runs[c]["flora"]["before"] for c in (1, 2)]
    scaling = 8.0 / R_G
    for m in _modules(b[0]):
        factors = [(b[k][f"{m}.B"][:, :r], b[k][f"{m}.A"][:r]) for k, r in enumerate(RANKS)]
        B_s, A_s = stack_flora(factors, W)
        exact = sum(w * B @ A for w, (B, A) in zip(W, factors))
        assert torch.allclose(B_s @ A_s, exact, atol=1e-5)
        for k in (0, 1):
            after = runs[k + 1]["flora"]["after"]
            assert torch.allclose(after[f"{m}.base"], b[k][f"{m}.base"] + scaling * exact, atol=1e-5)
            assert after[f"{m}.B"].abs().sum() == 0  # fresh adapters
            assert not torch.equal(after[f"{m}.A"][:1], b[k][f"{m}.A"][:1])  # re-initialised A ...
        a1, a2 = (runs[c]["flora"]["after"][f"{m}.A"] for c in (1, 2))
        assert torch.equal(a1[:2], a2[:2])  # ... from a seed every client shares (client 1 uses 2 ranks)
        assert torch.equal(runs[1]["flora"]["after"][f"{m}.base"], runs[2]["flora"]["after"][f"{m}.base"])
    for k, r in enumerate(RANKS):
        stats = runs[k + 1]["flora"]["stats"]
        assert stats["up_bytes"] == _fp32(r * (OUT + IN)) + 4
        assert stats["down_bytes"] == _fp32(sum(RANKS) * (OUT + IN)) + 4 * 2


def test_lora_a2(runs):
    for i, factor in enumerate(("B", "A")):
        r1, r2 = runs[1]["lora-a2"][i], runs[2]["lora-a2"][i]
        assert r1["factor"] == r2["factor"] == factor
        assert int(r1["mask"].sum()) == RANKS[0] * N and int(r2["mask"].sum()) == RANKS[1] * N  # r_k·N slots
        for m in range(N):
            assert torch.equal(r1["start"][m], r2["start"][m])  # the same global factor on both
            assert torch.equal(r1["other"][m], r2["other"][m])  # the frozen factor is shared
        deltas = [[loc - st for loc, st in zip(r["local"], r["start"])] for r in (r1, r2)]
        expected = aggregate_lora_a2(r1["start"], deltas, [r1["mask"], r2["mask"]], W, factor)
        for m in range(N):
            for r in (r1, r2):
                assert torch.allclose(r["after"][m], expected[m], atol=1e-6)
            other = r1["other"][m]
            prod = (lambda F, o=other: F @ o) if factor == "B" else (lambda F, o=other: o @ F)
            exact = W[0] * prod(r1["local"][m]) + W[1] * prod(r2["local"][m])
            assert torch.allclose(prod(r1["after"][m]), exact, atol=1e-5)  # exact product
        slot = OUT if factor == "B" else IN
        union = int((r1["mask"] | r2["mask"]).sum())
        for r in (r1, r2):
            n_slots = int(r["mask"].sum())
            assert r["stats"]["up_params"] == n_slots * slot
            assert r["stats"]["up_bytes"] == n_slots * slot * 4 + n_slots * 4
            assert r["stats"]["down_bytes"] == union * slot * 4 + union * 4
