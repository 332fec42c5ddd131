"""``--eval.every`` on a language model: the validation loss during training, for every method,
without touching the training (SplitLoRA: through the split, the server's part held between steps)."""

import pytest
import torch
from safetensors.torch import load_file

from runtime.config import ConfigError, build_config, validate_for_world
from tests.torchrun_util import torchrun

pytestmark = pytest.mark.slow

COMMON = ["--train.max_steps=8", "--fed.aggregate_every=2", "--runtime.order=round_robin",
          "--data.max_eval_examples=16"]


def _vals(run) -> list[dict]:
    return [r for r in run.metrics() if r.get("kind") == "val"]


# SplitLoRA by default; CenLoRA's and FedLoRA's path (the whole model) is the classifier's too,
# which tests/test_classify_runs.py runs with eval.every by default.
@pytest.mark.parametrize("method, nproc", [pytest.param("cenlora", 1, marks=pytest.mark.heavy),
                                           pytest.param("fedlora", 3, marks=pytest.mark.heavy), ("splitlora", 3)])
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


def test_eval_every_is_checked_before_any_process_group():
    with pytest.raises(ConfigError, match="must be a multiple of fed.aggregate_every"):
        validate_for_world(build_config(["--method=fedlora", *COMMON, "--eval.every=3"]), 3, 4)
    with pytest.raises(ConfigError, match="data.max_eval_examples must be > 0"):
        validate_for_world(build_config(["--method=cenlora", *COMMON, "--eval.every=4",
                                         "--data.max_eval_examples=0"]), 1, 4)
    validate_for_world(build_config(["--method=splitlora", *COMMON, "--eval.every=4"]), 3, 4)
