"""Batched serving, without RPC: the batch's math and which requests form a batch."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch

from models.lora import LoRAConfig, apply_lora, iter_lora_adapters
from models.loss import model_loss, model_loss_groups
from models.split import split_model
from runtime.split.batching import BatchAdmission, BatchRunner, Work

CUT = 1


def _server_part(tiny_model):
    model = copy.deepcopy(tiny_model)
    for m in model.modules():  # dropout off: a batch and its parts must see the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attn_pdrop"):
            m.attn_pdrop = 0.0
    apply_lora(model, LoRAConfig(r=2, alpha=4.0, dropout=0.0, targets=("q", "v", "mlp_fc")))
    with torch.no_grad():
        for _, adapter in iter_lora_adapters(model):
            adapter.lora_B.normal_(0.0, 0.3)  # adapters that matter, so that gradients reach A too
    _, server = split_model(model, CUT)
    return server.train()


def _client_batch(seed: int, B: int, T: int, C: int = 32, V: int = 97):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, C, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[0, -1] = 1.0  # the longest row ends with a loss token (padding must not reach it)
    return h, targets, mask


def _opt(part):
    params = [p for p in part.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, foreach=False)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))


def _run_batch(part, batches, update=True):
    opt, sched = _opt(part)
    runner = BatchRunner(part, opt, sched, torch.device("cpu"), label_smoothing=0.1, first_block=CUT)
    hs = [h.clone().requires_grad_() for h, _, _ in batches]  # stand-ins for the received activations
    losses, record = runner([Work(h, t, m, update) for h, (_, t, m) in zip(hs, batches)])
    return hs, losses, record, sched


def test_groups_loss_equals_each_batch_alone_and_the_union(tiny_model):
    part = _server_part(tiny_model)
    batches = [_client_batch(0, 2, 9), _client_batch(1, 3, 5), _client_batch(2, 1, 7)]
    sums, counts = model_loss_groups(part, *[list(x) for x in zip(*batches)], 0.1, first_block=CUT)
    for k, (h, t, m) in enumerate(batches):
        alone = model_loss(part, h, t, m, 0.1, first_block=CUT)
        assert torch.allclose(sums[k] / counts[k], alone, atol=1e-6, rtol=0)
        assert counts[k] == m.sum()


def test_each_client_gets_its_own_loss_and_gradient_at_pre_update_weights(tiny_model):
    part = _server_part(tiny_model)
    before = copy.deepcopy(part)
    batches = [_client_batch(0, 2, 9), _client_batch(1, 3, 5)]  # different B, T and token counts
    hs, losses, record, _ = _run_batch(part, batches)
    assert record["update"] and record["rows"] == [2, 3] and record["seq_len"] == 9
    assert record["tokens"] == [int(m.sum()) for _, _, m in batches]
    for h_recv, loss, (h, t, m) in zip(hs, losses, batches):
        x = h.clone().requires_grad_()
        alone = model_loss(before, x, t, m, 0.1, first_block=CUT)
        alone.backward()
        assert torch.allclose(loss, alone.detach(), atol=1e-6, rtol=0)
        loss.backward()  # what the client's distributed backward reaches: its own slice
        assert torch.allclose(h_recv.grad, x.grad, atol=1e-6, rtol=0), (h_recv.grad - x.grad).abs().max()


def test_the_server_update_is_one_step_on_the_concatenated_batch(tiny_model):
    part = _server_part(tiny_model)
    reference, initial = copy.deepcopy(part), copy.deepcopy(part)
    batches = [_client_batch(0, 2, 9), _client_batch(1, 3, 9)]  # one T: the union is a plain concatenation
    _, _, _, sched = _run_batch(part, batches)
    opt, ref_sched = _opt(reference)
    h, t, m = (torch.cat(x) for x in zip(*batches))
    model_loss(reference, h, t, m, 0.1, first_block=CUT).backward()
    opt.step()
    for _ in batches:
        ref_sched.step()
    assert sched.last_epoch == ref_sched.last_epoch == 2  # the schedule counts client steps
    moved = 0
    for (name, p), q, p0 in zip(part.named_parameters(), reference.parameters(), initial.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), (name, (p - q).abs().max())
        moved += p.requires_grad and not torch.equal(p, p0)
        assert p.grad is None  # the batch's gradients do not linger into the next one
    assert moved > 0


def test_a_probe_batch_leaves_the_server_weights(tiny_model):
    part = _server_part(tiny_model)
    before = copy.deepcopy(part.state_dict())
    hs, losses, record, sched = _run_batch(part, [_client_batch(0, 2, 6)], update=False)
    losses[0].backward()
    assert hs[0].grad is not None and hs[0].grad.abs().sum() > 0
    assert not record["update"] and sched.last_epoch == 0
    assert all(torch.equal(v, part.state_dict()[k]) for k, v in before.items())


# -- which requests form a batch --------------------------------------------------------


class _Recorder:
    """A fake runner: remembers each batch's members (by their h's value)."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __call__(self, works):
        self.batches.append([int(w.h.item()) for w in works])
        return [w.h.clone() for w in works], {"update": works[0].update, "time": {}}


def _submit(adm, client, update=True):
    return adm.submit_work(client, Work(torch.tensor(float(client)), torch.zeros(1), torch.zeros(1), update))


def _admission(order, clients=(1, 2, 3), window_s=0.05, max_clients=0, timeout=30.0):
    rec = _Recorder()
    adm = BatchAdmission(list(clients), order, timeout, rec, window_s=window_s, max_clients=max_clients)
    return adm, rec


def test_round_robin_waits_for_every_live_client_then_serves_them_in_rank_order():
    adm, rec = _admission("round_robin", window_s=0.0)
    try:
        f3, f1 = _submit(adm, 3), _submit(adm, 1)
        time.sleep(0.3)
        assert rec.batches == [] and not f1.done()  # client 2 is missing: no window in this order
        f2 = _submit(adm, 2)
        assert [f.wait().item() for f in (f1, f2, f3)] == [1.0, 2.0, 3.0]
        assert rec.batches == [[1, 2, 3]]
        assert set(adm.timings) == {1, 2, 3}
    finally:
        adm.close()


def test_round_robin_with_a_cap_rotates_through_the_clients():
    adm, rec = _admission("round_robin", clients=(1, 2, 3, 4), max_clients=3)
    try:
        futures = [_submit(adm, c) for c in (1, 2, 3, 4)]
        for f in futures[:3]:
            f.wait()
        assert rec.batches == [[1, 2, 3]] and not futures[3].done()
        for f in [futures[3], _submit(adm, 1), _submit(adm, 2)]:  # 4's turn comes with the next two
            f.wait()
        assert rec.batches == [[1, 2, 3], [4, 1, 2]]
    finally:
        adm.close()


def test_arrival_closes_a_batch_at_the_window_without_the_straggler():
    adm, rec = _admission("arrival", window_s=0.2)
    try:
        f1, f2 = _submit(adm, 1), _submit(adm, 2)
        assert f1.wait().item() == 1.0 and f2.wait().item() == 2.0
        assert rec.batches == [[1, 2]]  # client 3 never came: the window closed the batch
        f3 = _submit(adm, 3)
        f3.wait()
        assert rec.batches == [[1, 2], [3]]
    finally:
        adm.close()


def test_a_retired_client_leaves_the_open_batch_and_the_others_go_on():
    adm, rec = _admission("round_robin")
    try:
        f1, f2 = _submit(adm, 1), _submit(adm, 2)
        time.sleep(0.2)
        assert rec.batches == []
        adm.retire(3)  # client 3 died before sending: the batch closes without it
        assert f1.wait().item() == 1.0 and f2.wait().item() == 2.0
        assert rec.batches == [[1, 2]]
        f2b = _submit(adm, 2)
        adm.retire(1)  # dies while 2 waits: 2 goes on alone
        assert f2b.wait().item() == 2.0 and rec.batches[-1] == [2]
    finally:
        adm.close()


def test_probes_are_batched_apart_from_training_steps():
    adm, rec = _admission("round_robin", clients=(1, 2))
    try:
        f1, f2 = _submit(adm, 1, update=False), _submit(adm, 2, update=True)
        f1.wait()
        f1b = _submit(adm, 1, update=True)
        f1b.wait(), f2.wait()
        assert rec.batches == [[1], [1, 2]]
    finally:
        adm.close()


def test_a_request_that_waits_too_long_fails_with_a_timeout():
    adm, _ = _admission("round_robin", timeout=0.3)
    try:
        f1 = _submit(adm, 1)
        with pytest.raises(Exception, match="waited"):
            f1.wait()
    finally:
        adm.close()


def test_a_failing_batch_fails_every_member():
    def boom(works):
        raise RuntimeError("out of memory (simulated)")

    adm = BatchAdmission([1, 2], "arrival", 30.0, boom, window_s=0.0)
    try:
        futures = [_submit(adm, 1), _submit(adm, 2)]
        for f in futures:
            with pytest.raises(Exception, match="simulated"):
                f.wait()
    finally:
        adm.close()


def test_many_clients_on_few_threads_do_not_block(tiny_model):
    """Waiting requests hold no thread: 12 clients submit from 12 threads, all are served."""
    adm, rec = _admission("arrival", clients=tuple(range(1, 13)), window_s=0.05)
    results: dict[int, float] = {}
    try:
        threads = [threading.Thread(target=lambda c=c: results.__setitem__(c, _submit(adm, c).wait().item()))
                   for c in range(1, 13)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == {c: float(c) for c in range(1, 13)}
        assert sorted(c for b in rec.batches for c in b) == list(range(1, 13))
    finally:
        adm.close()
