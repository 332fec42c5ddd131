"""Inference through the split over real RPC equals the whole model's.

One spawn per shape: rank 0 is a SplitLoRA server holding only its part, ranks 1-2 are clients
holding only theirs (vanilla: cut at block 1 and at block 2, the server holds blocks 1..; U: the
middle). Both clients decode at the same time through the server: greedy and beam search with
n-gram bans, a repetition penalty and a length penalty, ragged prompts (left padding), and
validation losses. Each client compares with the whole model (adapters unmerged, the same
arithmetic) that it builds from the same seed: tokens bit for bit, losses to 1e-6. The server
records what it received; in the U shape no token id ever reaches it.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed.rpc as rpc
import torch.multiprocessing as mp

from models.generate import DecodeConfig, beam_search, greedy
from models.gpt2 import GPT2, GPT2Config
from models.lora import LoRAConfig, apply_lora, iter_lora_adapters
from models.loss import model_loss
from models.split import split_model
from models.split_u import split_model_u
from runtime.split.cut import CutCodec
from runtime.split.server import RECORD_ENV

pytestmark = pytest.mark.slow

PROMPTS = [[5, 6, 7, 8, 9], [9, 10], [11, 12, 13], [3, 4, 3, 4]]
SETTINGS = [
    DecodeConfig(num_beams=3, max_new_tokens=8, no_repeat_ngram_size=2, stop_tokens=(0,), length_penalty=0.8),
    DecodeConfig(num_beams=4, max_new_tokens=7, repetition_penalty=1.5, stop_tokens=(0, 1), length_penalty=1.2,
                 repeat_scope="sequence"),
    DecodeConfig(num_beams=2, max_new_tokens=6, no_repeat_ngram_size=3, repetition_penalty=0.8, stop_tokens=(2,)),
]
GREEDY = [dict(no_repeat_ngram_size=2), dict(repetition_penalty=1.3, repeat_scope="sequence")]
CUTS = {"vanilla": {1: 1, 2: 2}, "u": {1: 1, 2: 1}}
BATCHED_CUTS = {1: 1, 2: 1}  # batched serving needs one cut for every client


def _whole() -> GPT2:
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=4, n_head=4,
                            embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
    apply_lora(model, LoRAConfig(r=2, alpha=4.0, dropout=0.0))
    with torch.no_grad():
        for _, adapter in iter_lora_adapters(model):  # trained-looking adapters (B = 0 at init)
            adapter.lora_B.normal_(0.0, 0.5)
    return model.eval()


def _parts(shape: str, cut: int) -> tuple[GPT2, GPT2]:
    return split_model(_whole(), cut) if shape == "vanilla" else split_model_u(_whole(), cut, 3)


def _cuts(shape: str, batched: bool) -> dict[int, int]:
    return BATCHED_CUTS if batched else CUTS[shape]


def _serve(shape: str, batched: bool) -> None:
    from runtime.split import server as split_server

    cuts = _cuts(shape, batched)
    _, part = _parts(shape, min(cuts.values()))
    params = [p for p in part.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    # Batched: a batch of steps closes when both sessions wait (or after 0.2 s).
    batching = split_server.Batching(window_s=0.2) if batched else None
    split_server.install(split_server.SplitServer(part, opt, sched, device=torch.device("cpu"), clients=[1, 2],
                                                  order="arrival", label_smoothing=0.0, timeout=60,
                                                  cuts=cuts, batching=batching))


def _client(shape: str, rank: int, batched: bool) -> dict:
    from runtime.split.inference import SplitModel
    from runtime.split.shapes import get_shape

    cut = _cuts(shape, batched)[rank]
    part, _ = _parts(shape, cut)
    whole = _whole()
    model = SplitModel(get_shape(shape), part, "server", rank, CutCodec(), cut, 3)
    out = {"beam": [], "greedy": []}
    prompts = PROMPTS[rank - 1:] + PROMPTS[: rank - 1]  # the two clients decode different batches
    for cfg in SETTINGS:
        out["beam"].append(beam_search(model.decodable(), prompts, cfg) == beam_search(whole, prompts, cfg))
    for kw in GREEDY:
        args = dict(max_new_tokens=8, stop_tokens=(0,), **kw)
        out["greedy"].append(greedy(model.decodable(), prompts, **args) == greedy(whole, prompts, **args))
    torch.manual_seed(rank)
    ids = torch.randint(3, 97, (3, 10))
    batch = {"input_ids": ids, "targets": torch.roll(ids, -1, 1), "loss_mask": (torch.rand(3, 10) > 0.3).float()}
    want = float(model_loss(whole, ids, batch["targets"], batch["loss_mask"]))
    out["loss"] = abs(model.loss(batch) - want)
    out["meter"] = dict(model.meter)
    return out


def _worker(rank: int, shape: str, batched: bool, port: int, record: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{RECORD_ENV: record})
    torch.set_num_threads(1)
    name = "server" if rank == 0 else f"client{rank}"
    if rank == 0:
        _serve(shape, batched)
    rpc.init_rpc(name, rank=rank, world_size=3,
                 rpc_backend_options=rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}",
                                                                     _transports=["uv"]))
    try:
        if rank > 0:
            results[rank] = _client(shape, rank, batched)
    finally:
        rpc.shutdown()
    if rank == 0 and batched:
        from runtime.split import server as split_server

        results[0] = list(split_server.current().decoding.batcher.sizes)


# By default one of each shape and one of each server mode; the other two with the heavy cases.
@pytest.mark.parametrize("shape,batched", [("vanilla", True), ("u", False),
                                           pytest.param("vanilla", False, marks=pytest.mark.heavy),
                                           pytest.param("u", True, marks=pytest.mark.heavy)])
def test_split_inference_equals_the_whole_model(tmp_path, shape, batched):
    """Batched (split.server_batching): the two clients' decoding steps share server forwards;
    the linear layers then see more rows, so the scores may differ in the last bits, but the
    tokens are the whole model's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    record = tmp_path / "server.jsonl"
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(shape, batched, port, str(record), results), nprocs=3, join=True)
    for rank in (1, 2):
        r = results[rank]
        assert r["beam"] == [True] * len(SETTINGS) and r["greedy"] == [True] * len(GREEDY), (rank, r)
        assert r["loss"] <= 1e-6, r["loss"]
        assert r["meter"]["calls"] > 0 and r["meter"]["up"] > 0 and r["meter"]["down"] > 0
    if batched:  # steps of both clients ran together; every step ran in some batch
        sizes = results[0]
        assert max(sizes) == 2 and set(sizes) <= {1, 2}, sizes
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    decode = [c for c in calls if c["call"] == "server_decode"]
    assert decode and {c["call"] for c in calls} == {"server_decode", "server_eval_loss" if shape == "vanilla"
                                                     else "server_eval_output"}
    for c in decode:  # every step: the new positions' hidden states first, (R, T, C) floating
        h = c["tensors"][0]
        assert h["floating"] and len(h["shape"]) == 3 and h["shape"][2] == 32
        steps = [t for t in c["tensors"][1:]]
        if shape == "u":  # then at most the surviving rows and the padding: (R,) indices, no token id
            assert c["names"][1:] == [n for n in ("rows", "pad") if n in c["names"]], c["names"]
            assert all(len(t["shape"]) == 1 and not t["floating"] for t in steps)
        elif h["shape"][1] == 1:  # vanilla decoding steps: one position per row
            assert all(len(t["shape"]) == 1 for t in steps)
    if shape == "u":
        assert all(t["floating"] for c in calls if c["call"] != "server_decode" for t in c["tensors"])
