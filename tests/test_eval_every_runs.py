"""``--eval.every`` on a language model: the validation loss during training, for every method,
without touching the training (SplitLoRA: through the split, the server's part held between steps)."""

import pytest
import torch
from safetensors.torch import load_file

from tests.torchrun_util import torchrun

pytestmark = pytest.mark.slow

COMMON = ["--train.max_steps=8", "--fed.aggregate_every=2", "--runtime.order=round_robin",
          "--data.max_eval_examples=16"]


def _vals(run) -> list[dict]:
    return [r for r in run.metrics() if r.get("kind") == "val"]


@pytest.mark.parametrize("method, nproc", [("cenlora", 1), ("fedlora", 3), ("splitlora", 3)])
def test_the_validation_loss_every_n_steps(tmp_path, method, nproc):
    run = torchrun(nproc, [f"--method={method}", *COMMON, "--eval.every=4"], tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    vals = _vals(run)
    assert [v["step"] for v in vals] == [4, 8] and len({v["client"] for v in vals}) == 1, vals
    assert vals[0]["val_loss"] != vals[1]["val_loss"] and all(v["eval_s"] > 0 for v in vals)
    assert vals[-1]["val_loss"] == run.summary()["val_loss"]  # the last one scored the final model
    if method == "splitlora":
        plain = torchrun(nproc, [f"--method={method}", *COMMON], tmp_path, "plain")
        assert plain.rc == 0 and not _vals(plain), plain.stderr[-3000:]
        a, b = (load_file(str(r.run_dir / "model/lora.safetensors")) for r in (run, plain))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # training untouched


@pytest.mark.heavy
def test_the_validation_loss_through_a_batched_server_in_arrival_order(tmp_path):
    run = torchrun(3, ["--method=splitlora", *COMMON, "--runtime.order=arrival", "--split.server_batching=true",
                       "--eval.every=2"], tmp_path)
    assert run.rc == 0, run.stderr[-3000:]
    assert [v["step"] for v in _vals(run)] == [2, 4, 6, 8]


def test_eval_every_is_checked_before_the_run(tmp_path):
    run = torchrun(3, ["--method=fedlora", *COMMON, "--eval.every=3"], tmp_path)
    assert run.rc != 0 and "must be a multiple of fed.aggregate_every" in run.stderr
    run = torchrun(1, ["--method=cenlora", *COMMON, "--eval.every=4", "--data.max_eval_examples=0"], tmp_path, "b")
    assert run.rc != 0 and "data.max_eval_examples must be > 0" in run.stderr
