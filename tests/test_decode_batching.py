"""Batched decoding: the joint step of several sessions (models/decode_batch.py) and the server's
batcher (runtime/split/decode_batching.py), without RPC."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch

from models.decode_batch import JointStep
from models.decode_chain import BeamKVCache, padding_mask
from models.gpt2 import GPT2, GPT2Config
from models.lora import LoRAConfig, apply_lora, iter_lora_adapters
from models.split import split_model
from runtime.split.decode_batching import DecodeBatcher


def _server_part() -> GPT2:
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=3, n_head=4,
                            embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
    apply_lora(model, LoRAConfig(r=2, alpha=4.0, dropout=0.0))
    with torch.no_grad():
        for _, adapter in iter_lora_adapters(model):
            adapter.lora_B.normal_(0.0, 0.5)
    return split_model(model.eval(), 1)[1]


def _session(part: GPT2, rows: int, length: int, pad: list[int]) -> tuple[BeamKVCache, torch.Tensor]:
    """A session after its prompt: the cache of ``length`` positions, ``pad`` (rows,) left padding."""
    cache, pad_t = BeamKVCache(rows, 16), torch.tensor(pad)
    mask = padding_mask(pad_t, length) if max(pad) else None
    with torch.inference_mode():
        part(torch.randn(rows, length, 32), attn_mask=mask, kv_cache=cache)
    return cache, pad_t


@torch.inference_mode()
def test_a_joint_step_equals_each_session_alone():
    """Three sessions of different lengths, rows and padding (two reordered for beam search):
    one forward over their new positions = each one's own step (to float rounding: the linear
    layers see more rows), and every cache ends as its own step leaves it."""
    part = _server_part()
    torch.manual_seed(1)
    sessions = [_session(part, 3, 5, [0, 2, 1]), _session(part, 2, 7, [0, 0]), _session(part, 4, 3, [0, 0, 0, 1])]
    twins = [(copy.deepcopy(c), p) for c, p in sessions]
    survivors = [torch.tensor([2, 0]), None, torch.tensor([3, 3, 1])]  # beam search's surviving rows
    xs = [torch.randn(len(r) if r is not None else c.rows, 1, 32) for (c, _), r in zip(sessions, survivors)]
    alone = []
    for (cache, pad), rows, x in zip(sessions, survivors, xs):
        if rows is not None:
            cache.reorder(rows)
            pad = pad[rows]
        mask = padding_mask(pad, cache.length + 1) if int(pad.max()) else None
        alone.append(part(x, attn_mask=mask, kv_cache=cache))
    masks = []
    for (cache, pad), rows in zip(twins, survivors):
        if rows is not None:
            cache.reorder(rows)
            pad = pad[rows]
        masks.append(padding_mask(pad, cache.length + 1) if int(pad.max()) else None)
    joint = JointStep([c for c, _ in twins], [len(x) for x in xs], masks)
    out = part(torch.cat(xs), kv_cache=joint)
    joint.finish()
    for a, b in zip(alone, out.split([len(x) for x in xs])):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=0)
    for (mine, _), (twin, _) in zip(sessions, twins):
        assert twin.length == mine.length and twin.rows == mine.rows
        for name in mine.layers:
            for u, v in zip(mine.layers[name], twin.layers[name]):
                assert torch.allclose(u, v, atol=1e-5, rtol=0)


def test_a_joint_step_checks_its_inputs():
    with pytest.raises(ValueError, match="one row count and one mask per cache"):
        JointStep([BeamKVCache(1, 4)], [1, 2], [None])


def _submit_all(batcher: DecodeBatcher, values: list[int], gap_s: float = 0.0) -> list:
    out: list = [None] * len(values)

    def one(i: int) -> None:
        try:
            out[i] = batcher.submit(values[i])
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out[i] = exc

    threads = []
    for i in range(len(values)):
        threads.append(threading.Thread(target=one, args=(i,)))
        threads[-1].start()
        time.sleep(gap_s)
    for t in threads:
        t.join(timeout=30)
    return out


def test_the_batcher_runs_waiting_steps_together_and_returns_each_its_own_result():
    seen: list[list[int]] = []

    def run(requests):
        seen.append([r.args for r in requests])
        for r in requests:
            r.result = r.args * 10

    batcher = DecodeBatcher(run, expected=lambda: 3, window_s=30.0)  # closes only when all three wait
    assert _submit_all(batcher, [1, 2, 3], gap_s=0.05) == [10, 20, 30]
    assert batcher.sizes == [3] and sorted(seen[0]) == [1, 2, 3]


def test_the_window_bounds_the_wait_for_a_missing_session():
    batcher = DecodeBatcher(lambda rs: [setattr(r, "result", r.args) for r in rs], expected=lambda: 2,
                            window_s=0.2)
    t0 = time.monotonic()
    assert _submit_all(batcher, [7]) == [7]  # the second session never sends: served after the window
    assert 0.15 <= time.monotonic() - t0 < 10 and batcher.sizes == [1]


def test_a_closed_session_releases_the_waiting_steps():
    open_sessions = [2]
    batcher = DecodeBatcher(lambda rs: [setattr(r, "result", r.args) for r in rs], expected=lambda: open_sessions[0],
                            window_s=60.0)
    result: list = []
    waiter = threading.Thread(target=lambda: result.append(batcher.submit(5)))
    waiter.start()
    time.sleep(0.1)
    assert not result  # waits for the other session
    open_sessions[0] = 1
    batcher.poke()  # what ServerDecoding.close does
    waiter.join(timeout=10)
    assert result == [5]


def test_errors_reach_their_own_step_or_the_whole_batch():
    def run(requests):
        for r in requests:
            if r.args == 2:
                r.error = KeyError("session closed")
            else:
                r.result = r.args

    batcher = DecodeBatcher(run, expected=lambda: 2, window_s=30.0)
    out = _submit_all(batcher, [1, 2], gap_s=0.05)
    assert out[0] == 1 and isinstance(out[1], KeyError)

    def fail(requests):
        raise RuntimeError("forward failed")

    batcher = DecodeBatcher(fail, expected=lambda: 2, window_s=30.0)
    out = _submit_all(batcher, [1, 2], gap_s=0.05)
    assert all(isinstance(e, RuntimeError) and "forward failed" in str(e) for e in out)
    assert _submit_all(DecodeBatcher(fail, expected=lambda: 1, window_s=0.0), [3])[0].args == ("forward failed",)
