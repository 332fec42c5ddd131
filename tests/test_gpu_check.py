"""launch/gpu_check.sh --dry-run: the GPU check's every step, on the CPU with tiny sizes."""

import json
import os
import subprocess
import time
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
    assert rep["bench"]["client_backends"]["splitlora-n1"] == "gloo"  # on the CPU
    assert rep["decode"]["results"] and rep["decode"]["results"][0]["equal_outputs"] >= 1
    assert {(r["mode"], r["n_clients"]) for r in rep["serving"]["runs"]} == {("sequential", 2), ("batched", 2)}
    md = (out / "report.md").read_text()
    for heading in ("## CUDA tests", "## Training benchmark", "## Server scaling", "## Beam-10 decoding"):
        assert heading in md
    packed = subprocess.run(["tar", "-tzf", str(out / "check.tar.gz")], capture_output=True, text=True).stdout.split()
    assert {"./report.md", "./report.json", "./tests.log", "./bench/report.md"} <= set(packed)
    assert not [p for p in packed if "/ckpt/" in p]


@pytest.mark.timeout(600)
def test_a_check_past_its_budget_still_writes_a_report_and_leaves_nothing_running(tmp_path):
    """GPU_CHECK_BUDGET too small for the tests: they are stopped (SIGTERM, their jobs end),
    the later steps skipped, the report says so and the script exits non-zero."""
    out = tmp_path / "check"
    env = {**os.environ, "GPU_CHECK_BUDGET": "50"}
    proc = subprocess.run(["bash", str(REPO / "launch/gpu_check.sh"), "--dry-run", str(out)], capture_output=True,
                          text=True, timeout=400, env=env)
    assert proc.returncode != 0
    md = (out / "report.md").read_text()
    assert "tests stopped at the 50-s budget" in md
    assert "bench skipped: the 50-s budget is spent" in md
    assert "decode skipped" in md
    rep = json.loads((out / "report.json").read_text())
    assert rep["tests"]["counts"]["interrupted"] >= 1  # one per shard that was inside a test
    time.sleep(2)
    assert not _jobs_started_here(), "ranks of the stopped check still run"


def _jobs_started_here() -> list[int]:
    """Training jobs (torchrun or a rank) whose working directory is this checkout."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            if ("launch.train" in cmd or "torch.distributed.run" in cmd) and (entry / "cwd").resolve() == REPO:
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found
