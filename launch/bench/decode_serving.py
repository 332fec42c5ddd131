"""Several clients decoding through one server at once: sequential vs batched serving.

    python -m launch.bench.decode_serving                          # micro, mini, gpt2 (S) shapes, 2 clients
    python -m launch.bench.decode_serving --models gpt2 --clients 3 --json out.json

One server process holding only its part and ``--clients`` client processes holding only
theirs (random weights of the preset, LoRA with random B), one torch thread each, RPC over
loopback. Every client decodes its own prompts (beam search, every hypothesis runs to
``--max-new-tokens``) through the split, all starting together (a barrier), against two
servers in alternation: **sequential** (one decoding call at a time, so the clients' steps
interleave) and **batched** (``split.server_batching``: the steps waiting at once run as one
forward of the server part, ``runtime/split/decode_batching.py``). Reported: the tokens all
clients generated per second of wall time (from the barrier to the last client's end), best
of ``--repeats``, and the batched server's steps per forward. The tokens must be equal both
ways; the scores may differ in the last bits (the linear layers see more rows).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc
import torch.multiprocessing as mp

from launch.bench.split_decode import build, parts, prompts_for, write_rows
from launch.spawn import free_port
from models.generate import DecodeConfig, beam_search

MODES = ("sequential", "batched")


def serve(preset: str, shape: str, cut: int, clients: int, batched: bool) -> None:
    """On the server: hold only the server part of ``preset``; batched or sequential serving."""
    from runtime.split import server as split_server

    split_server.install(None)
    _, part = parts(build(preset), shape, cut)
    opt = torch.optim.AdamW([p for p in part.parameters() if p.requires_grad], lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    batching = split_server.Batching(window_s=0.02) if batched else None
    split_server.install(split_server.SplitServer(part, opt, sched, device=torch.device("cpu"),
                                                  clients=list(range(1, clients + 1)), order="arrival",
                                                  label_smoothing=0.0, timeout=600, batching=batching))


def batch_sizes() -> list[int]:
    from runtime.split import server as split_server

    decoding = split_server.current().decoding
    return [] if decoding is None or decoding.batcher is None else list(decoding.batcher.sizes)


def client_side(args: argparse.Namespace, rank: int, preset: str, shape: str, group: object) -> dict | None:
    """One client's part of a (preset, shape) row; rank 1 also drives the server and returns the row."""
    from runtime.split.cut import CutCodec
    from runtime.split.inference import SplitModel
    from runtime.split.shapes import get_shape

    whole = build(preset)
    n_layer, vocab = whole.config.n_layer, whole.config.vocab_size
    cut = args.cut or max(1, n_layer // 4)
    client, _ = parts(whole, shape, cut)
    del whole
    split = SplitModel(get_shape(shape), client, "server", rank, CutCodec(), cut, n_layer - cut)
    prompts = prompts_for(args.prompts, vocab, args.seed + rank)  # each client its own prompts
    cfg = DecodeConfig(num_beams=args.beams, max_new_tokens=args.max_new_tokens, stop_tokens=(vocab,))
    spans: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    tokens: dict[str, list] = {}
    sizes: list[int] = []
    for _ in range(args.repeats + 1):  # the first round warms up
        for mode in MODES:
            if rank == 1:
                rpc.rpc_sync("server", serve, args=(preset, shape, cut, args.clients, mode == "batched"))
            dist.barrier()
            t0 = time.time()
            out = beam_search(split.decodable(), prompts, cfg)
            spans[mode].append((t0, time.time()))
            tokens[mode] = out
            dist.barrier()
            if rank == 1 and mode == "batched":
                sizes += rpc.rpc_sync("server", batch_sizes)
    gathered: list = [None] * args.clients
    dist.all_gather_object(gathered, {"spans": spans, "tokens": sum(len(o) for o in tokens["batched"]),
                                      "equal": tokens["batched"] == tokens["sequential"]}, group=group)
    if rank != 1:
        return None
    row = {"model": preset, "shape": shape, "cut": cut, "n_layer": n_layer, "clients": args.clients,
           "tokens_per_call": sum(g["tokens"] for g in gathered),
           "equal_tokens": all(g["equal"] for g in gathered), "mean_batch": sum(sizes) / max(len(sizes), 1),
           "largest_batch": max(sizes, default=0)}
    for mode in MODES:  # per repeat: the wall from the first start to the last end, over every client
        walls = [max(g["spans"][mode][i][1] for g in gathered) - min(g["spans"][mode][i][0] for g in gathered)
                 for i in range(1, args.repeats + 1)]
        row[f"tokens_per_s_{mode}"] = row["tokens_per_call"] / min(walls)
    row["batched_over_sequential"] = row["tokens_per_s_batched"] / row["tokens_per_s_sequential"]
    return row


def worker(rank: int, args: argparse.Namespace, ports: tuple[int, int], results) -> None:
    torch.set_num_threads(args.threads)
    world = args.clients + 1
    opts = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{ports[0]}", _transports=["uv"],
                                           rpc_timeout=600)
    rpc.init_rpc("server" if rank == 0 else f"client{rank}", rank=rank, world_size=world, rpc_backend_options=opts)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank, world_size=world)
    clients = dist.new_group(list(range(1, world)))  # every rank makes it; the clients gather over it
    try:
        rows = []
        for preset in args.models.split(","):
            for shape in args.shapes.split(","):
                if rank == 0:  # the server only serves; it joins the clients' barriers
                    for _ in range((args.repeats + 1) * len(MODES)):
                        dist.barrier()
                        dist.barrier()
                    continue
                row = client_side(args, rank, preset, shape, clients)
                if row is not None:
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        if rank == 1:
            results["rows"] = rows
    finally:
        rpc.shutdown()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="micro,mini,gpt2", help="GPT-2 presets (random weights)")
    ap.add_argument("--shapes", default="vanilla,u")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--cut", type=int, default=0, help="client blocks (U: also at the back end); 0 = n_layer / 4")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per client")
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ports = (free_port(), free_port())  # RPC, and the clients' barrier group
    while ports[1] == ports[0]:
        ports = (ports[0], free_port())
    results = mp.Manager().dict()
    mp.spawn(worker, args=(args, ports, results), nprocs=args.clients + 1, join=True)
    rows = results["rows"]
    print(f"{'model':6} {'shape':8} {'clients':>7} {'tok/s sequential':>16} {'batched':>8} {'ratio':>6} "
          f"{'steps/forward':>13} {'equal':>5}")
    for r in rows:
        print(f"{r['model']:6} {r['shape']:8} {r['clients']:7d} {r['tokens_per_s_sequential']:16.1f} "
              f"{r['tokens_per_s_batched']:8.1f} {r['batched_over_sequential']:6.2f} {r['mean_batch']:13.2f} "
              f"{str(r['equal_tokens']):>5}")
    if args.json:
        write_rows(args.json, args, rows, load_before=os.getloadavg())


if __name__ == "__main__":
    main()
