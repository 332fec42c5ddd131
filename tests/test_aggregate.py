"""Client-side FedAvg: plain maths, and the all_reduce over a client-only subgroup (the live path,
``runtime.strategies.base.flat_allreduce_sum``)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runtime.aggregate import client_weights
from runtime.strategies.base import flat_allreduce_sum
from runtime.strategies.fedavg import aggregate_fedavg


def test_client_weights():
    assert client_weights([1, 3]) == [0.25, 0.75]
    assert client_weights([1, 3], "uniform") == [0.5, 0.5]
    with pytest.raises(ValueError):
        client_weights([0, 0])


def test_weighted_mean_by_hand():
    a = [torch.tensor([1.0, 2.0]), torch.tensor([[4.0]])]
    b = [torch.tensor([3.0, 6.0]), torch.tensor([[0.0]])]
    out = aggregate_fedavg([a, b], [0.25, 0.75])
    assert torch.allclose(out[0], torch.tensor([2.5, 5.0]))  # 0.25*1+0.75*3, 0.25*2+0.75*6
    assert torch.allclose(out[1], torch.tensor([[1.0]]))  # 0.25*4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    group = dist.new_group(ranks=list(range(1, world)))  # every rank calls it; rank 0 is the server
    if rank > 0:
        g = torch.Generator().manual_seed(rank)
        tensors = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
        counts = [10, 30]
        w = client_weights(counts)[rank - 1]
        before = [t.clone() for t in tensors]
        summed = flat_allreduce_sum([t * w for t in tensors], group)  # each member scales by its own w_k
        results[rank] = ([t for t in before], summed)
    dist.barrier()
    dist.destroy_process_group()


def test_allreduce_weighted_sum_over_client_subgroup():
    world = 3
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(world, _free_port(), results), nprocs=world, join=True)
    before1, after1 = results[1]
    before2, after2 = results[2]
    expected = aggregate_fedavg([before1, before2], [0.25, 0.75])
    for a1, a2, e in zip(after1, after2, expected):
        assert torch.equal(a1, a2)  # clients hold identical adapters after aggregation
        assert torch.allclose(a1, e, atol=1e-7)  # ... equal to the sample-weighted mean


def test_fedavg_by_holders_rule_on_tiny_tensors():
    """Per-client cuts: block 1 is held by clients 0 and 1 only, so only they average it, re-weighted."""
    from runtime.strategies.fedavg import aggregate_fedavg_by_holders

    s0 = {"h.0.x": torch.tensor([1.0]), "h.1.x": torch.tensor([10.0])}
    s1 = {"h.0.x": torch.tensor([3.0]), "h.1.x": torch.tensor([20.0])}
    s2 = {"h.0.x": torch.tensor([5.0])}  # cut 1: holds block 0 only
    out = aggregate_fedavg_by_holders([s0, s1, s2], [0.2, 0.3, 0.5])
    assert torch.allclose(out["h.0.x"], torch.tensor([0.2 * 1 + 0.3 * 3 + 0.5 * 5]))
    assert torch.allclose(out["h.1.x"], torch.tensor([(0.2 * 10 + 0.3 * 20) / 0.5]))  # w renormalised over holders
