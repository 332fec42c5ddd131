"""Logical clients without torchrun: the population and its sampling, the rank-local collective,
and what a sampled-out client holds when it is sampled again (docs/clients.md)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from models.gpt2 import GPT2, GPT2Config
from models.lora import LoRAConfig, apply_lora, iter_lora_adapters
from runtime.aggregate import client_weights
from runtime.config import ConfigError, validate_for_world
from runtime.config.parse import build_config
from runtime.fed.hosted import HostedClient, share_frozen_copy
from runtime.fed.local_round import LocalRound
from runtime.fed.population import Population, round_weights
from runtime.strategies.flexlora import truncate_flexlora


@pytest.fixture(scope="module")
def group():
    """A one-process gloo group: the rank's all_reduce is then the identity on its local sum."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_population_round_robin_and_seeded_sample():
    pop = Population(n_clients=10, n_ranks=3, per_round=4, seed=7)
    hosted = [pop.hosted(r) for r in (1, 2, 3)]
    assert hosted == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert all(pop.rank_of(k) == r for r, ks in zip((1, 2, 3), hosted) for k in ks)
    draws = [pop.sample(t) for t in range(1, 21)]
    assert all(len(d) == 4 and d == sorted(d) and len(set(d)) == 4 for d in draws)
    assert draws == [Population(10, 1, 4, 7).sample(t) for t in range(1, 21)]  # any number of ranks
    assert len({tuple(d) for d in draws}) > 10  # rounds draw different clients
    assert Population(10, 3, 4, 8).sample(1) != draws[0] or Population(10, 3, 4, 8).sample(2) != draws[1]
    assert Population(10, 3, 10, 7).sample(5) == list(range(10))  # K = N: everyone, every round


def test_round_weights_renormalise_over_the_round():
    counts = [10, 30, 20, 40]
    assert round_weights(counts, [0, 1, 2, 3], "samples") == client_weights(counts)  # full: today's weights
    w = round_weights(counts, [1, 3], "samples")
    assert w == [0.0, 30 / 70, 0.0, 40 / 70]
    assert round_weights(counts, [0, 2], "uniform") == [0.5, 0.0, 0.5, 0.0]


def test_local_round_sums_in_client_order_and_listeners_send_zeros(group):
    flats = [torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0]), torch.tensor([100.0, 200.0])]
    local = LocalRound(group, 3, listeners=frozenset({2}), timeout=30)
    out = local.run([lambda seat, f=f: seat.allreduce_sum(f) for f in flats])
    assert all(torch.equal(o, torch.tensor([11.0, 22.0])) for o in out)
    assert out[0].data_ptr() != out[1].data_ptr()  # each seat its own copy


def test_local_round_failure_wakes_the_other_seats(group):
    local = LocalRound(group, 3, timeout=60)

    def boom(seat):
        raise ValueError("seat 1 broke")

    calls = [lambda seat: seat.allreduce_sum(torch.ones(2)), boom, lambda seat: seat.allreduce_sum(torch.ones(2))]
    with pytest.raises(ValueError, match="seat 1 broke"):
        local.run(calls)


def _model() -> GPT2:
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    return apply_lora(model, LoRAConfig(r=4, alpha=8.0, dropout=0.0))


class _Data:
    """A client's shard: random token batches, seeded by (client, step)."""

    def __init__(self, index: int) -> None:
        self.client_index, self.n_samples = index, 64

    def batches(self, n_steps: int, start_step: int = 0):
        step = start_step
        while step < n_steps:
            g = torch.Generator().manual_seed(1000 * self.client_index + step)
            ids = torch.randint(0, 97, (4, 12), generator=g)
            yield {"input_ids": ids, "targets": torch.roll(ids, -1, 1), "loss_mask": torch.ones(4, 12)}
            step += 1


def _clients(strategy: str, budgets: list[int]) -> tuple[list[HostedClient], HostedClient]:
    cfg = build_config(["--method=fedlora", f"--fed.strategy={strategy}", "--lora.r=4", "--train.lr=0.05",
                        "--fed.probe_steps=2", "--train.warmup_steps=0"])
    base = _model()
    modules = [base] + [share_frozen_copy(base) for _ in budgets]  # the last one: the listener
    common = {"n_clients": len(budgets), "local_steps": 10, "device": torch.device("cpu"), "own_rng": True}
    clients = [HostedClient(cfg, k, m, _Data(k), rank_budget=r, step_fn=lambda st, b: st.local_step(b), **common)
               for k, (m, r) in enumerate(zip(modules, budgets))]
    listener = HostedClient(cfg, 0, modules[-1], _Data(0), rank_budget=4, step_fn=None, listener=True, **common)
    return clients, listener


def _factors(client: HostedClient) -> list[torch.Tensor]:
    return [p.detach().clone() for _, a in iter_lora_adapters(client.module) for p in (a.lora_A, a.lora_B)]


def _round(group, clients: list[HostedClient], listener: HostedClient, sampled: list[int], round_idx: int) -> None:
    """One round of ``sampled``: catch up, begin, two local steps, aggregate with the listener."""
    participants = [clients[k] for k in sampled]
    listener.strategy.begin_round(listener.ctx, round_idx)
    for c in participants:
        with c.active():
            c.catch_up(listener, round_idx - 1)
            c.strategy.begin_round(c.ctx, round_idx)
            for _ in range(2):
                c.timed_step(0, round_idx, 1)
    weights = round_weights([64] * len(clients), sampled, "samples")
    seats = participants + [listener]
    local = LocalRound(group, len(seats), frozenset({len(participants)}), timeout=60)
    local.run([lambda seat, c=c: c.aggregate(round_idx, seat, weights) for c in seats])


@pytest.mark.parametrize("strategy", ["fedavg", "lora-a2", "rolora"])
def test_a_client_that_missed_rounds_rejoins_with_the_global_factors(group, strategy):
    clients, listener = _clients(strategy, [4, 2, 1])
    missed = _factors(clients[2])
    _round(group, clients, listener, [0, 1], 1)
    _round(group, clients, listener, [0, 1], 2)
    assert all(torch.equal(a, b) for a, b in zip(_factors(clients[2]), missed))  # untouched while sampled out
    assert not torch.equal(_factors(clients[0])[1], missed[1])  # B moved for the others
    clients[2].catch_up(listener, 2)
    for got, want in zip(_factors(clients[2]), _factors(clients[0])):
        assert torch.equal(got, want)  # exactly what the round's participants hold
    assert clients[2].comm_total["down_params"] > 0 and clients[2].rounds == 0


def test_fedsa_rejoins_with_the_global_a_and_its_own_b(group):
    clients, listener = _clients("fedsa", [4, 4, 4])
    _round(group, clients, listener, [2], 1)  # client 3 trains its own B once
    own_b = _factors(clients[2])[1::2]
    _round(group, clients, listener, [0, 1], 2)
    clients[2].catch_up(listener, 2)
    got, first = _factors(clients[2]), _factors(clients[0])
    assert all(torch.equal(a, b) for a, b in zip(got[0::2], first[0::2]))  # A: global
    assert all(torch.equal(a, b) for a, b in zip(got[1::2], own_b))  # B: its own


@pytest.mark.parametrize("strategy", ["hetlora", "flexlora"])
def test_rank_budgets_apply_to_the_global_state_on_rejoining(group, strategy):
    clients, listener = _clients(strategy, [4, 2, 1])
    _round(group, clients, listener, [0, 1], 1)
    clients[2].catch_up(listener, 1)
    for (_, mine), (_, glob), (_, full) in zip(iter_lora_adapters(clients[2].module),
                                               iter_lora_adapters(listener.module),
                                               iter_lora_adapters(clients[0].module)):
        assert torch.equal(full.lora_A, glob.lora_A) and torch.equal(full.lora_B, glob.lora_B)  # r_k = r_G
        if strategy == "hetlora":  # the first r_k = 1 ranks of the zero-padded average
            assert torch.equal(mine.lora_A[1:], torch.zeros_like(mine.lora_A[1:]))
            assert torch.equal(mine.lora_A[:1], glob.lora_A[:1]) and torch.equal(mine.lora_B[:, :1], glob.lora_B[:, :1])
        else:  # the best rank-1 approximation of the aggregated update
            B, A = truncate_flexlora(glob.delta_weight(), 1, glob.scaling, glob.r)
            torch.testing.assert_close(mine.delta_weight(), (B @ A) * glob.scaling, atol=1e-6, rtol=1e-5)


def test_hosted_clients_share_the_frozen_base_and_own_their_adapters():
    clients, listener = _clients("fedavg", [4, 4])
    a, b = clients[0].module, clients[1].module
    assert a.transformer.wte.weight.data_ptr() == b.transformer.wte.weight.data_ptr()
    ad_a, ad_b = next(iter_lora_adapters(a))[1], next(iter_lora_adapters(b))[1]
    assert ad_a.lora_A.data_ptr() != ad_b.lora_A.data_ptr() and ad_a.rank_mask.data_ptr() != ad_b.rank_mask.data_ptr()
    assert torch.equal(ad_a.lora_A, ad_b.lora_A)  # the same seeded init, as on separate ranks


@pytest.mark.parametrize("args, world, message", [
    (["--fed.num_clients=4", "--fed.clients_per_round=5"], 3, "clients_per_round=5 is more than the 4"),
    (["--fed.num_clients=2"], 4, "fewer than the 3 client ranks"),
    (["--fed.num_clients=4", "--fed.client_ranks=1,2"], 3, "gives 2 rank(s) but there are 4 clients"),
    (["--fed.num_clients=4", "--method=splitlora", "--split.client_cuts=1,2"], 3, "split.client_cuts gives one cut"),
    (["--fed.num_clients=5", "--method=splitlora", "--runtime.order=round_robin"], 3, "as many client steps"),
    (["--fed.num_clients=4", "--fed.clients_per_round=2", "--method=splitlora", "--runtime.order=round_robin"], 3,
     "as many client steps"),
    (["--fed.num_clients=4", "--fed.strategy=flora"], 3, "merges every round into the base weights"),
    (["--fed.clients_per_round=2", "--fed.strategy=flora"], 4, "merges every round into the base weights"),
    (["--fed.num_clients=4", "--runtime.client_slowdown=1,2"], 3, "2 factor(s) but there are 4 clients"),
])
def test_population_config_errors(args, world, message):
    cfg = build_config(["--method=fedlora", "--lora.r=4", *args])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_for_world(cfg, world, 4)


def test_population_config_accepts_hosted_and_sampled_fedlora():
    cfg = build_config(["--method=fedlora", "--lora.r=4", "--fed.num_clients=30", "--fed.clients_per_round=10",
                        "--fed.client_ranks=" + ",".join(["2"] * 30)])
    validate_for_world(cfg, 3, 4)
