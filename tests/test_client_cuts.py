"""Per-client cut layers (SplitLoRA RQ2): each client has its own cut; the server serves all of them."""

import json

import pytest
import torch

from models.loss import model_loss
from runtime.build import build_full_model
from runtime.config.parse import config_from_dict
from runtime.inputs import load_client_data
from tests.torchrun_util import torchrun

pytestmark = pytest.mark.slow


def test_two_clients_at_different_cuts(tmp_path):
    run = torchrun(3, ["--split.client_cuts=2,3", "--train.max_steps=3", "--fed.aggregate_every=1",
                       "--runtime.order=round_robin", "--lora.dropout=0", "--model.dropout=0"], tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    # Exactness: client 1 goes first (round robin), so its first loss through the split (cut 2,
    # server part starting at block 2) equals the whole model in one process on the same batch.
    saved = json.loads((run.run_dir / "config.json").read_text())
    cfg = config_from_dict({k: v for k, v in saved.items() if k != "launch"})
    batch = next(load_client_data(cfg, 0, 2).batches(1))
    model = build_full_model(cfg).train()
    with torch.no_grad():
        ref = model_loss(model, batch["input_ids"], batch["targets"], batch["loss_mask"], cfg.train.label_smoothing)
    first = next(r for r in run.metrics() if r.get("kind") == "step" and r["client"] == 1 and r["step"] == 1)
    assert abs(first["loss"] - ref.item()) < 1e-5
    # Aggregation covers the blocks both clients hold (0, 1); block 2 is client 2's alone.
    c1 = torch.load(run.run_dir / "ckpt/step_3/client1.pt", weights_only=True)["clients"][0]["lora"]
    c2 = torch.load(run.run_dir / "ckpt/step_3/client2.pt", weights_only=True)["clients"][0]["lora"]
    shared = [k for k in c1 if ".h.0." in k or ".h.1." in k]
    assert shared and all(torch.equal(c1[k], c2[k]) for k in shared)
    assert not any(".h.2." in k for k in c1) and any(".h.2." in k for k in c2)
    s = run.summary()
    assert s["loss_last"] < s["loss_first"]


def test_client_cuts_are_validated(tmp_path):
    run = torchrun(3, ["--split.client_cuts=2,4"], tmp_path)
    assert run.rc != 0 and "split.client_cuts must all be in [1, 3]" in run.stderr
