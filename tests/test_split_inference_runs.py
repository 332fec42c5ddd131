"""Split inference in a SplitLoRA run: validation and scores at the end without the whole model.

The same training evaluated two ways: through the split (the default) and with
``--eval.whole_model`` (the first client assembles the whole model, the old way). The
validation losses agree to 1e-6, both decode and score, and only the whole-model evaluation
raises the client's peak memory by about a model.
"""

from __future__ import annotations

import json

import pytest

from launch.evaluate import main as evaluate_main
from tests.torchrun_util import torchrun

pytestmark = pytest.mark.slow

# Batched serving: the two client ranks decode their shares of the MRs at once (eval.share_decoding), and the
# server runs their steps together.
ARGS = ["--method=splitlora", "--split.cut=1", "--train.max_steps=4", "--runtime.order=round_robin",
        "--split.server_batching=true", "--eval.at_end=true", "--eval.split=valid", "--eval.max_mrs=5",
        "--eval.meteor=false", "--eval.num_beams=3", "--out.save_model=false"]


def test_evaluation_through_the_split_equals_the_whole_model_and_needs_no_whole_model(tmp_path):
    split = torchrun(3, [*ARGS, "--out.save_model=true"], tmp_path, "split")
    whole = torchrun(3, [*ARGS, "--eval.whole_model=true"], tmp_path, "whole")
    assert split.rc == 0 and whole.rc == 0, (split.stderr[-3000:], whole.stderr[-3000:])
    a, b = split.summary(), whole.summary()
    assert abs(a["val_loss"] - b["val_loss"]) <= 1e-6
    texts = {}
    for name, run in (("split", split), ("whole", whole)):
        record = json.loads((run.run_dir / "scores.json").read_text())
        texts[name] = (run.run_dir / "predictions.txt").read_text().splitlines()
        assert record["n_mrs"] == 5 and len(texts[name]) == 5
        assert record["decode_shares"] == (2 if name == "split" else 1)
    assert texts["split"] == texts["whole"]  # both ranks' shares, back in MR order
    first_a, first_b = a["clients"]["1"], b["clients"]["1"]
    for inference, mrs in ((first_a["split_inference"], 3), (a["clients"]["2"]["split_inference"], 2)):
        # Up: hidden states (R, T, 64) fp32 and a few indices; down: k = 3 x 3 candidates per row (8 B each).
        assert inference["decode_shares"] == 2 and inference["round_trips"] > mrs
        assert inference["bytes_up"] > inference["bytes_down"] > 0
    served = a["server"]["decoding"]  # the two ranks' steps shared server forwards
    assert served["largest_batch"] == 2 and served["batches"] < served["steps"], served
    assert first_b["split_inference"] is None
    jump = {name: s["memory_eval"]["cpu_rss_mib"] - s["memory"]["cpu_rss_mib"] for name, s in
            (("split", first_a), ("whole", first_b))}
    whole_mib = 2 * first_a["memory"]["part_mib"]  # the client part holds wte, most of this model
    assert jump["split"] < jump["whole"] and jump["whole"] >= whole_mib, (jump, whole_mib)

    # launch.evaluate on the finished run: through the split by default (a server rank and a client rank,
    # each loading only its part of model/), the same texts as --eval.at_end's; --through whole works too.
    out = tmp_path / "evaluated"
    assert evaluate_main(["--run", str(split.run_dir), "--no-meteor", "--out", str(out)]) == 0
    assert (out / "predictions.txt").read_text().splitlines() == texts["split"]
    assert evaluate_main(["--run", str(split.run_dir), "--no-meteor", "--through", "whole",
                          "--out", str(tmp_path / "whole-eval")]) == 0
    assert len((tmp_path / "whole-eval" / "predictions.txt").read_text().splitlines()) == 5
