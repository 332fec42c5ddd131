"""Process groups and the RPC agent: start-up and bounded shut-down.

Order on every rank (measured to work with one MASTER_ADDR/PORT on torch 2.13):
``init_process_group`` (gloo on CPU; gloo+NCCL on CUDA) → every rank's device, gathered to
choose the client group's backend → ``new_group(client ranks)``
called on *every* rank (a subgroup collective hangs if any member skipped it) →
``init_rpc`` (TensorPipe). Rank 0 is the server, ranks 1..N the clients.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import warnings
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from runtime.config import Config
from runtime.control.netif import configure_interfaces

SERVER = "server"


def client_name(rank: int) -> str:
    """RPC worker name of the client on ``rank`` (1-based, as its rank)."""
    return f"client{rank}"


@dataclass
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    client_group: dist.ProcessGroup | None = None  # None on the server and in cenlora
    # fed.on_client_failure=continue: for each client c, a group of all clients but c
    # (created up front: new_group needs every rank, and a dead one cannot join later).
    fallback_groups: dict[int, dist.ProcessGroup] = field(default_factory=dict)
    client_backend: str = "gloo"  # of the client group: nccl, or gloo (tensors staged through host memory)
    client_backend_reason: str = ""
    network: dict[str, str | None] = field(default_factory=dict)  # the interface chosen (runtime/control/netif.py)

    @property
    def is_server(self) -> bool:
        return self.rank == 0

    @property
    def n_clients(self) -> int:
        return self.world_size - 1

    @property
    def client_index(self) -> int:
        """0-based index of this client (rank - 1)."""
        return self.rank - 1

    @property
    def role(self) -> str:
        return SERVER if self.is_server else client_name(self.rank)


def read_env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; (0, 1, 0) when run plainly."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(cfg: Config, local_rank: int) -> torch.device:
    want = cfg.runtime.device
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device=cuda but CUDA is not available on this machine")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        n = torch.cuda.device_count()
        return torch.device("cuda", local_rank % n)
    return torch.device("cpu")


def device_key(device: torch.device) -> str:
    """The physical device a rank computes on, comparable across ranks and hosts: ``cpu`` or
    ``cuda:<GPU UUID>`` (not the index: CUDA_VISIBLE_DEVICES may number GPUs per process)."""
    if device.type != "cuda":
        return "cpu"
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    gpu = str(uuid) if uuid is not None else f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')}#{device.index}"
    return f"cuda:{socket.gethostname()}:{gpu}"


def choose_client_backend(requested: str, client_devices: list[str]) -> tuple[str, str]:
    """The client group's backend (nccl or gloo) and why, from every client's ``device_key``.

    NCCL needs each member of a group on a GPU of its own: since NCCL 2.5 it refuses two ranks
    of one communicator on one GPU ("Duplicate GPU detected"). Clients that share a GPU (the
    one-GPU machine, more clients than GPUs) reduce with gloo instead, through host memory.
    """
    if requested == "gloo":
        return "gloo", "runtime.client_backend=gloo"
    if "cpu" in client_devices:
        if requested == "nccl":
            raise RuntimeError("runtime.client_backend=nccl needs every client on a GPU; some run on the CPU")
        return "gloo", "clients on the CPU"
    shared = [rank for rank, key in enumerate(client_devices, start=1) if client_devices.count(key) > 1]
    if shared:
        why = f"clients {','.join(map(str, shared))} share a GPU, and NCCL refuses two ranks of a group on one GPU"
        if requested == "nccl":
            raise RuntimeError(f"runtime.client_backend=nccl: {why}; use auto or gloo")
        return "gloo", f"{why}: gloo through host memory"
    return "nccl", "every client on a GPU of its own"


def rpc_threads(cfg: Config, n_clients: int) -> int:
    # A waiting client holds no RPC thread (runtime/split/admission.py answers with a future), but
    # the distributed backward, server steps and coordinator calls of every client run in the
    # pool at once: keep it well above the clients.
    return cfg.runtime.rpc_threads or max(16, 2 * n_clients + 8)


def _rpc_options(cfg: Config, world: World, gpu_index: list[int | None]) -> rpc.TensorPipeRpcBackendOptions:
    """TensorPipe options; ``gpu_index[r]``: the CUDA index rank r computes on (None on the CPU)."""
    transports = None
    transport = cfg.runtime.transport
    if transport == "uv" or (transport == "auto" and world.device.type == "cpu"):
        # The shared-memory transport busy-polls (~70 % of a core per idle agent).
        transports = ["uv"]
    opts = rpc.TensorPipeRpcBackendOptions(
        num_worker_threads=rpc_threads(cfg, world.n_clients),
        rpc_timeout=cfg.runtime.rpc_timeout,
        _transports=transports,
        # basic: tensor bytes go through the transport, as between hosts; the default channels let
        # two processes of one host exchange them through shared memory (docs/clusters.md).
        _channels=["basic"] if cfg.runtime.rpc_channels == "basic" else None,
    )
    if world.device.type == "cuda" and cfg.runtime.cuda_cut == "device_maps":
        # Beta in torch: CUDA tensors sent without a host copy, each client's GPU to the server's
        # and back (inverse maps; distributed autograd sends gradients back by the reverse map).
        if None in gpu_index:
            raise RuntimeError("runtime.cuda_cut=device_maps needs every rank on a GPU; some run on the CPU")
        gpu = [torch.device("cuda", i) for i in gpu_index]
        if world.is_server:
            for r in range(1, world.world_size):
                opts.set_device_map(client_name(r), {gpu[0]: gpu[r]})
        else:
            opts.set_device_map(SERVER, {world.device: gpu[0]})
    return opts


def init_world(cfg: Config) -> World:
    """Start the default group, the client subgroup and the RPC agent on this rank."""
    rank, world_size, local_rank = read_env_world()
    device = pick_device(cfg, local_rank)
    world = World(rank, world_size, local_rank, device, network=configure_interfaces())
    if world.network.get("ifname") and world.network["reason"] != "SPLITLORA_IFNAME":
        print(f"splitlora: rank {rank}: network interface {world.network['ifname']} ({world.network['reason']})",
              file=sys.stderr, flush=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=cfg.runtime.rpc_timeout)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    placed: list[tuple[str, int | None]] = [("", None)] * world_size
    dist.all_gather_object(placed, (device_key(device), device.index))  # over gloo, in host memory
    # Every rank computes the same choice from the same list: all create the group alike.
    sub_backend, world.client_backend_reason = choose_client_backend(cfg.runtime.client_backend,
                                                                     [key for key, _ in placed[1:]])
    world.client_backend = sub_backend
    # Every rank must call new_group, members or not.
    clients = list(range(1, world_size))
    group = dist.new_group(ranks=clients, timeout=timeout, backend=sub_backend)
    if not world.is_server:
        world.client_group = group
    if cfg.fed.on_client_failure == "continue" and len(clients) > 1:
        for dead in clients:
            g = dist.new_group(ranks=[c for c in clients if c != dead], timeout=timeout, backend=sub_backend)
            if not world.is_server and world.rank != dead:
                world.fallback_groups[dead] = g
    # init_rpc prints an upstream deprecation warning about the Gloo ProcessGroup once per
    # rank (harmless, a known upstream warning); keep it out of the user's log.
    warnings.filterwarnings("ignore", message=r"You are using a Backend .* as a ProcessGroup")
    options = _rpc_options(cfg, world, [index for _, index in placed])
    rpc.init_rpc(world.role, rank=rank, world_size=world_size, rpc_backend_options=options)
    return world


def shutdown_world(cfg: Config, graceful: bool = True) -> None:
    """Stop RPC with a bound (the default waits for ever when a peer died), then the groups."""
    try:
        rpc.shutdown(graceful=graceful, timeout=cfg.runtime.rpc_timeout)
    finally:
        if dist.is_initialized() and graceful:
            dist.destroy_process_group()  # (with a dead member, process exit releases the groups)


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send one picklable object from ``src`` to all ranks over the default group."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def group_barrier(group: dist.ProcessGroup, device: torch.device) -> None:
    """All members of ``group`` meet here. An NCCL group is told this rank's GPU: else it
    guesses one from the rank within the group, which need not be the GPU this rank uses."""
    if device.type == "cuda" and dist.get_backend(group) == "nccl":
        dist.barrier(group=group, device_ids=[device.index])
    else:
        dist.barrier(group=group)


def world_barrier() -> None:
    """All ranks meet here (default group): e.g. clients wait until the server is serving."""
    dist.barrier()


def abort(role: str, message: str) -> None:
    """End this rank now, non-zero, with one line (no RPC teardown: a dead peer can block it)."""
    import sys

    sys.stderr.write(f"\nsplitlora: error [{role}]: {message}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)
