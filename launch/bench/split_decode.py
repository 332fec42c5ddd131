"""Decoding through the split vs whole-model decoding: tokens/s, bytes and round trips per token.

    python -m launch.bench.split_decode                         # micro, mini, gpt2 (S) shapes, both splits
    python -m launch.bench.split_decode --models gpt2 --shapes u --prompts 4 --json out.json

Two processes on this machine, one torch thread each: a server holding only its part and a
client holding only its own (random weights of the preset, LoRA with random B on q and v),
over RPC (TensorPipe on loopback, so the time is compute plus local messaging, not a network).
For each preset and split shape the client decodes the same prompts (beam search, the E2E
recipe's settings) three ways, alternating, best of ``--repeats``: through the split; with the
whole model, adapters unmerged (the same arithmetic: the tokens must be equal); with the whole
model, adapters merged (what whole-model evaluation does). Tokens/s counts the returned
continuations' tokens over the wall time of the call; bytes per token are the payload bytes
each way through the cut (hidden states, surviving rows, padding, penalties up; candidates or
hidden states down), per generated token.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

import torch
import torch.distributed.rpc as rpc
import torch.multiprocessing as mp

from launch.spawn import free_port
from models.generate import DecodeConfig, beam_search
from models.gpt2 import GPT2, build_config
from models.lora import LoRAConfig, apply_lora, iter_lora_adapters, merge_lora
from models.split import split_model
from models.split_u import split_model_u


def build(preset: str) -> GPT2:
    torch.manual_seed(0)
    model = GPT2(build_config(preset, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
    apply_lora(model, LoRAConfig(r=4, alpha=8.0, dropout=0.0))
    with torch.no_grad():
        for _, adapter in iter_lora_adapters(model):
            adapter.lora_B.normal_(0.0, 0.02)
    return model.eval()


def parts(model: GPT2, shape: str, cut: int) -> tuple[GPT2, GPT2]:
    n = model.config.n_layer
    return split_model(model, cut) if shape == "vanilla" else split_model_u(model, cut, n - cut)


def serve(preset: str, shape: str, cut: int) -> None:
    """On the server: hold only the server part of ``preset`` (RPC entry point)."""
    from runtime.split import server as split_server

    _, part = parts(build(preset), shape, cut)
    opt = torch.optim.AdamW([p for p in part.parameters() if p.requires_grad], lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    split_server.install(split_server.SplitServer(part, opt, sched, device=torch.device("cpu"), clients=[1],
                                                  order="arrival", label_smoothing=0.0, timeout=600))


def prompts_for(n: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(30, 41, (1,), generator=g))
        out.append(torch.randint(0, vocab, (length,), generator=g).tolist())
    return out


def measure(args: argparse.Namespace, preset: str, shape: str) -> dict:
    from runtime.split.cut import CutCodec
    from runtime.split.inference import SplitModel
    from runtime.split.shapes import get_shape

    whole = build(preset)
    n_layer, vocab = whole.config.n_layer, whole.config.vocab_size
    cut = args.cut or max(1, n_layer // 4)
    rpc.rpc_sync("server", serve, args=(preset, shape, cut))
    client, _ = parts(whole, shape, cut)
    merged = copy.deepcopy(whole)
    merge_lora(merged)
    split = SplitModel(get_shape(shape), client, "server", 1, CutCodec(), cut, n_layer - cut)
    prompts = prompts_for(args.prompts, vocab, args.seed)
    # A stop id outside the vocabulary: every hypothesis runs to max_new_tokens, so each side does
    # the same, known amount of work (a random model would otherwise stop at random).
    cfg = DecodeConfig(num_beams=args.beams, max_new_tokens=args.max_new_tokens, stop_tokens=(vocab,))
    sides = {"split": lambda: beam_search(split.decodable(), prompts, cfg),
             "whole_unmerged": lambda: beam_search(whole, prompts, cfg),
             "whole_merged": lambda: beam_search(merged, prompts, cfg)}
    out = {name: fn() for name, fn in sides.items()}  # warm-up, and the outputs compared
    best = {name: float("inf") for name in sides}
    split.meter.update(up=0, down=0, calls=0)
    for _ in range(args.repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    tokens = sum(len(o) for o in out["split"])
    per = {k: v / (args.repeats * tokens) for k, v in split.meter.items()}
    part_mib = {name: sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20
                for name, m in (("client", client), ("whole", whole))}
    rpc.rpc_sync("server", serve_nothing)
    return {"model": preset, "shape": shape, "cut": cut, "n_layer": n_layer, "vocab": vocab,
            "tokens": tokens, "equal_to_whole_unmerged": out["split"] == out["whole_unmerged"],
            "equal_to_whole_merged": out["split"] == out["whole_merged"],
            **{f"tokens_per_s_{k}": tokens / v for k, v in best.items()},
            "bytes_up_per_token": per["up"], "bytes_down_per_token": per["down"],
            "round_trips_per_token": per["calls"], "client_part_mib": part_mib["client"],
            "whole_model_mib": part_mib["whole"]}


def serve_nothing() -> None:
    from runtime.split import server as split_server

    split_server.install(None)


def worker(rank: int, args: argparse.Namespace, port: int, results) -> None:
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    opts = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}", _transports=["uv"],
                                           rpc_timeout=600)
    rpc.init_rpc("server" if rank == 0 else "client1", rank=rank, world_size=2, rpc_backend_options=opts)
    try:
        if rank == 1:
            rows = []
            for preset in args.models.split(","):
                for shape in args.shapes.split(","):
                    row = measure(args, preset, shape)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            results["rows"] = rows
    finally:
        rpc.shutdown()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="micro,mini,gpt2", help="GPT-2 presets (random weights)")
    ap.add_argument("--shapes", default="vanilla,u")
    ap.add_argument("--cut", type=int, default=0, help="client blocks (U: also at the back end); 0 = n_layer / 4")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = mp.Manager().dict()
    mp.spawn(worker, args=(args, free_port(), results), nprocs=2, join=True)
    rows = results["rows"]
    print(f"{'model':6} {'shape':8} {'tok/s split':>11} {'whole':>7} {'merged':>7} {'up B/tok':>9} "
          f"{'down B/tok':>10} {'RT/tok':>6} {'equal':>5}")
    for r in rows:
        print(f"{r['model']:6} {r['shape']:8} {r['tokens_per_s_split']:11.1f} {r['tokens_per_s_whole_unmerged']:7.1f} "
              f"{r['tokens_per_s_whole_merged']:7.1f} {r['bytes_up_per_token']:9.0f} {r['bytes_down_per_token']:10.0f} "
              f"{r['round_trips_per_token']:6.2f} {str(r['equal_to_whole_unmerged']):>5}")
    if args.json:
        write_rows(args.json, args, rows)


def write_rows(path: str, args: argparse.Namespace, rows: list[dict], **meta: object) -> None:
    """A benchmark's rows as JSON, with the machine, torch and the arguments."""
    head = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "args": vars(args), **meta}
    with open(path, "w") as f:
        json.dump({"meta": head, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
