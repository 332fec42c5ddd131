"""The client group's backend: NCCL only where every client has a GPU of its own.

NCCL refuses two ranks of one communicator on one GPU ("Duplicate GPU detected"), so
clients sharing a GPU (the one-GPU machine) must reduce with gloo through host memory.
The choice is a pure function of every client's device, computed alike on every rank.
"""

import pytest
import torch

from runtime.aggregate import on_backend_device
from runtime.control.dist import choose_client_backend, device_key

GPU_A, GPU_B = "cuda:node0:GPU-aaaa", "cuda:node0:GPU-bbbb"


def test_each_client_on_its_own_gpu_reduces_with_nccl():
    assert choose_client_backend("auto", [GPU_A, GPU_B])[0] == "nccl"
    assert choose_client_backend("auto", [GPU_A])[0] == "nccl"  # one client: a one-rank NCCL group
    assert choose_client_backend("nccl", [GPU_A, GPU_B])[0] == "nccl"


def test_clients_sharing_a_gpu_fall_back_to_gloo_and_say_which():
    backend, why = choose_client_backend("auto", [GPU_A, GPU_B, GPU_A])
    assert backend == "gloo"
    assert "clients 1,3 share a GPU" in why and "host memory" in why


def test_nccl_asked_where_it_cannot_work_is_an_error_naming_the_clients():
    with pytest.raises(RuntimeError, match="clients 1,2 share a GPU"):
        choose_client_backend("nccl", [GPU_A, GPU_A])
    with pytest.raises(RuntimeError, match="every client on a GPU"):
        choose_client_backend("nccl", ["cpu", GPU_A])


def test_cpu_clients_and_an_explicit_gloo_use_gloo():
    assert choose_client_backend("auto", ["cpu", "cpu"]) == ("gloo", "clients on the CPU")
    assert choose_client_backend("gloo", [GPU_A, GPU_B])[0] == "gloo"


def test_device_key_of_the_cpu_and_host_tensors_stay_where_they_are():
    assert device_key(torch.device("cpu")) == "cpu"
    t = torch.ones(3)
    assert on_backend_device(t, group=None) is t  # no group needed: a host tensor never moves


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_device_key_names_the_physical_gpu():
    key = device_key(torch.device("cuda", 0))
    assert key.startswith("cuda:") and key == device_key(torch.device("cuda", 0))


def test_device_maps_send_each_clients_gpu_to_the_servers_and_back():
    """runtime.cuda_cut=device_maps: client k maps its GPU to the server's, the server maps its
    GPU back to client k's (the indices every rank gathered; no GPU is touched here)."""
    from runtime.config.parse import build_config
    from runtime.control.dist import World, _rpc_options

    cuda = lambda i: torch.device("cuda", i)  # noqa: E731
    cfg = build_config(["--runtime.cuda_cut=device_maps"])
    gpus = [0, 2, 1]  # server on GPU 0, client 1 on GPU 2, client 2 on GPU 1
    client2 = _rpc_options(cfg, World(2, 3, 2, cuda(1)), gpus)
    assert client2.device_maps == {"server": {cuda(1): cuda(0)}}
    server = _rpc_options(cfg, World(0, 3, 0, cuda(0)), gpus)
    assert server.device_maps == {"client1": {cuda(0): cuda(2)}, "client2": {cuda(0): cuda(1)}}
    with pytest.raises(RuntimeError, match="needs every rank on a GPU"):
        _rpc_options(cfg, World(0, 3, 0, cuda(0)), [0, None, 1])
    host = _rpc_options(build_config([]), World(2, 3, 2, cuda(1)), gpus)
    assert host.device_maps == {}  # the default cut goes through host memory: no maps
