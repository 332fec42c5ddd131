"""launch/gpu_check.sh --dry-run: the GPU check's every step, on the CPU with tiny sizes."""

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# .ci/run runs the dry run as its own step; here with the heavy cases (-m "heavy or not heavy").
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.mark.timeout(1200)
def test_gpu_check_dry_run_writes_its_report(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(REPO / "launch/gpu_check.sh"), "--dry-run", str(out)], capture_output=True,
                          text=True, timeout=1150)
    assert proc.returncode == 0, (proc.stderr[-3000:], (out / "tests.log").read_text()[-3000:]
                                  if (out / "tests.log").exists() else "")
    rep = json.loads((out / "report.json").read_text())
    assert rep["env"]["device"] == "cpu"
    assert rep["tests"]["counts"]["passed"] >= 3 and rep["tests"]["counts"]["failed"] == 0
    ids = {r["id"] for r in rep["bench"]["runs"]}
    assert {"cenlora-n1", "splitlora-n1", "splitlora-n1-bf16"} <= ids
    assert rep["bench"]["split_over_cen_step_time_1_client"] > 0
    assert rep["decode"]["results"] and rep["decode"]["results"][0]["equal_outputs"] >= 1
    assert {(r["mode"], r["n_clients"]) for r in rep["serving"]["runs"]} == {("sequential", 2), ("batched", 2)}
    md = (out / "report.md").read_text()
    for heading in ("## CUDA tests", "## Training benchmark", "## Server scaling", "## Beam-10 decoding"):
        assert heading in md
